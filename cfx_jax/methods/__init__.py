"""Generative explainer methods, by name."""

from cfx_jax.methods.base import Method, ModelSpec, other_class
from cfx_jax.methods.cae import CaeExplainer
from cfx_jax.methods.conditional import CycleExplainer
from cfx_jax.methods.disc import DiscExplainer
from cfx_jax.methods.fido import FidoExplainer
from cfx_jax.methods.latent import LatentExplainer
from cfx_jax.methods.sagen import StableAdversarialExplainer

METHODS: dict[str, Method] = {
    "syce": CycleExplainer(symmetric=True),
    "cyce": CycleExplainer(symmetric=False),
    "sagen": StableAdversarialExplainer(),
}


# Explainers whose work happens in `explain` (an optimisation per image; `fit` trains at
# most a small helper model).
OPTIMISERS = {
    "disc": DiscExplainer,
    "fido": FidoExplainer,
}

# Every method with its own explainer class rather than a `Method` for the shared
# generator loop. Each class has `fit(classifier, images, *, seed, config, workdir)`,
# `save(path)`, `from_meta(meta, classifier, path)` and `explain(images, target=None)`.
STANDALONE = {
    **OPTIMISERS,
    "cae": CaeExplainer,
    "latent": LatentExplainer,
}


def get_method(name: str) -> Method:
  if name not in METHODS:
    raise ValueError(f"unknown method {name!r}; available: {sorted(METHODS)}")
  return METHODS[name]


__all__ = ["METHODS", "OPTIMISERS", "STANDALONE", "Method", "ModelSpec", "get_method", "other_class"]
