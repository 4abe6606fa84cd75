"""Class-conditional generator G(x, source, target).

Binary problems use the paper's form: one U-Net per source class (G0 turns class-0
images into class 1, G1 the reverse). With more classes, or `shared=True`, one U-Net is
conditioned on the one-hot (source, target) pair — the pair, not the target alone,
because the symmetric loss asks the same generator to map its own output back.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from cfx_jax.models.unet import UNet


def group_labels(classes, per_group: int) -> jax.Array:
  """Per-image labels (G * B,) from one class per group (G,) or per image (G, B)."""
  a = jnp.asarray(classes, jnp.int32)
  return a.reshape(-1) if a.ndim == 2 else jnp.repeat(a, per_group)


class Generator(nnx.Module):

  def __init__(self, channels: int, num_classes: int, *, shared: bool | None = None,
               features: tuple[int, ...] = (16, 32, 64), residual: bool = True,
               mask: bool = False, infill: bool = False, hard_mask: bool = False,
               fill_only: tuple[int, ...] = (), mask_grow: int = 0, dtype=None,
               rngs: nnx.Rngs):
    """`fill_only`: source classes whose network only in-fills (models/unet.py, `draws`),
    whatever form `mask`, `infill` and `hard_mask` give the others; `mask_grow` applies
    to every network with a mask."""
    self.num_classes = num_classes
    self.fill_only = tuple(int(c) for c in fill_only)
    self.shared = (num_classes > 2) if shared is None else bool(shared)
    if not self.shared and num_classes != 2:
      raise ValueError("one network per source class is the binary form; "
                       f"use shared=True for {num_classes} classes")
    if fill_only and (self.shared or not set(fill_only) <= set(range(num_classes))):
      raise ValueError(f"fill_only {tuple(fill_only)} needs one network per source class "
                       f"and classes in 0..{num_classes - 1}")
    count, cond_dim = (1, 2 * num_classes) if self.shared else (num_classes, 0)
    self.nets = nnx.List()
    for source in range(count):
      fills = source in fill_only
      self.nets.append(UNet(
          channels, cond_dim=cond_dim, features=features, residual=residual,
          mask=mask and not fills, infill=infill or fills,
          hard_mask=hard_mask and (mask or infill or fills), draws=not fills,
          mask_grow=mask_grow if (mask or infill or fills) else 0, dtype=dtype, rngs=rngs))

  def __call__(self, x: jax.Array, source: jax.Array, target: jax.Array) -> jax.Array:
    """Per-example source/target classes, shape (N,)."""
    if self.shared:
      k = self.num_classes
      cond = jnp.concatenate([jax.nn.one_hot(source, k), jax.nn.one_hot(target, k)], -1)
      return self.nets[0](x, cond)
    outs = jnp.stack([net(x) for net in self.nets])
    return jnp.take_along_axis(outs, source[None, :, None, None, None], axis=0)[0]

  def grouped(self, xs: jax.Array, sources, targets) -> jax.Array:
    """Translate images grouped by class: xs (G, B, H, W, C); sources and targets are one
    class per group (G,) or one per image (G, B).

    With per-class networks `sources` must be Python ints, so each group runs only its
    own network; the shared network flattens the groups into one batch.
    """
    g, b = xs.shape[:2]
    if not self.shared:
      return jnp.stack([self.nets[int(s)](xs[i]) for i, s in enumerate(sources)])
    src, tgt = group_labels(sources, b), group_labels(targets, b)
    return self(xs.reshape((g * b,) + xs.shape[2:]), src, tgt).reshape(xs.shape)


class TwoHeadGenerator(nnx.Module):
  """One U-Net conditioned on the target class with a stable and an adversarial head."""

  def __init__(self, channels: int, num_classes: int, *,
               features: tuple[int, ...] = (16, 32, 64), residual: bool = True,
               mask: bool = False, infill: bool = False, hard_mask: bool = False,
               mask_grow: int = 0, dtype=None, rngs: nnx.Rngs):
    self.num_classes = num_classes
    self.net = UNet(channels, cond_dim=num_classes, features=features, heads=2,
                    residual=residual, mask=mask, infill=infill, hard_mask=hard_mask,
                    mask_grow=mask_grow, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array, target: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(stable, adversarial) images for per-example targets (N,)."""
    return self.net(x, jax.nn.one_hot(target, self.num_classes))

  def grouped(self, xs: jax.Array, targets) -> tuple[jax.Array, jax.Array]:
    g, b = xs.shape[:2]
    tgt = group_labels(targets, b)
    stable, adv = self(xs.reshape((g * b,) + xs.shape[2:]), tgt)
    return stable.reshape(xs.shape), adv.reshape(xs.shape)
