"""FIDO, counterfactual in-filling: the per-image mask optimiser (`explainer.py`), its
in-fillers (`infillers.py`) and the training of the learned in-painter
(`inpainter_train.py`)."""

from cfx_jax.methods.fido.explainer import FidoExplainer

__all__ = ["FidoExplainer"]
