"""Example models used by tutorials, tests and benchmarks (data generated, no downloads)."""
