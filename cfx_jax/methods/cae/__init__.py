"""CAE, class-association embedding: the autoencoder's training (`train.py`) and the
explainer that moves its class code (`explainer.py`)."""

from cfx_jax.methods.cae.explainer import CaeExplainer

__all__ = ["CaeExplainer"]
