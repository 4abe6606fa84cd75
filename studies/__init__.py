"""One-off experiments, each answering one question; results under `studies/results/`."""
