"""Conditional-generator explainers: CyCE and SyCE (`cycle.py`), SAGen (`sagen.py`).

All three train with one GAN step (`gan.py`) on the engine's loop (`train.py`); the
fitted result is a `GeneratorExplainer` (`explainer.py`).
"""

from cfx_jax.methods.conditional.cycle import CycleExplainer
from cfx_jax.methods.conditional.sagen import StableAdversarialExplainer

GENERATORS = {
    "syce": CycleExplainer(symmetric=True),
    "cyce": CycleExplainer(symmetric=False),
    "sagen": StableAdversarialExplainer(),
}


def get_generator(name: str):
  if name not in GENERATORS:
    raise ValueError(f"unknown generator method {name!r}; available: {sorted(GENERATORS)}")
  return GENERATORS[name]


__all__ = ["GENERATORS", "CycleExplainer", "StableAdversarialExplainer", "get_generator"]
