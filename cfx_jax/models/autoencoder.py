"""A small convolutional autoencoder: images <-> a low-dimensional code.

It knows only the images it was fitted to, which makes it a judge independent of any
classifier: the realism metrics measure in its code space, and the class prior of the
generator explainers charges what it cannot reconstruct. Deliberately tiny (two
stride-2 convs each way), so it trains in seconds on a CPU.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx


class ConvAutoencoder(nnx.Module):
  """(H, W, C) images in [-1, 1] <-> `code_dim` codes; H and W divisible by 4."""

  def __init__(self, image_shape, code_dim: int, *,
               features: tuple[int, int] = (16, 32), rngs: nnx.Rngs):
    h, w, c = (int(d) for d in image_shape)
    if h % 4 or w % 4:
      raise ValueError(f'image height and width must be divisible by 4, '
                       f'got {h}x{w}')
    f1, f2 = features
    self.inner_shape = (h // 4, w // 4, f2)
    flat = (h // 4) * (w // 4) * f2
    self.enc1 = nnx.Conv(c, f1, (3, 3), strides=2, rngs=rngs)
    self.enc2 = nnx.Conv(f1, f2, (3, 3), strides=2, rngs=rngs)
    self.to_code = nnx.Linear(flat, code_dim, rngs=rngs)
    self.from_code = nnx.Linear(code_dim, flat, rngs=rngs)
    # 3x3 transposed convs: on CPU their gradients cost about half of 4x4
    # ones (or of upsample + conv) and reconstruct as well at this size.
    self.dec1 = nnx.ConvTranspose(f2, f1, (3, 3), strides=2, rngs=rngs)
    self.dec2 = nnx.ConvTranspose(f1, c, (3, 3), strides=2, rngs=rngs)

  def encode(self, x: jax.Array) -> jax.Array:
    x = jax.nn.relu(self.enc1(x))
    x = jax.nn.relu(self.enc2(x))
    return self.to_code(x.reshape(x.shape[0], -1))

  def decode(self, z: jax.Array) -> jax.Array:
    x = jax.nn.relu(self.from_code(z)).reshape((z.shape[0],) + self.inner_shape)
    x = jax.nn.relu(self.dec1(x))
    return jnp.tanh(self.dec2(x))

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.decode(self.encode(x))
