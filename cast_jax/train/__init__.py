"""Training loop pieces: metric writing and friends."""
