"""What the method families share, so that none imports another's explainer: default
targets, per-image keys and, for the explainers with settings of their own (FIDO, DISC,
CAE, latent), how those are checked and saved.

Their settings are a ConfigDict checked before anything compiles, each image's randomness
comes from its id, images that miss their target are reported by index, and a saved
explainer is its settings plus the classifier's fingerprint (and any helper model).
"""

from __future__ import annotations

import difflib
import json
import os
import warnings

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from cfx_jax import diagnosis
from cfx_jax.engine.logging import Progress
from cfx_jax.explanation import Explanation


class ClassifierBound:
  """The shape and classes every per-method explainer class reads off its classifier."""

  @property
  def image_shape(self) -> tuple[int, int, int]:
    return self.classifier.image_shape

  @property
  def num_classes(self) -> int:
    return self.classifier.num_classes

  def checked(self, out: Explanation) -> Explanation:
    """`out` once the classifier's outputs in it are finite (NaN or inf is an error
    naming the images, not a wrong probability) and, with `warn_failures`, its misses
    reported by index."""
    diagnosis.check_explanation(out)
    if self.config.warn_failures:
      self.report_failures(out, stacklevel=4)
    return out


def other_class(probs: jax.Array) -> jax.Array:
  """Default target: the most likely class other than the predicted one."""
  pred = jnp.argmax(probs, axis=-1)
  masked = jnp.where(jax.nn.one_hot(pred, probs.shape[-1]) > 0, -jnp.inf, probs)
  return jnp.argmax(masked, axis=-1).astype(jnp.int32)


def other_class_on(probs: jax.Array, c: jax.Array) -> jax.Array:
  """The most likely class other than c: where a destroyed class-c image went."""
  masked = jnp.where(jax.nn.one_hot(c, probs.shape[-1]) > 0, -jnp.inf, probs)
  return jnp.argmax(masked, axis=-1).astype(jnp.int32)


def _as_dict(d):
  return d.to_dict() if isinstance(d, ml_collections.ConfigDict) else d


def check_names(method: str, given, valid, prefix: str = "") -> None:
  """Raise on a name in `given` that `valid` lacks, suggesting the nearest valid one.

  Both are (nested) dicts or ConfigDicts; a dict in `given` is checked against the
  matching dict in `valid`, so a typo deep in a config fails as early as one on top.
  """
  given, valid = _as_dict(given), _as_dict(valid)
  names = sorted(str(k) for k in valid)
  for name, value in given.items():
    if name not in valid:
      near = difflib.get_close_matches(str(name), names, n=1)
      hint = f" (did you mean {near[0]!r}?)" if near else ""
      group = f" {prefix[:-1]}" if prefix else ""
      raise ValueError(f"unknown {method}{group} setting {str(name)!r}{hint}; available: "
                       f"{names}")
    inner = _as_dict(valid[name])
    if isinstance(inner, dict) and isinstance(_as_dict(value), dict):
      check_names(method, value, inner, f"{prefix}{name}.")


def settings(method: str, defaults: ml_collections.ConfigDict, overrides: dict,
             check) -> ml_collections.ConfigDict:
  """`defaults` updated by `overrides`; unknown names and bad values raise."""
  check_names(method, overrides, defaults)
  defaults.update(overrides)
  check(defaults)
  return defaults


def as_settings(config, make) -> ml_collections.ConfigDict:
  """A ConfigDict or a dict of overrides of `make()`'s defaults, checked by `make`."""
  if isinstance(config, ml_collections.ConfigDict):
    config = config.to_dict()
  return make(**dict(config or {}))


def chunk_progress(method: str, total: int, enabled: bool):
  """A `map_in_chunks` callback that shows images done, of `total`, as the training
  loop shows steps (a bar on a terminal, a line per chunk otherwise), with no logging
  set up: a per-image optimisation of many images runs for minutes without other
  output."""
  if not enabled:
    return None
  progress = Progress(total, desc=method, unit="images")

  def report(done: int) -> None:
    progress.update(done)
    if done >= total:
      progress.close()

  return report


def bind_classifier(classifier, image_shape):
  """The classifier as a `Classifier`; `image_shape` may be left out only for one."""
  from cfx_jax.classifier import Classifier, as_classifier

  if image_shape is None:
    if not isinstance(classifier, Classifier):
      raise ValueError("image_shape is required unless the classifier is a Classifier")
    image_shape = classifier.image_shape
  return as_classifier(classifier, image_shape)


def image_keys(key: jax.Array, ids: jax.Array) -> jax.Array:
  """One key per image from its id, independent of the batch it is in."""
  return jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.asarray(ids, jnp.uint32))


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


def update(loss, opt: optax.GradientTransformation):
  """One step of `minimise`: ((params, opt state), step) -> ((params, opt state), loss).
  The carry starts at (params, opt.init(params)); step counts from 0."""

  def body(carry, step):
    p, state = carry
    value, grad = jax.value_and_grad(loss)(p, step)
    updates, state = opt.update(grad, state, p)
    return (optax.apply_updates(p, updates), state), value

  return body


def minimise(loss, params, opt: optax.GradientTransformation, steps: int):
  """`steps` updates of `opt` on `loss(params, step) -> scalar`, in one `lax.scan` (one
  compiled loop, vmappable over images). Returns (params, the loss at every step)."""
  (params, _), trace = jax.lax.scan(update(loss, opt), (params, opt.init(params)),
                                    jnp.arange(steps))
  return params, trace
