"""Step 3, train: the face embedder and the window classifier, their sampler, loops and model files."""
