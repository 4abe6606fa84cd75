"""In-fillers for FIDO: what a dropped region of an image is replaced with.

Every registered in-filler is called as `infill(images, keep_mask, key) -> fills` with
images (N, H, W, C) in [-1, 1], keep_mask (N, H, W, 1) in [0, 1] (1 = pixel kept) and a
PRNG key; fills has the shape of images. One signature for all lets a learned,
mask-conditioned in-filler (a generative in-painter) replace the simple ones below, which
ignore the mask. The fills are only used where the mask drops pixels: the in-filled image
is `keep * images + (1 - keep) * fills`.

`uses_mask` and `uses_key` say what an in-filler reads; when it reads neither, the
optimiser computes the fills once per image instead of once per step and sample.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

from cfx_jax.models.inpainter import Inpainter

# The Gaussian blur of the FIDO paper is sigma = 10 on 224-pixel images.
BLUR_SIGMA_AT_224 = 10.0
# Side of the local-mean window, as a fraction of the image side.
LOCAL_MEAN_FRACTION = 0.25


@dataclasses.dataclass(frozen=True)
class Infiller:
  """A named `(images, keep_mask, key) -> fills` callable and what it depends on."""

  fn: Callable[[jax.Array, jax.Array, jax.Array], jax.Array]
  name: str = "custom"
  uses_mask: bool = True
  uses_key: bool = True

  def __call__(self, images: jax.Array, keep_mask: jax.Array, key: jax.Array) -> jax.Array:
    return self.fn(images, keep_mask, key)


# Simple in-fillers: images (N, H, W, C), key -> fills ----------------------------------


def mean_fill(images: jax.Array, key: jax.Array | None = None) -> jax.Array:
  """Each image's per-channel mean: removes the region's content but keeps its colour."""
  del key
  return jnp.broadcast_to(jnp.mean(images, axis=(1, 2), keepdims=True), images.shape)


def constant_fill(value) -> Callable[[jax.Array, jax.Array | None], jax.Array]:
  """Fill with a fixed value, e.g. the training set's per-channel mean (shape (C,))."""
  value = jnp.asarray(value)

  def fill(images, key=None):
    del key
    return jnp.broadcast_to(value.astype(images.dtype), images.shape)

  return fill


def noise_fill(images: jax.Array, key: jax.Array) -> jax.Array:
  """Uniform noise in [-1, 1]: the full range of valid pixel values."""
  return jax.random.uniform(key, images.shape, images.dtype, minval=-1.0, maxval=1.0)


def blur_sigma(height: int, width: int) -> float:
  """The paper's sigma = 10 at 224 px, scaled with the shorter image side."""
  return BLUR_SIGMA_AT_224 * min(height, width) / 224.0


def _separable(images: jax.Array, taps: jax.Array, combine) -> jax.Array:
  """Apply a 1-D kernel along H then W, reflecting at the border so edges keep their level."""
  r = (taps.shape[0] - 1) // 2
  out = images
  for axis in (1, 2):
    pad = [(0, 0)] * 4
    pad[axis] = (r, r)
    padded = jnp.pad(out, pad, mode="reflect" if r < out.shape[axis] else "edge")
    n = out.shape[axis]
    out = combine([jax.lax.slice_in_dim(padded, i, i + n, axis=axis) * taps[i]
                   for i in range(taps.shape[0])])
  return out


def gaussian_blur(images: jax.Array, sigma: float) -> jax.Array:
  """Separable Gaussian blur, kernel radius 3 sigma; a convex combination, so the range holds."""
  r = max(1, math.ceil(3.0 * sigma))
  t = jnp.arange(-r, r + 1, dtype=images.dtype)
  taps = jnp.exp(-0.5 * (t / sigma) ** 2)
  return _separable(images, taps / jnp.sum(taps), sum)


def blur_fill(images: jax.Array, key: jax.Array | None = None, *,
              sigma: float | None = None) -> jax.Array:
  """A heavily blurred copy: keeps the coarse layout, removes the region's detail."""
  del key
  if sigma is None:
    sigma = blur_sigma(images.shape[1], images.shape[2])
  return gaussian_blur(images, sigma)


def local_mean_fill(images: jax.Array, key: jax.Array | None = None, *,
                    window: int | None = None) -> jax.Array:
  """Mean over a large window around each pixel ('SAME' size; borders average what is inside).

  Cheaper and flatter than the blur; the window defaults to a quarter of the shorter side.
  """
  del key
  if window is None:
    window = max(3, int(min(images.shape[1], images.shape[2]) * LOCAL_MEAN_FRACTION))
  dims = (1, window, window, 1)
  total = jax.lax.reduce_window(images, 0.0, jax.lax.add, dims, (1, 1, 1, 1), "SAME")
  count = jax.lax.reduce_window(jnp.ones(images.shape[:3] + (1,), images.dtype), 0.0,
                                jax.lax.add, dims, (1, 1, 1, 1), "SAME")
  return total / count


# Registry -------------------------------------------------------------------------------


def _ignoring_mask(fn, name: str, uses_key: bool) -> Infiller:
  return Infiller(lambda images, keep_mask, key: fn(images, key), name,
                  uses_mask=False, uses_key=uses_key)


INFILLERS: dict[str, Infiller] = {
    "mean": _ignoring_mask(mean_fill, "mean", uses_key=False),
    "blur": _ignoring_mask(blur_fill, "blur", uses_key=False),
    "noise": _ignoring_mask(noise_fill, "noise", uses_key=True),
    "local_mean": _ignoring_mask(local_mean_fill, "local_mean", uses_key=False),
}


def register_infiller(name: str, fn, *, uses_mask: bool = True,
                      uses_key: bool = True) -> Infiller:
  """Add `fn(images, keep_mask, key) -> fills` under `name` (e.g. a trained in-painter)."""
  if not callable(fn):
    raise TypeError(f"in-filler {name!r} must be callable (images, keep_mask, key) -> fills")
  INFILLERS[name] = Infiller(fn, name, uses_mask=uses_mask, uses_key=uses_key)
  return INFILLERS[name]


def dataset_mean_infiller(mean) -> Infiller:
  """Fill with a fixed per-channel value, e.g. the training set's mean image colour."""
  fill = constant_fill(mean)
  return _ignoring_mask(fill, "dataset_mean", uses_key=False)


def get_infiller(infiller) -> Infiller:
  """A registered name, an `Infiller`, or any callable `(images, keep_mask, key) -> fills`."""
  if isinstance(infiller, Infiller):
    return infiller
  if isinstance(infiller, str):
    if infiller not in INFILLERS:
      raise ValueError(f"unknown in-filler {infiller!r}; available: {sorted(INFILLERS)}")
    return INFILLERS[infiller]
  if callable(infiller):
    return Infiller(infiller, getattr(infiller, "__name__", "custom"))
  raise ValueError(f"in-filler must be a name ({sorted(INFILLERS)}) or a callable "
                   f"(images, keep_mask, key) -> fills, got {type(infiller).__name__}")


def as_infiller(inpainter: Inpainter, name: str = "inpainter") -> Infiller:
  """A FIDO in-filler `(images, keep_mask, key) -> fills` backed by the in-painter.

  It returns the network's fill, not the composite: FIDO blends `keep * x + (1 - keep)
  * fills` itself, and blending twice would change the soft edges of its masks. The
  network is deterministic, so the key is unused and FIDO may skip drawing one.
  """
  return Infiller(lambda images, keep, key: inpainter.fill(images, keep),
                                name, uses_mask=True, uses_key=False)


def register_inpainter(inpainter: Inpainter, name: str = "inpainter") -> Infiller:
  """Register the in-painter so configs can name it: `fido_config(infiller=name)`."""
  fill = as_infiller(inpainter, name)
  return register_infiller(name, fill.fn, uses_mask=True, uses_key=False)
