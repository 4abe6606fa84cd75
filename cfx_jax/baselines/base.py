"""What every saliency baseline shares: the explained score, input checks, chunked runs.

The score for class c is the class log-odds `logit_c - logsumexp_{k != c} logit_k`: it
moves with the evidence for c against all other classes, whereas a raw logit may be
constant (the class-0 logit of a binary classifier is always 0).

The compiled cores take the classifier's `apply` as a static argument, so explaining
with the same `Classifier` again reuses its compiled programs; a plain callable is
wrapped anew on every call and therefore compiles anew.
"""

from __future__ import annotations

import dataclasses
import math
import numbers

import jax
import jax.numpy as jnp
import numpy as np

from cfx_jax.batching import map_in_chunks
from cfx_jax.classifier import Classifier, as_classifier
from cfx_jax.explanation import Explanation
from cfx_jax.validation import check_images, check_target


def class_log_odds(logits: jax.Array, target: jax.Array) -> jax.Array:
  """(N, K) logits, (N,) classes -> (N,) log-odds of each image's class."""
  own = jnp.take_along_axis(logits, target[:, None], axis=1)[:, 0]
  is_own = jax.nn.one_hot(target, logits.shape[-1], dtype=bool)
  others = jax.nn.logsumexp(jnp.where(is_own, -jnp.inf, logits), axis=-1)
  return own - others


def score_fn(apply, params, target):
  """images -> (N,) log-odds; per image, so the gradient of the sum is per image."""
  return lambda images: class_log_odds(apply(params, images), target)


def input_gradient(apply, params, images, target) -> jax.Array:
  return jax.grad(lambda x: jnp.sum(score_fn(apply, params, target)(x)))(images)


@dataclasses.dataclass(frozen=True)
class Prepared:
  """Checked inputs of one explain call."""

  classifier: Classifier
  images: np.ndarray   # (N, H, W, C) float32 in [-1, 1]
  target: np.ndarray   # (N,) int32
  probs: np.ndarray    # (N, K) float32
  index: np.ndarray    # (N,) int32 position of each image, for per-image random keys
  chunk_size: int


def prepare(classifier, images, target, chunk_size: int) -> Prepared:
  """Check images and target; the default target is the classifier's decision."""
  shape = classifier.image_shape if isinstance(classifier, Classifier) else None
  x = check_images(images, shape)
  clf = as_classifier(classifier, x.shape[1:])
  chunk_size = check_positive_int(chunk_size, "chunk_size")
  logits = np.asarray(clf.logits(x, chunk_size), np.float32)
  probs = np.asarray(jax.nn.softmax(logits, axis=-1), np.float32)
  n = len(x)
  if target is None:
    c = np.argmax(logits, axis=-1).astype(np.int32)
  else:
    # check_target also forbids the predicted class (a counterfactual must change it);
    # a saliency map may explain any class, so no image counts as "predicted" here.
    c = check_target(target, n, clf.num_classes, np.full((n,), -1))
  return Prepared(clf, x, c, probs, np.arange(n, dtype=np.int32), chunk_size)


def run(prep: Prepared, fn, *, with_index: bool = False) -> np.ndarray:
  """fn(images, target[, index]) -> (n, H, W) maps, over padded chunks."""
  arrays = [prep.images, prep.target] + ([prep.index] if with_index else [])
  return np.asarray(map_in_chunks(fn, arrays, prep.chunk_size), np.float32)


def explanation(prep: Prepared, maps: np.ndarray) -> Explanation:
  maps = np.maximum(np.asarray(maps, np.float32), 0.0)
  return Explanation(maps=maps, target=prep.target, probs=prep.probs)


def check_positive_int(value, name: str) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
    raise ValueError(f"{name} must be a positive integer, got {value!r}")
  return int(value)


def check_real(value, name: str, lo: float, hi: float) -> float:
  """A finite real number in [lo, hi]."""
  ok = (isinstance(value, numbers.Real) and not isinstance(value, bool)
        and math.isfinite(value) and lo <= value <= hi)
  if not ok:
    raise ValueError(f"{name} must be a finite number in [{lo}, {hi}], got {value!r}")
  return float(value)


def check_key(key, name: str) -> jax.Array:
  """Stochastic baselines take an explicit key, so maps are reproducible."""
  if key is None:
    raise ValueError(f"{name} is stochastic and needs a PRNG key, e.g. key=jax.random.key(0)")
  if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
    return jax.random.key(int(key))
  if not isinstance(key, jax.Array):
    raise TypeError(f"key must be a JAX PRNG key or an int seed, got {type(key).__name__}")
  if not jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
    key = jax.random.wrap_key_data(key)
  if key.shape != ():
    raise ValueError(f"key must be a single PRNG key, got shape {key.shape}")
  return key
