"""Benchmark suites and the random-weight models they time (see README.md)."""
