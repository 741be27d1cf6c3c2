"""Benchmarks for ppl: ``python -m benchmarks.run [--quick]`` (see benchmarks/run.py)."""
