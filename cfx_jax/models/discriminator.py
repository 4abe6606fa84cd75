"""Class-conditional discriminator D(x, c) -> realism logit.

Binary: one network per class (the paper's D0, D1). More classes: one network with a
projection head, logit = w.h + <embed(c), h>.

`kind="global"` is the reference network: three stride-2 convs and one logit per image.
`kind="patch"` (PatchGAN) keeps the spatial grid and gives one logit per overlapping
patch of about a quarter of the image: a local edit that leaves evidence visible (a
tinted lesion, a half-erased shape) is judged where it is, not averaged away over the
whole image.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from cfx_jax.models.generator import group_labels
from cfx_jax.models.layers import strided_conv


class _Trunk(nnx.Module):
  """Three stride-2 convs and a linear logit, as in the reference discriminator."""

  def __init__(self, channels: int, image_size: int, features, num_classes: int,
               dtype, rngs: nnx.Rngs):
    self.convs = nnx.List()
    prev = channels
    for f in features:
      self.convs.append(nnx.Conv(prev, f, (3, 3), strides=2, dtype=dtype,
                                conv_general_dilated=strided_conv, rngs=rngs))
      prev = f
    side = image_size
    for _ in features:
      side = -(-side // 2)
    dim = side * side * prev
    self.out = nnx.Linear(dim, 1, dtype=dtype, rngs=rngs)
    self.embed = nnx.Embed(num_classes, dim, rngs=rngs) if num_classes else None

  def __call__(self, x, c=None):
    for conv in self.convs:
      x = jax.nn.leaky_relu(conv(x), 0.2)
    h = x.reshape((x.shape[0], -1))
    logit = self.out(h)[:, 0]
    if self.embed is not None:
      logit = logit + jnp.sum(self.embed(c) * h, axis=-1)
    return logit.astype(jnp.float32)


class _PatchTrunk(nnx.Module):
  """Two stride-2 convs and a stride-1 conv, then a 3x3 conv to one logit per patch."""

  def __init__(self, channels: int, features, num_classes: int, dtype, rngs: nnx.Rngs):
    self.convs = nnx.List()
    prev = channels
    for i, f in enumerate(features):
      stride = 2 if i < 2 else 1
      self.convs.append(nnx.Conv(prev, f, (3, 3), strides=stride, dtype=dtype,
                                conv_general_dilated=strided_conv, rngs=rngs))
      prev = f
    self.out = nnx.Conv(prev, 1, (3, 3), dtype=dtype, rngs=rngs)
    self.embed = nnx.Embed(num_classes, prev, rngs=rngs) if num_classes else None

  def __call__(self, x, c=None):
    for conv in self.convs:
      x = jax.nn.leaky_relu(conv(x), 0.2)
    logit = self.out(x)[..., 0]
    if self.embed is not None:
      logit = logit + jnp.sum(self.embed(c)[:, None, None, :] * x, axis=-1)
    return logit.astype(jnp.float32)


class Discriminator(nnx.Module):

  def __init__(self, channels: int, image_size: int, num_classes: int, *,
               shared: bool | None = None, features: tuple[int, ...] = (32, 64, 96),
               kind: str = "global", dtype=None, rngs: nnx.Rngs):
    if kind not in ("global", "patch"):
      raise ValueError(f"discriminator kind must be 'global' or 'patch', got {kind!r}")
    self.num_classes = num_classes
    self.shared = (num_classes > 2) if shared is None else bool(shared)
    make = ((lambda k: _Trunk(channels, image_size, features, k, dtype, rngs))
            if kind == "global" else
            (lambda k: _PatchTrunk(channels, features, k, dtype, rngs)))
    if self.shared:
      self.nets = nnx.List([make(num_classes)])
    else:
      self.nets = nnx.List([make(0) for _ in range(num_classes)])

  def __call__(self, x: jax.Array, c: jax.Array) -> jax.Array:
    """Per-example class c, shape (N,); logits (N,) or, per patch, (N, h, w)."""
    if self.shared:
      return self.nets[0](x, c)
    outs = jnp.stack([net(x) for net in self.nets])
    index = c.reshape((1, -1) + (1,) * (outs.ndim - 2))
    return jnp.take_along_axis(outs, index, axis=0)[0]

  def grouped(self, xs: jax.Array, classes) -> jax.Array:
    """Logits (G, B[, h, w]) for grouped images; `classes` one per group (Python ints for
    per-class networks) or, with the shared network, one per image (G, B)."""
    g, b = xs.shape[:2]
    if not self.shared:
      return jnp.stack([self.nets[int(c)](xs[i]) for i, c in enumerate(classes)])
    cls = group_labels(classes, b)
    out = self(xs.reshape((g * b,) + xs.shape[2:]), cls)
    return out.reshape((g, b) + out.shape[1:])
