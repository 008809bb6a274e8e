"""Benchmarks: each bench_*.py measures against a baseline in the same run (see run_all.py)."""
