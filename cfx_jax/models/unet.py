"""U-Net used by every generative explainer.

Upsampling is nearest-neighbour (`layers.upsample2`) + 3x3 conv: the gradient of
ConvTranspose was measured ~10x slower on XLA:CPU. The residual form `clip(x + 2 tanh(r))`
with a zero-initialised last conv starts as the identity, which is what makes the maps
sparse and well localised.

The mask form `x + m * (g - x)` composites a re-synthesised fill g = tanh(.) into the
input through a soft mask m = sigmoid(. - 4) that starts almost closed: inside the mask
the image is redrawn rather than nudged, so removing evidence means painting what lies
around it, not tinting it, and outside the mask nothing changes.

The in-fill form `x + m * (fill(x, m) - x) + 2 tanh(r)` takes the fill from the image
itself: a normalised Gaussian average of the pixels outside the mask, i.e. the
background around the region. A generator that opens the mask over a lesion replaces
it with what surrounds it instead of drawing an approximation of it;
the residual term still draws what must be added.

`draws=False` (in-fill form only) leaves the residual out, `x + m * (fill(x, m) - x)`: a
generator that can only replace regions by their surroundings, for a direction that
should remove evidence, never paint it.

`hard_mask` (either form) makes the mask binary in the forward pass, m > 0.5, with the
soft mask's gradient (straight-through), so that a half-open mask cannot leave half a
lesion behind. Measured on the lesion set it does not learn to open
(docs/counterfactual_truth.md, sixth and seventh rounds); it stays an option.

`mask_grow` k (either form) widens the mask by k pixels, a maximum over each
(2k+1)x(2k+1) window: the mask's soft edge then lies outside the region it opens, so the
rim of a lesion is replaced as fully as its centre instead of staying half visible.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from cfx_jax.models.layers import strided_conv, upsample2

# Width of the in-fill's Gaussian, as a fraction of the image side (the lesion set's
# lesions have radii 0.07-0.15 of it).
INFILL_SIGMA = 0.06


def surroundings(x: jax.Array, m: jax.Array) -> jax.Array:
  """Each pixel's normalised Gaussian average of the image outside the mask:
  sum_j k_ij (1 - m_j) x_j / sum_j k_ij (1 - m_j), for (N, H, W, C) x and (N, H, W, 1) m.
  Where the mask is closed this is a local blur; inside an open region it is the
  background around the region."""
  sigma = max(1.0, INFILL_SIGMA * x.shape[1])
  r = int(3 * sigma)
  t = jnp.arange(-r, r + 1, dtype=jnp.float32)
  taps = jnp.exp(-0.5 * (t / sigma) ** 2)
  taps = taps / jnp.sum(taps)
  keep = 1.0 - m
  out = jnp.concatenate([x * keep, keep], axis=-1)
  for axis in (1, 2):  # separable; zero outside the image, which the ratio renormalises
    pad = [(0, 0)] * 4
    pad[axis] = (r, r)
    padded = jnp.pad(out, pad)
    n = out.shape[axis]
    out = sum(jax.lax.slice_in_dim(padded, i, i + n, axis=axis) * taps[i]
              for i in range(2 * r + 1))
  return out[..., :-1] / jnp.maximum(out[..., -1:], 1e-3)


def open_mask(logits: jax.Array, hard: bool) -> jax.Array:
  """sigmoid(logits - 4), almost closed at zero logits; `hard`: 1 where that is past 0.5
  and 0 elsewhere, with the soft mask's gradient (straight-through)."""
  m = jax.nn.sigmoid(logits - 4.0)
  return m + jax.lax.stop_gradient(jnp.where(m > 0.5, 1.0, 0.0) - m) if hard else m


def grow_mask(m: jax.Array, k: int) -> jax.Array:
  """Maximum of the (N, H, W, 1) mask over each (2k+1)x(2k+1) window (k = 0: unchanged)."""
  if k == 0:
    return m
  w = 2 * k + 1
  return jax.lax.reduce_window(m, -jnp.inf, jax.lax.max, (1, w, w, 1), (1, 1, 1, 1), "SAME")


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
               residual: bool = True, mask: bool = False, infill: bool = False,
               hard_mask: bool = False, draws: bool = True, mask_grow: int = 0, dtype=None,
               rngs: nnx.Rngs):
    if mask and infill:
      raise ValueError("mask (a drawn fill) and infill (the surroundings) exclude each other")
    if hard_mask and not (mask or infill):
      raise ValueError("hard_mask needs a mask: set mask or infill")
    self.channels, self.cond_dim, self.residual = channels, cond_dim, residual
    if mask_grow and not (mask or infill):
      raise ValueError("mask_grow needs a mask: set mask or infill")
    if mask_grow < 0:
      raise ValueError(f"mask_grow must be >= 0, got {mask_grow}")
    if not draws and not infill:
      raise ValueError("draws=False (in-fill only) needs the in-fill form: set infill")
    self.mask, self.infill, self.hard_mask, self.draws = mask, infill, hard_mask, draws
    self.mask_grow = int(mask_grow)
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
    # Mask and in-fill forms: one zero-initialised mask logit per head (the mask starts
    # almost closed).
    self.mask_heads = nnx.List([
        nnx.Conv(prev, 1, (3, 3), kernel_init=nnx.initializers.zeros_init(), dtype=dtype,
                 rngs=rngs) for _ in range(heads if mask or infill else 0)])

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
      h = jax.nn.leaky_relu(conv(upsample2(h)), 0.2)
      h = block(jnp.concatenate([h, skip], axis=-1))
    outs = []
    for i, head in enumerate(self.heads):
      r = head(h).astype(jnp.float32)
      if self.mask or self.infill:
        m = grow_mask(open_mask(self.mask_heads[i](h).astype(jnp.float32), self.hard_mask),
                      self.mask_grow)
      if self.mask:
        outs.append(x + m * (jnp.tanh(r) - x))
      elif self.infill and not self.draws:
        outs.append(x + m * (surroundings(x, m) - x))
      elif self.infill:
        outs.append(jnp.clip(x + m * (surroundings(x, m) - x) + 2.0 * jnp.tanh(r), -1.0, 1.0))
      elif self.residual:
        outs.append(jnp.clip(x + 2.0 * jnp.tanh(r), -1.0, 1.0))
      else:
        outs.append(jnp.tanh(r))
    return outs[0] if len(outs) == 1 else tuple(outs)
