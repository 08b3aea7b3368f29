"""Pure ``torch.nn.Module``s and losses; nothing here knows about Ray, storage or records."""
