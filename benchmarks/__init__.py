"""Flatnet benchmarks: `python -m benchmarks <name>`; see docs/performance.md."""
