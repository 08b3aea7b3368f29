"""Face crops and face tensors: what training and scoring share, below both (issue 37)."""
