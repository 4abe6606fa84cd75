"""Experiment configs: one Python file per experiment, each with `get_config()`."""
