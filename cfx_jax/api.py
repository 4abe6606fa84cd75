"""The public entry points: fit an explainer of any method, load a saved one."""

from __future__ import annotations

import os

import numpy as np

from cfx_jax import persistence, validation
from cfx_jax.methods import registry
from cfx_jax.methods.registry import Explainer


def _as_images(images) -> np.ndarray:
  """Arrays pass through; a data source (len + getitem of dicts) is read in full."""
  if hasattr(images, "shape"):
    return images
  if hasattr(images, "__len__") and hasattr(images, "__getitem__"):
    from cfx_jax import data as data_lib
    return data_lib.materialize(images)["image"]
  raise TypeError(f"images must be an array (N, H, W, C) or a data source, "
                  f"got {type(images).__name__}")


def fit_explainer(classifier, images, *, method: str = "syce", steps: int | None = None,
                  batch_size: int | None = None, seed: int = 0, workdir: str | None = None,
                  config=None, attributes=None) -> Explainer:
  """Train a counterfactual explainer of `classifier` on `images` in [-1, 1].

  `method`: one of `trainable_methods()`. Optimisation methods ("fido", "disc") train at
  most a helper model here: `config` holds their settings and `explain` optimises.

  `classifier`: any JAX-traceable callable images -> logits (N, K) or a binary logit
  (N,) / (N, 1), or an NNX module. `config`: a ConfigDict (`cfx_jax.explainer_config`
  for the generator methods) or a dict of overrides of the method's settings;
  `steps` and `batch_size` (generator methods) take precedence. With `workdir`,
  checkpoints are written there, an interrupted run resumes from them, and the fitted
  explainer is saved to `<workdir>/explainer`.
  `attributes`: (N, K) binary labels of the images, for methods that use them ("latent").
  """
  entry = registry.get(method)
  extra = {}
  if attributes is not None:
    if not entry.uses_attributes:
      raise ValueError(f"attributes are used only by method='latent', not {method!r}")
    extra["attributes"] = attributes
  x = validation.check_images(_as_images(images))
  return entry.fit(classifier, x, config=config, seed=seed, steps=steps,
                   batch_size=batch_size, workdir=workdir, **extra)


def load_explainer(path: str, classifier) -> Explainer:
  """Load an explainer saved with `save`; checks it was made for `classifier`."""
  path = os.path.abspath(path)
  meta = persistence.read_meta(path, "explainer.json", "explainer")
  return registry.get(meta.get("method")).load(meta, classifier, path)


def trainable_methods() -> list[str]:
  """Every method `fit_explainer` accepts."""
  return sorted(registry.REGISTRY)


__all__ = ["fit_explainer", "load_explainer", "trainable_methods"]
