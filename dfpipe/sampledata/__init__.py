"""Generated sample datasets (from a real face photograph) and the bad-input corpus, for demos and tests."""
