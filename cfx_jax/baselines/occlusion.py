"""Occlusion: how much the class log-odds drop when a square window is greyed out.

A pixel's relevance is the mean drop over the windows that cover it, clipped at 0 (a
window whose removal raises the score is not evidence for the class). All windows of
a chunk are scored in one batched classifier call.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from cfx_jax.baselines import base
from cfx_jax.explanation import Explanation


def default_window(image_shape) -> int:
  """1/8 of the shorter side: 4 px for 32 px images."""
  return max(1, round(min(image_shape[:2]) / 8))


def window_starts(size: int, window: int, stride: int) -> np.ndarray:
  """Start offsets along one axis; the last window is moved in to reach the border."""
  starts = list(range(0, size - window + 1, stride))
  if starts[-1] != size - window:
    starts.append(size - window)
  return np.asarray(starts, np.int32)


def window_masks(height: int, width: int, window: int, stride: int) -> jax.Array:
  """(P, H, W) float masks, 1 inside window p; every pixel is covered at least once."""
  def axis(size):
    pos = jnp.arange(size)
    s = jnp.asarray(window_starts(size, window, stride))[:, None]
    return (pos >= s) & (pos < s + window)

  rows, cols = axis(height), axis(width)
  masks = rows[:, None, :, None] & cols[None, :, None, :]
  return masks.reshape(-1, height, width).astype(jnp.float32)


@functools.partial(jax.jit, static_argnames=("apply", "window", "stride"))
def _occlusion_maps(apply, params, images, target, fill, window: int, stride: int):
  n, h, w, ch = images.shape
  masks = window_masks(h, w, window, stride)
  p = masks.shape[0]
  m = masks[None, :, :, :, None]
  occluded = (images[:, None] * (1.0 - m) + fill * m).reshape(n * p, h, w, ch)
  score = base.score_fn(apply, params, jnp.repeat(target, p))(occluded).reshape(n, p)
  drop = base.score_fn(apply, params, target)(images)[:, None] - score
  coverage = jnp.sum(masks, axis=0)
  return jnp.maximum(jnp.einsum("np,phw->nhw", drop, masks) / coverage, 0.0)


def occlusion(classifier, images, target=None, *, window: int | None = None,
              stride: int | None = None, fill: float = 0.0,
              chunk_size: int = 8) -> Explanation:
  """Mean log-odds drop per pixel over windows of `window` px (default 1/8 of the side),
  moved by `stride` px (default window // 2), filled with `fill` (default grey, 0).

  A chunk scores chunk_size x (number of windows) images at once; keep chunk_size small.
  """
  if window is not None:
    window = base.check_positive_int(window, "window")
  if stride is not None:
    stride = base.check_positive_int(stride, "stride")
  fill = jnp.float32(base.check_real(fill, "fill", -1.0, 1.0))
  prep = base.prepare(classifier, images, target, chunk_size)
  size = prep.images.shape[1:3]
  window = default_window(size) if window is None else window
  if window > min(size):
    raise ValueError(f"window ({window} px) must fit in the image (H, W) = {tuple(size)}")
  stride = max(1, window // 2) if stride is None else stride
  clf = prep.classifier
  maps = base.run(prep, lambda x, c: _occlusion_maps(clf.apply, clf.params, x, c, fill,
                                                     window, stride))
  return base.explanation(prep, maps)
