"""Durable measurements of speed, throughput and cost, indexed in README.md; each script
writes JSON under `benchmarks/results/`. One-off experiments are in `studies/`."""
