"""Benchmarks of the fast paths (`make bench`, see docs/performance.md); measurements, not tests."""
