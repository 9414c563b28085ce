"""Benchmarks: ``python -m bench NAME``. Never run as tests."""
