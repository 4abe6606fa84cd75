"""U-Net used by every generative explainer.

Upsampling is nearest-resize + 3x3 conv: the gradient of ConvTranspose is ~10x slower
on CPU (DESIGN 5). The residual form `clip(x + 2 tanh(r))` with a zero-initialised last
conv starts as the identity, which is what makes the maps sparse and well localised.

The mask form `x + m * (g - x)` composites a re-synthesised fill g = tanh(.) into the
input through a soft mask m = sigmoid(. - 4) that starts almost closed: inside the mask
the image is redrawn rather than nudged, so removing evidence means painting what lies
around it, not tinting it, and outside the mask nothing changes.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from cfx_jax.models.layers import strided_conv


def _upsample(x: jax.Array) -> jax.Array:
  n, h, w, c = x.shape
  return jax.image.resize(x, (n, 2 * h, 2 * w, c), method="nearest")


class ConvBlock(nnx.Module):
  """Two 3x3 convs with leaky ReLU; the first may downsample."""

  def __init__(self, cin: int, cout: int, *, stride: int = 1, dtype=None,
               rngs: nnx.Rngs):
    self.a = nnx.Conv(cin, cout, (3, 3), strides=stride, dtype=dtype,
                      conv_general_dilated=strided_conv, rngs=rngs)
    self.b = nnx.Conv(cout, cout, (3, 3), dtype=dtype, rngs=rngs)

  def __call__(self, x):
    x = jax.nn.leaky_relu(self.a(x), 0.2)
    return jax.nn.leaky_relu(self.b(x), 0.2)


class UNet(nnx.Module):
  """Image-to-image U-Net with optional conditioning vector and several output heads.

  The conditioning vector (e.g. one-hot source/target classes) is broadcast over space
  and concatenated to the input. Each head is a 3x3 conv to `channels`.
  """

  def __init__(self, channels: int, *, cond_dim: int = 0,
               features: tuple[int, ...] = (16, 32, 64), heads: int = 1,
               residual: bool = True, mask: bool = False, dtype=None, rngs: nnx.Rngs):
    self.channels, self.cond_dim, self.residual, self.mask = channels, cond_dim, residual, mask
    self.down = nnx.List()
    prev = channels + cond_dim
    for i, f in enumerate(features):
      self.down.append(ConvBlock(prev, f, stride=1 if i == 0 else 2, dtype=dtype, rngs=rngs))
      prev = f
    self.up_convs = nnx.List()
    self.up_blocks = nnx.List()
    for f in reversed(features[:-1]):
      self.up_convs.append(nnx.Conv(prev, f, (3, 3), dtype=dtype, rngs=rngs))
      self.up_blocks.append(ConvBlock(2 * f, f, dtype=dtype, rngs=rngs))
      prev = f
    # Residual heads start at zero so the generator starts as the identity map.
    init = (nnx.initializers.zeros_init() if residual and not mask
            else nnx.initializers.lecun_normal())
    self.heads = nnx.List([
        nnx.Conv(prev, channels, (3, 3), kernel_init=init, dtype=dtype, rngs=rngs)
        for _ in range(heads)])
    # Mask form: one zero-initialised mask logit per head (the mask starts almost closed).
    self.mask_heads = nnx.List([
        nnx.Conv(prev, 1, (3, 3), kernel_init=nnx.initializers.zeros_init(), dtype=dtype,
                 rngs=rngs) for _ in range(heads if mask else 0)])

  def __call__(self, x: jax.Array, cond: jax.Array | None = None):
    """Returns one image per head (a tuple when there are several heads)."""
    h = x
    if self.cond_dim:
      n, hh, ww, _ = x.shape
      h = jnp.concatenate(
          [x, jnp.broadcast_to(cond[:, None, None, :].astype(x.dtype),
                               (n, hh, ww, self.cond_dim))], axis=-1)
    skips = []
    for block in self.down:
      h = block(h)
      skips.append(h)
    for conv, block, skip in zip(self.up_convs, self.up_blocks, reversed(skips[:-1])):
      h = jax.nn.leaky_relu(conv(_upsample(h)), 0.2)
      h = block(jnp.concatenate([h, skip], axis=-1))
    outs = []
    for i, head in enumerate(self.heads):
      r = head(h).astype(jnp.float32)
      if self.mask:
        m = jax.nn.sigmoid(self.mask_heads[i](h).astype(jnp.float32) - 4.0)
        outs.append(x + m * (jnp.tanh(r) - x))
      elif self.residual:
        outs.append(jnp.clip(x + 2.0 * jnp.tanh(r), -1.0, 1.0))
      else:
        outs.append(jnp.tanh(r))
    return outs[0] if len(outs) == 1 else tuple(outs)
