"""Whether a map ranks pixels by how much the classifier relies on them.

Insertion / deletion (Petsiuk et al., RISE, 2018): follow the probability of
the explained class while pixels are removed from the image in decreasing
relevance order (deletion), or added to an uninformative start image in the
same order (insertion). A faithful map makes the probability collapse early
when deleting (low AUC) and recover early when inserting (high AUC).

Baselines, as in RISE: deleted pixels become 0, the mid grey of images in
[-1, 1], so deletion ends on a flat image; insertion starts from a blurred
copy, which keeps the image's colours and coarse layout so that inserting
pixels adds detail rather than out-of-distribution edges around a grey hole.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp


class InsertionDeletion(NamedTuple):
  """Class-probability curves (N, steps + 1) and their areas (N,)."""

  deletion: jax.Array
  insertion: jax.Array
  deletion_auc: jax.Array
  insertion_auc: jax.Array


def _blur_matrix(n: int, sigma: float) -> jax.Array:
  i = jnp.arange(n, dtype=jnp.float32)
  w = jnp.exp(-0.5 * ((i[:, None] - i[None, :]) / sigma) ** 2)
  # Row-normalised, so border pixels average only over pixels that exist.
  return w / jnp.sum(w, axis=1, keepdims=True)


def gaussian_blur(x_batch, sigma: float | None = None) -> jax.Array:
  """Separable Gaussian blur of (N, H, W, C) images.

  `sigma` in pixels defaults to max(H, W) / 8 (4 px at 32x32): strong enough
  that small objects are no longer recognisable, unlike RISE's 5 px at 224.
  """
  x = jnp.asarray(x_batch, jnp.float32)
  h, w = x.shape[1], x.shape[2]
  if sigma is None:
    sigma = max(h, w) / 8.0
  if sigma <= 0:
    return x
  return jnp.einsum('hi,nijc,wj->nhwc', _blur_matrix(h, sigma), x,
                    _blur_matrix(w, sigma))


def _baseline(spec, x, blur_sigma):
  if isinstance(spec, str):
    if spec == 'zeros':
      return jnp.zeros_like(x)
    if spec == 'blur':
      return gaussian_blur(x, blur_sigma)
    raise ValueError(f"baseline must be 'zeros', 'blur', a number or an "
                     f'array, got {spec!r}')
  return jnp.broadcast_to(jnp.asarray(spec, jnp.float32), x.shape)


def _pixel_ranks(a):
  """Position of each pixel in decreasing-relevance order, (N, M).

  The stable sort breaks ties by pixel index (row-major), lower first.
  """
  order = jnp.argsort(-a, axis=1, stable=True)
  positions = jnp.broadcast_to(jnp.arange(a.shape[1]), a.shape)
  return jax.vmap(lambda o, p: jnp.zeros_like(o).at[o].set(p))(order, positions)


@functools.partial(jax.jit, static_argnames=('score_fn', 'steps'))
def _curves(score_fn, x, a, y, deletion_base, insertion_base, steps):
  n, h, w, c = x.shape
  m = h * w
  ranks = _pixel_ranks(a.reshape(n, m)).reshape(n, h, w, 1)
  # Pixels moved after each step, rounded to the nearest whole pixel.
  counts = (jnp.arange(steps + 1) * m + steps // 2) // steps

  def frames(image, rank, del_base, ins_base, count):
    moved = rank < count
    return (jnp.where(moved, del_base, image), jnp.where(moved, image, ins_base))

  over_steps = jax.vmap(frames, in_axes=(None, None, None, None, 0))
  over_images = jax.vmap(over_steps, in_axes=(0, 0, 0, 0, None))
  deleted, inserted = over_images(x, ranks, deletion_base, insertion_base,
                                  counts)
  # One classifier call on every frame of both curves.
  stack = jnp.concatenate([deleted, inserted]).reshape(-1, h, w, c)
  probs = jax.nn.softmax(jnp.asarray(score_fn(stack), jnp.float32), axis=-1)
  probs = probs.reshape(2, n, steps + 1, -1)
  labels = jnp.broadcast_to(y[None, :, None, None], (2, n, steps + 1, 1))
  curves = jnp.take_along_axis(probs, labels, axis=-1)[..., 0]
  fraction = counts.astype(jnp.float32) / m
  aucs = jnp.trapezoid(curves, fraction, axis=-1)
  return InsertionDeletion(curves[0], curves[1], aucs[0], aucs[1])


def insertion_deletion(score_fn: Callable[[jax.Array], jax.Array], x_batch,
                       a_batch, y_batch, *, steps: int = 16, baseline=None,
                       blur_sigma: float | None = None) -> InsertionDeletion:
  """Deletion and insertion curves of the class-y probability, with AUCs.

  `score_fn(images) -> logits (N, K)`; it must be traceable and is compiled
  together with the frame construction (pass the same function object to
  reuse the compilation). Step t moves the round(t / steps * H * W) most
  relevant pixels (all channels), ties broken by pixel index. Curves have
  steps + 1 points: deletion starts at p(x) and ends at p(deletion baseline),
  insertion starts at p(insertion baseline) and ends at p(x). AUCs are
  trapezoids over the moved fraction of pixels, 0..1.

  `baseline`: None for the RISE defaults (grey for deletion, blurred copy
  for insertion; see the module docstring), or one spec for both curves, or
  a (deletion, insertion) pair; a spec is 'zeros', 'blur', a number or an
  array broadcastable to `x_batch`. All 2 * N * (steps + 1) frames are
  classified in one batch, so call on chunks of a large set.
  """
  x = jnp.asarray(x_batch, jnp.float32)
  a = jnp.asarray(a_batch, jnp.float32)
  y = jnp.asarray(y_batch, jnp.int32)
  if x.ndim != 4 or a.shape != x.shape[:3]:
    raise ValueError(f'maps {a.shape} must be (N, H, W) for images {x.shape}')
  if y.shape != x.shape[:1]:
    raise ValueError(f'labels {y.shape} must be ({x.shape[0]},)')
  if steps < 1:
    raise ValueError(f'steps must be >= 1, got {steps}')
  if baseline is None:
    baseline = ('zeros', 'blur')
  if not (isinstance(baseline, tuple) and len(baseline) == 2):
    baseline = (baseline, baseline)
  deletion_base = _baseline(baseline[0], x, blur_sigma)
  insertion_base = _baseline(baseline[1], x, blur_sigma)
  return _curves(score_fn, x, a, y, deletion_base, insertion_base, int(steps))
