"""Inference: sliding window, post-processing, predictions on the original grid, checkpoint evaluation."""
