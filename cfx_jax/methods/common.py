"""What the explainers with settings of their own (FIDO, DISC, CAE, latent) share.

Their settings are a ConfigDict checked before anything compiles, each image's randomness
comes from its id, images that miss their target are reported by index, and a saved
explainer is its settings plus the classifier's fingerprint (and any helper model).
"""

from __future__ import annotations

import json
import os
import warnings

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from cfx_jax.explanation import Explanation


class ClassifierBound:
  """The shape and classes every per-method explainer class reads off its classifier."""

  @property
  def image_shape(self) -> tuple[int, int, int]:
    return self.classifier.image_shape

  @property
  def num_classes(self) -> int:
    return self.classifier.num_classes


def settings(method: str, defaults: ml_collections.ConfigDict, overrides: dict,
             check) -> ml_collections.ConfigDict:
  """`defaults` updated by `overrides`; unknown names and bad values raise."""
  unknown = sorted(set(overrides) - set(defaults.keys()))
  if unknown:
    raise ValueError(f"unknown {method} setting(s) {unknown}; available: "
                     f"{sorted(defaults.keys())}")
  defaults.update(overrides)
  check(defaults)
  return defaults


def as_settings(config, make) -> ml_collections.ConfigDict:
  """A ConfigDict (copied) or a dict of overrides of `make()`'s defaults."""
  if isinstance(config, ml_collections.ConfigDict):
    return config.copy_and_resolve_references()
  return make(**dict(config or {}))


def bind_classifier(classifier, image_shape):
  """The classifier as a `Classifier`; `image_shape` may be left out only for one."""
  from cfx_jax.classifier import Classifier, as_classifier

  if image_shape is None:
    if not isinstance(classifier, Classifier):
      raise ValueError("image_shape is required unless the classifier is a Classifier")
    image_shape = classifier.image_shape
  return as_classifier(classifier, image_shape)


def image_ids(ids, n: int) -> np.ndarray:
  """The ids that seed each image (default 0..n-1), as uint32."""
  ids = np.arange(n) if ids is None else np.asarray(ids)
  if ids.shape != (n,) or not np.issubdtype(ids.dtype, np.integer) or (ids < 0).any():
    raise ValueError(f"ids must be {n} non-negative integers, got {ids.dtype} {ids.shape}")
  return ids.astype(np.uint32)


def report_failures(method: str, explanation: Explanation, what: str,
                    stacklevel: int = 2) -> np.ndarray:
  """Indices whose counterfactual is not classified as its target, with a warning."""
  failed = np.flatnonzero(~explanation.flipped)
  if failed.size:
    shown = failed[:20].tolist()
    more = f" and {failed.size - 20} more" if failed.size > 20 else ""
    warnings.warn(f"{method}: {failed.size} of {len(explanation)} counterfactual(s) {what}: "
                  f"indices {shown}{more}", stacklevel=stacklevel + 1)
  return failed


def save_settings(path: str, method: str, explainer) -> None:
  """explainer.json: what `load_explainer` needs to rebuild the explainer."""
  os.makedirs(path, exist_ok=True)
  with open(os.path.join(path, "explainer.json"), "w") as f:
    json.dump({"method": method, "config": explainer.config.to_dict(),
               "image_shape": list(explainer.image_shape),
               "classifier_fingerprint": explainer.classifier.fingerprint()}, f, indent=2)


def minimise(loss, params, opt: optax.GradientTransformation, steps: int):
  """`steps` updates of `opt` on `loss(params, step) -> scalar`, in one `lax.scan` (one
  compiled loop, vmappable over images). Returns (params, the loss at every step)."""

  def body(carry, step):
    p, state = carry
    value, grad = jax.value_and_grad(loss)(p, step)
    updates, state = opt.update(grad, state, p)
    return (optax.apply_updates(p, updates), state), value

  (params, _), trace = jax.lax.scan(body, (params, opt.init(params)), jnp.arange(steps))
  return params, trace
