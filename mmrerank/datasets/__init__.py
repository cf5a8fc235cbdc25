"""Benchmarks: the built-in synthetic ones and loaders of the real ones (with their own metrics)."""
