"""Step 4, score: faces to codes, windows to calibrated video probabilities, reports and explanations."""
