"""Reproducible measurements; each script writes JSON under `benchmarks/results/`."""
