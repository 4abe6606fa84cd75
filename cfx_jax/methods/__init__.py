"""Explanation methods, one package each; `registry` names them all behind one interface."""

from cfx_jax.methods.base import Method, ModelSpec, other_class
from cfx_jax.methods.conditional import GENERATORS
from cfx_jax.methods.registry import REGISTRY, Entry, Explainer, get

__all__ = ["GENERATORS", "REGISTRY", "Entry", "Explainer", "Method", "ModelSpec", "get",
           "other_class"]
