"""A mask-conditioned in-painter G(visible image, keep mask), FIDO's learned in-filler.

FIDO's counterfactuals are only as plausible as the in-filler: a blur or a mean leaves
an obviously artificial region that the classifier may react to for its own sake. A
generator trained to fill random holes of real images (reconstruction + adversarial
realism, see `methods/fido/inpainter_train.py`; `methods/fido/infillers.py` makes it an
in-filler) replaces the region with content that looks
like the rest of the data set.

The network is the project's U-Net on `C + 1` input channels: the image with the hidden
pixels set to the mean colour of the visible ones, and the binarised keep mask. Its first
`C` output channels are the fill. In the residual form the zero-initialised head makes
the untrained network that mean-colour fill, so training starts from a sane in-filler
rather than from noise.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from cfx_jax.batching import map_in_chunks
from cfx_jax.models.discriminator import Discriminator
from cfx_jax.models.unet import UNet

# The network sees a pixel only where the keep mask exceeds this (FIDO's default threshold).
KEEP_THRESHOLD = 0.5


def hard_mask(keep: jax.Array, dtype) -> jax.Array:
  """1 where the pixel is mostly kept. FIDO's masks are soft: given `images * keep`, the
  network learns to divide by a small keep and restore the pixel, so a partial drop would
  remove nothing. The binary mask hides every mostly-dropped pixel completely."""
  return (keep > KEEP_THRESHOLD).astype(dtype)


def kept_mean(images: jax.Array, hard: jax.Array) -> jax.Array:
  """(N, 1, 1, C) per-image colour of the visible pixels (0 when nothing is visible)."""
  total = jnp.sum(images * hard, axis=(1, 2), keepdims=True)
  count = jnp.sum(hard, axis=(1, 2), keepdims=True)
  return total / jnp.maximum(count, 1.0)


def masked_input(images: jax.Array, keep: jax.Array) -> jax.Array:
  """(N, H, W, C + 1): visible pixels, the hidden ones set to the visible mean colour,
  and the binary mask. The mean gives every pixel the image's global colour, which a
  small U-Net's receptive field cannot reach across a large hole."""
  hard = hard_mask(keep, images.dtype)
  base = hard * images + (1.0 - hard) * kept_mean(images, hard)
  return jnp.concatenate([base, hard], axis=-1)


def composite(images: jax.Array, keep: jax.Array, fills: jax.Array) -> jax.Array:
  """`keep * images + (1 - keep) * fills`: kept pixels come from the image untouched."""
  keep = keep.astype(images.dtype)
  return keep * images + (1.0 - keep) * fills.astype(images.dtype)


class InpaintingNet(nnx.Module):
  """U-Net from (masked image, keep mask) to a full image; only its dropped part is used."""

  def __init__(self, channels: int, *, features: tuple[int, ...] = (32, 64, 128),
               residual: bool = True, dtype=None, rngs: nnx.Rngs):
    self.channels = channels
    self.unet = UNet(channels + 1, features=tuple(features), residual=residual,
                     dtype=dtype, rngs=rngs)

  def __call__(self, images: jax.Array, keep: jax.Array) -> jax.Array:
    """images (N, H, W, C) in [-1, 1], keep (N, H, W, 1) in [0, 1] -> fills (N, H, W, C)."""
    return self.unet(masked_input(images, keep))[..., :self.channels]


def build_net(image_shape, model, rngs: nnx.Rngs) -> InpaintingNet:
  """The in-painter of `model` (features, residual, dtype) for images of `image_shape`."""
  h, w, c = image_shape
  if h != w:
    raise ValueError(f"the in-painter expects square images, got {h}x{w}")
  return InpaintingNet(c, features=tuple(model["features"]), residual=bool(model["residual"]),
                       dtype=_dtype(model), rngs=rngs)


def build_networks(image_shape, model, rngs: nnx.Rngs):
  """The in-painter and a realism discriminator on (image, keep mask) pairs.

  The discriminator is the project's single-network `Discriminator` with one class; it
  sees the mask as an extra channel, so it judges whether the dropped region fits the
  kept one, and real and fake pairs share the same masks.
  """
  net = build_net(image_shape, model, rngs)
  h, _, c = image_shape
  disc = Discriminator(c + 1, h, 1, shared=False, features=tuple(model["disc_features"]),
                       dtype=_dtype(model), rngs=rngs)
  return net, disc


def _dtype(model):
  name = model.get("dtype", "float32") or "float32"
  return None if name == "float32" else jnp.dtype(name)


def disc_logits(disc: Discriminator, images: jax.Array, keep: jax.Array) -> jax.Array:
  """(N,) realism logits of images given the mask that says which pixels were filled."""
  pair = jnp.concatenate([images, keep.astype(images.dtype)], axis=-1)
  return disc(pair, jnp.zeros(images.shape[:1], jnp.int32))


@functools.partial(jax.jit, static_argnums=0)
def _fill_program(graphdef, params, images, keep):
  """One compiled program per network structure, shared by every loaded copy."""
  return nnx.merge(graphdef, params)(images, keep)


@dataclasses.dataclass
class Inpainter:
  """A trained in-painter: the network's static half, its parameters and what it was for."""

  graphdef: Any
  params: Any
  image_shape: tuple[int, int, int]
  config: dict = dataclasses.field(default_factory=dict)
  history: list = dataclasses.field(default_factory=list)

  def __post_init__(self):
    self.image_shape = tuple(int(d) for d in self.image_shape)

  def fill(self, images: jax.Array, keep: jax.Array) -> jax.Array:
    """The raw network output (traceable); FIDO composites it with the kept pixels."""
    if tuple(images.shape[1:]) != self.image_shape:
      raise ValueError(f"in-painter trained on images of shape {self.image_shape}, got "
                       f"{tuple(images.shape[1:])}")
    net = nnx.merge(self.graphdef, self.params)
    return net(images, keep).astype(images.dtype)

  def fills(self, images, keep, chunk_size: int = 256) -> np.ndarray:
    """`fill` for NumPy inputs, in compiled chunks."""
    if tuple(np.shape(images)[1:]) != self.image_shape:
      raise ValueError(f"in-painter trained on images of shape {self.image_shape}, got "
                       f"{tuple(np.shape(images)[1:])}")
    return map_in_chunks(lambda x, k: _fill_program(self.graphdef, self.params, x, k),
                         [np.asarray(images, np.float32), np.asarray(keep, np.float32)],
                         chunk_size)

  def inpaint(self, images, keep, chunk_size: int = 256) -> np.ndarray:
    """Composited images `keep * images + (1 - keep) * fill`, for NumPy inputs."""
    images = np.asarray(images, np.float32)
    keep = np.asarray(keep, np.float32)
    return keep * images + (1.0 - keep) * self.fills(images, keep, chunk_size)
