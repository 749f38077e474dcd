"""Benchmarks behind `vitlab-bench` (`make bench`): measured, never asserted in tests."""
