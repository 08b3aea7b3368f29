"""Step 2, segment: face rows in, contiguous windows of valid frames per track out."""
