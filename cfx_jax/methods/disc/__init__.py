"""DISC, deep-inversion counterfactuals: the per-image optimiser (`explainer.py`) and the
auxiliary model whose uncertainty keeps counterfactuals on the data (`auxiliary.py`)."""

from cfx_jax.methods.disc.explainer import DiscExplainer

__all__ = ["DiscExplainer"]
