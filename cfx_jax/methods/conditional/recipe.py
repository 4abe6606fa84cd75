"""The recipe of a conditional-generator method: what SyCE, CyCE and SAGen each give the
shared GAN train step (`gan.py`), their networks, losses and explain program.

Images reach a method grouped by the classifier's prediction: `xs` has shape
(K, B, H, W, C) and group k holds images predicted as class k. By default each step asks
every group to move to one other class: `targets[k] = (k + shift) % K` with a random
shift (always 1 for two classes), so group k's counterfactuals and the real images of
group `targets[k]` are the real/fake pair each class-conditional discriminator sees.
With more than two classes the targets may instead be one per image, (K, B) with
`shift` None (gan.directions). `sources` and `targets` are Python tuples when K == 2 (so
per-class networks are selected statically) and int arrays otherwise.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import nnx

from cfx_jax.methods import losses
from cfx_jax.models import Discriminator

# The classifier as the train step queries it: `f(images, start=None) -> logits`. The flip
# term passes `start`, the images its edit began from (gan.partial_edit).
Logits = Callable[..., jax.Array]


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """Static facts every method needs to build its networks."""
  image_size: int
  channels: int
  num_classes: int
  gen_features: tuple[int, ...] = (16, 32, 64)
  disc_features: tuple[int, ...] = (32, 64, 96)
  residual: bool = True
  shared: bool | None = None
  dtype: Any = None
  mask: bool = False          # composite a redrawn fill through a soft mask (models/unet.py)
  infill: bool = False        # ... or the image's own surroundings (models/unet.py)
  hard_mask: bool = False     # either mask binary forward, soft gradient (models/unet.py)
  fill_only: tuple[int, ...] = ()  # source classes whose generator only in-fills
  mask_grow: int = 0          # pixels every mask is widened by (models/unet.py)
  disc_kind: str = "global"   # "global" (one logit per image) or "patch" (PatchGAN)


class GeneratorRecipe:
  """Base class of the family's recipes: the discriminator side is common to all."""

  name: str = ""
  default_weights: dict[str, float] = {}
  # Defaults that differ when there are more than two classes.
  multiclass_weights: dict[str, float] = {}
  # The map of the method's paper: |stable - cf| ("stable") or |input - cf| ("input").
  paper_map_reference: str = "input"

  def default_map_reference(self, residual: bool) -> str:
    return self.paper_map_reference

  def weights(self, num_classes: int, overrides: dict) -> dict[str, float]:
    """Every loss weight: the defaults for `num_classes`, then `overrides`."""
    multiclass = self.multiclass_weights if num_classes > 2 else {}
    return {**self.default_weights, **multiclass, **overrides}

  def trains_stable(self, weights: dict[str, float]) -> bool:
    """Whether a loss with these weights shapes the stable image; where none does, the
    explainer returns no stable image rather than an untrained one."""
    return True

  def build(self, spec: ModelSpec, rngs: nnx.Rngs) -> tuple[nnx.Module, nnx.Module]:
    raise NotImplementedError

  def discriminator(self, spec: ModelSpec, rngs: nnx.Rngs) -> nnx.Module:
    return Discriminator(spec.channels, spec.image_size, spec.num_classes,
                         shared=spec.shared, features=spec.disc_features,
                         kind=spec.disc_kind, dtype=spec.dtype, rngs=rngs)

  def counterfactuals(self, gen, xs, sources, targets) -> jax.Array:
    """Class-flipped images for grouped inputs, (K, B, H, W, C)."""
    raise NotImplementedError

  def generator_loss(self, gen, disc, f: Logits, xs, sources, targets, w,
                     prior=None) -> tuple[jax.Array, dict]:
    """The weighted generator loss and its metrics. `prior`, if given, maps the flat
    counterfactuals and their target classes to the class prior's error (term `prior`)."""
    raise NotImplementedError

  def explain(self, gen, x, predicted, target) -> tuple[jax.Array, jax.Array]:
    """Per-example (stable, counterfactual) images for a flat batch."""
    raise NotImplementedError

  def discriminator_loss(self, gen, disc, xs, sources, targets, shift, key, w):
    """Real images of class c against counterfactuals aimed at c, plus gradient penalty."""
    fakes = jax.lax.stop_gradient(self.counterfactuals(gen, xs, sources, targets))
    real_loss = losses.bce_logits(disc.grouped(xs, sources), real=True)
    fake_loss = losses.bce_logits(disc.grouped(fakes, targets), real=False)
    if shift is None:  # one target per image: pair each fake with a real image of its target
      reals = xs[targets, jnp.arange(xs.shape[1])[None, :]]
      gp = losses.gradient_penalty(lambda z: disc.grouped(z, targets), reals, fakes, key)
    else:  # group k's fakes aim at class (k + shift) % K; rolling lines them up with the reals
      fakes_by_class = jnp.roll(fakes, shift, axis=0)
      gp = losses.gradient_penalty(lambda z: disc.grouped(z, sources), xs, fakes_by_class, key)
    loss = real_loss + fake_loss + w["gp"] * gp
    return loss, {"d_real": real_loss, "d_fake": fake_loss, "d_gp": gp, "d_loss": loss}


def flatten_groups(xs: jax.Array) -> jax.Array:
  """(K, B, ...) grouped images -> (K * B, ...) for the classifier."""
  return xs.reshape((-1,) + xs.shape[2:])


def weighted_total(terms: dict, w: dict) -> tuple[jax.Array, dict]:
  """The generator loss and its metrics (`g_<term>` unweighted, `g_loss` weighted)."""
  loss = sum(w[name] * value for name, value in terms.items())
  return loss, {**{f"g_{n}": v for n, v in terms.items()}, "g_loss": loss}
