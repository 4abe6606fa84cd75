"""Generative explainer methods, by name."""

from cfx_jax.methods.base import Method, ModelSpec, other_class
from cfx_jax.methods.conditional import CycleExplainer
from cfx_jax.methods.sagen import StableAdversarialExplainer

METHODS: dict[str, Method] = {
    "syce": CycleExplainer(symmetric=True),
    "cyce": CycleExplainer(symmetric=False),
    "sagen": StableAdversarialExplainer(),
}


def get_method(name: str) -> Method:
  if name not in METHODS:
    raise ValueError(f"unknown method {name!r}; available: {sorted(METHODS)}")
  return METHODS[name]


__all__ = ["METHODS", "Method", "ModelSpec", "get_method", "other_class"]
