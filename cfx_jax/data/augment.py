"""Random photometric jitter: what a tint-proof judge of an image must ignore.

Used to harden the evaluation oracle, to show the discriminator only what survives a
change of colour (so a tint cannot pass for a removed lesion), and to query the
classifier under an expectation over transformations.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def jitter(key: jax.Array, images: jax.Array, strength: float = 1.0) -> jax.Array:
  """Random per-image colour gains and offsets, contrast, brightness and noise.

  Images in [-1, 1], (..., H, W, C); every image gets its own draws. Grey images are
  jittered in brightness, contrast and noise.
  """
  shape = images.shape
  images = images.reshape((-1,) + shape[-3:])
  n, c = images.shape[0], images.shape[-1]
  k = jax.random.split(key, 5)
  u = lambda kk, shape, lo, hi: jax.random.uniform(kk, shape, minval=lo, maxval=hi)
  s = strength
  gain = u(k[0], (n, 1, 1, c), 1 - 0.35 * s, 1 + 0.35 * s)
  offset = u(k[1], (n, 1, 1, c), -0.25 * s, 0.25 * s)
  contrast = u(k[2], (n, 1, 1, 1), 1 - 0.4 * s, 1 + 0.3 * s)
  sigma = u(k[3], (n, 1, 1, 1), 0.0, 0.08 * s)
  mean = jnp.mean(images, axis=(1, 2, 3), keepdims=True)
  out = (images - mean) * contrast + mean
  out = out * gain + offset + sigma * jax.random.normal(k[4], images.shape)
  return jnp.clip(out, -1.0, 1.0).reshape(shape)
