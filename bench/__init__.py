"""Benchmarks that compare cachenet with its anchors and write JSON results."""
