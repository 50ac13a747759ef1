"""Preprocessing into an on-disk cache, patch streaming with Grain, and the built-in phantom data set."""
