"""The networks of the latent-space explainer: a conv VAE, attribute and shift predictors.

ConvVAE is the generator G with a latent space. The method it follows (arXiv 2206.05257)
uses a frozen, pretrained StyleGAN2; none is available offline here, and a GAN trained
from scratch on CPU is slow and unstable. A VAE trains in minutes with a plain
likelihood loss, and its encoder maps a real image to its latent code directly, where a
GAN needs a per-image inversion before a real image can be edited.

Downsampling is a stride-2 conv (`strided_conv`, fast to differentiate on CPU);
upsampling is nearest-resize + 3x3 conv, not ConvTranspose (slow gradients on CPU).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from cfx_jax.models.layers import max_pool2, strided_conv, upsample2


def _down_convs(channels: int, features, rngs: nnx.Rngs) -> nnx.List:
  convs = nnx.List()
  prev = channels
  for f in features:
    convs.append(nnx.Conv(prev, f, (3, 3), strides=2, conv_general_dilated=strided_conv,
                          rngs=rngs))
    prev = f
  return convs


def check_image_shape(image_shape, levels: int) -> tuple[int, int, int]:
  """(H, W, C) whose sides halve `levels` times without remainder."""
  shape = tuple(int(d) for d in image_shape)
  if len(shape) != 3:
    raise ValueError(f"image_shape must be (H, W, C), got {image_shape}")
  h, w, _ = shape
  step = 2 ** levels
  if h % step or w % step:
    raise ValueError(f"image sides must be divisible by 2**{levels} = {step} (one halving per "
                     f"feature level), got {h}x{w}")
  return shape


def vae_latent_shape(image_shape, latent_dim: int, levels: int,
                     spatial: bool) -> tuple[int, ...]:
  """The code's shape: (latent_dim,), or for a latent grid (H / 2^L, W / 2^L, latent_dim)."""
  h, w, _ = check_image_shape(image_shape, levels)
  if not spatial:
    return (int(latent_dim),)
  return (h // 2 ** levels, w // 2 ** levels, int(latent_dim))


class ConvVAE(nnx.Module):
  """Encoder: stride-2 convs to an (H / 2^L, W / 2^L) grid, then mean and log-variance.

  Decoder: the mirror image, ending in tanh so that images lie in [-1, 1].

  The latent is a vector of `latent_dim` (a dense layer over the whole grid), or with
  `spatial=True` a grid of `latent_dim` channels at the encoder's last resolution: each
  position then codes its own neighbourhood, so a small object anywhere on a textured
  background survives, and changing it changes the code only where it is. Either way the
  code goes in and out flat, (N, latent_size).
  """

  def __init__(self, image_shape, *, latent_dim: int = 16, features=(32, 64, 128),
               spatial: bool = False, rngs: nnx.Rngs):
    features = tuple(int(f) for f in features)
    if not features or latent_dim < 1:
      raise ValueError(f"need at least one feature level and latent_dim >= 1, got "
                       f"features={features}, latent_dim={latent_dim}")
    h, w, c = check_image_shape(image_shape, len(features))
    self.latent_dim = int(latent_dim)
    self.spatial = bool(spatial)
    self.grid = (h // 2 ** len(features), w // 2 ** len(features), features[-1])
    flat = self.grid[0] * self.grid[1] * self.grid[2]
    self.latent_shape = vae_latent_shape(image_shape, self.latent_dim, len(features), self.spatial)
    self.down = _down_convs(c, features, rngs)
    if self.spatial:
      self.stats = nnx.Conv(features[-1], 2 * self.latent_dim, (1, 1), rngs=rngs)
      self.expand = nnx.Conv(self.latent_dim, features[-1], (3, 3), rngs=rngs)
    else:
      self.stats = nnx.Linear(flat, 2 * self.latent_dim, rngs=rngs)
      self.expand = nnx.Linear(self.latent_dim, flat, rngs=rngs)
    self.up = nnx.List()
    prev = features[-1]
    for f in reversed(features):
      self.up.append(nnx.Conv(prev, f, (3, 3), rngs=rngs))
      prev = f
    self.out = nnx.Conv(prev, c, (3, 3), rngs=rngs)

  def encode(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(mean, log-variance), each (N, latent_size) with latent_size the product of
    `latent_shape`."""
    for conv in self.down:
      x = jax.nn.silu(conv(x))
    stats = self.stats(x if self.spatial else x.reshape(x.shape[0], -1))
    mean, logvar = (a.reshape(a.shape[0], -1) for a in jnp.split(stats, 2, axis=-1))
    return mean, jnp.clip(logvar, -10.0, 5.0)

  def decode(self, z: jax.Array) -> jax.Array:
    if self.spatial:
      z = z.reshape((z.shape[0],) + self.latent_shape)
    x = jax.nn.silu(self.expand(z)).reshape((z.shape[0],) + self.grid)
    for conv in self.up:
      x = jax.nn.silu(conv(upsample2(x)))
    return jnp.tanh(self.out(x))

  def __call__(self, x: jax.Array, key: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(reconstruction of a posterior sample, mean, log-variance)."""
    mean, logvar = self.encode(x)
    z = mean + jnp.exp(0.5 * logvar) * jax.random.normal(key, mean.shape, mean.dtype)
    return self.decode(z), mean, logvar


def gaussian_kl(mean: jax.Array, logvar: jax.Array) -> jax.Array:
  """KL(N(mean, exp(logvar)) || N(0, I)) per example, summed over the latent."""
  return 0.5 * jnp.sum(jnp.exp(logvar) + jnp.square(mean) - 1.0 - logvar, axis=-1)


class AttributePredictor(nnx.Module):
  """Conv-pool blocks, then the spatial mean and max of the last features, one logit per
  binary attribute. The max lets a small, local attribute (a lesion a few pixels across)
  decide even though it barely moves the spatial mean."""

  def __init__(self, channels: int, num_attributes: int, *, features=(16, 32, 64),
               rngs: nnx.Rngs):
    if num_attributes < 1:
      raise ValueError(f"num_attributes must be at least 1, got {num_attributes}")
    self.convs = nnx.List()
    prev = channels
    for f in features:
      self.convs.append(nnx.Conv(prev, int(f), (3, 3), rngs=rngs))
      prev = int(f)
    self.head = nnx.Linear(2 * prev, int(num_attributes), rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    """Logits (N, K); sigmoid gives the probability that each attribute is present."""
    for i, conv in enumerate(self.convs):
      x = jax.nn.silu(conv(x))
      if i < len(self.convs) - 1:
        x = max_pool2(x)
    pooled = jnp.concatenate([jnp.mean(x, axis=(1, 2)), jnp.max(x, axis=(1, 2))], axis=-1)
    return self.head(pooled)


class ShiftPredictor(nnx.Module):
  """MLP (z, t) -> dz: the latent shift that makes the requested attribute changes t.

  t has one entry per attribute in {-1, 0, +1} (remove, leave, add). The last layer
  starts at zero, so training starts from "no shift".
  """

  def __init__(self, latent_dim: int, num_attributes: int, *, hidden=(128, 128),
               rngs: nnx.Rngs):
    self.layers = nnx.List()
    prev = int(latent_dim) + int(num_attributes)
    for width in hidden:
      self.layers.append(nnx.Linear(prev, int(width), rngs=rngs))
      prev = int(width)
    self.out = nnx.Linear(prev, int(latent_dim), kernel_init=nnx.initializers.zeros_init(),
                          rngs=rngs)

  def __call__(self, z: jax.Array, t: jax.Array) -> jax.Array:
    h = jnp.concatenate([z, t.astype(z.dtype)], axis=-1)
    for layer in self.layers:
      h = jax.nn.silu(layer(h))
    return self.out(h)


class ConvShiftPredictor(nnx.Module):
  """(z, t) -> dz for a latent grid (h, w, c), flat in and out: 3x3 convs over the code
  with t broadcast to every position, the last one starting at zero ("no shift").

  The same local rule applies at every position, so an edit learned where the evidence
  happened to be in training applies wherever it is in a new image, and positions far from
  it are left alone."""

  def __init__(self, latent_shape, num_attributes: int, *, hidden=(64, 64),
               rngs: nnx.Rngs):
    self.latent_shape = tuple(int(d) for d in latent_shape)
    if len(self.latent_shape) != 3:
      raise ValueError(f"a convolutional shift needs a latent grid (h, w, c), got "
                       f"{self.latent_shape}")
    self.layers = nnx.List()
    prev = self.latent_shape[-1] + int(num_attributes)
    for width in hidden:
      self.layers.append(nnx.Conv(prev, int(width), (3, 3), rngs=rngs))
      prev = int(width)
    self.out = nnx.Conv(prev, self.latent_shape[-1], (3, 3),
                        kernel_init=nnx.initializers.zeros_init(), rngs=rngs)

  def __call__(self, z: jax.Array, t: jax.Array) -> jax.Array:
    n = z.shape[0]
    grid = z.reshape((n,) + self.latent_shape)
    h, w, _ = self.latent_shape
    cond = jnp.broadcast_to(t.astype(z.dtype)[:, None, None, :], (n, h, w, t.shape[-1]))
    x = jnp.concatenate([grid, cond], axis=-1)
    for layer in self.layers:
      x = jax.nn.silu(layer(x))
    return self.out(x).reshape(n, -1)
