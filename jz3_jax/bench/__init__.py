"""Benchmarks: one harness (`bench` stage) with a kind per workload."""
