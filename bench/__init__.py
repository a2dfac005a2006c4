"""Benchmarks: programs that print numbers (``make bench``), never timed tests."""
