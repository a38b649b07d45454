"""Benchmark suites: `python -m benchmarks` lists them."""
