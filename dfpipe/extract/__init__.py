"""Step 1, extract: videos in, per-frame face crops and flags out (decode, detect, track, crop)."""
