"""Evaluation of learned features: weighted kNN classification."""
