"""Benchmarks: dpipe against what users would write by hand, on the same data and cluster."""
