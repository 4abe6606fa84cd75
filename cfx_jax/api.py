"""The public entry points: fit an explainer, load a saved one."""

from __future__ import annotations

import ml_collections
import numpy as np

from cfx_jax import config as config_lib
from cfx_jax import validation
from cfx_jax.classifier import as_classifier
from cfx_jax.explainer import Explainer, load_explainer


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
  (N,) / (N, 1), or an NNX module. `config`: a ConfigDict from `cfx_jax.explainer_config`
  or a dict of overrides; the keyword arguments take precedence. With `workdir`,
  checkpoints are written there and an interrupted run resumes from them.
  `attributes`: (N, K) binary labels of the images, for methods that use them ("latent").
  """
  from cfx_jax.methods import STANDALONE
  from cfx_jax.training.explainer_loop import train_explainer

  if method not in trainable_methods():
    raise ValueError(f"unknown method {method!r}; available: {trainable_methods()}")
  if attributes is not None and method != "latent":
    raise ValueError(f"attributes are used only by method='latent', not {method!r}")
  if method in STANDALONE:
    x = validation.check_images(_as_images(images))
    if isinstance(config, ml_collections.ConfigDict):
      config = config.to_dict()
    extra = {} if attributes is None else {"attributes": attributes}
    return STANDALONE[method].fit(as_classifier(classifier, x.shape[1:]), x, seed=seed,
                                  config=config, workdir=workdir, **extra)
  if config is None:
    cfg = config_lib.explainer_config(method)
  elif isinstance(config, ml_collections.ConfigDict):
    cfg = config.copy_and_resolve_references()
  elif isinstance(config, dict):
    cfg = config_lib.explainer_config(method)
    cfg.update_from_flattened_dict(_flatten(config))
  else:
    raise TypeError(f"config must be a ConfigDict or a dict, got {type(config).__name__}")
  cfg.method = method
  if steps is not None:
    if int(steps) < 1:
      raise ValueError(f"steps must be >= 1, got {steps}")
    cfg.steps = int(steps)
  if batch_size is not None:
    cfg.batch_size = int(batch_size)
  cfg.seed = int(seed)
  x = validation.check_images(_as_images(images))
  clf = as_classifier(classifier, x.shape[1:])
  return train_explainer(clf, x, cfg, workdir)


def trainable_methods() -> list[str]:
  """Every method `fit_explainer` accepts."""
  from cfx_jax.methods import METHODS, STANDALONE
  return sorted(METHODS) + sorted(STANDALONE)


def _flatten(d: dict, prefix: str = "") -> dict:
  out = {}
  for k, v in d.items():
    if isinstance(v, dict) and k != "weights":
      out.update(_flatten(v, f"{prefix}{k}."))
    elif isinstance(v, dict):
      for wk, wv in v.items():
        out[f"{prefix}{k}.{wk}"] = wv
    else:
      out[f"{prefix}{k}"] = v
  return out


__all__ = ["fit_explainer", "load_explainer", "trainable_methods"]
