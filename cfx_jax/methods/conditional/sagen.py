"""Stable/adversarial generator (ICPR 2020): one U-Net, two heads, map = |stable - adv|.

The stable head must keep the classifier's decision and stay close to the input; the
adversarial head must reach the target class, look real to the class-conditional
discriminator and change as little as possible. Both heads share every feature, so
their difference isolates what the classifier needs to change its mind.
"""

from __future__ import annotations

from flax import nnx

from cfx_jax.methods import losses
from cfx_jax.methods.conditional.recipe import (GeneratorRecipe, ModelSpec, flatten_groups,
                                                weighted_total)
from cfx_jax.models import TwoHeadGenerator
from cfx_jax.models.generator import group_labels


class StableAdversarialRecipe(GeneratorRecipe):
  name = "sagen"
  paper_map_reference = "stable"
  default_weights = dict(flip=0.2, keep=0.2, adv=0.25, stable_prox=10.0, l1=1.0,
                         l1_cap=0.0, l0=0.0, tv=0.0, gp=1.0, flip_partial=0.0,
                         prior=0.0)

  def build(self, spec: ModelSpec, rngs: nnx.Rngs):
    if spec.fill_only:
      raise ValueError("fill_only needs one generator per source class (SyCE, CyCE); "
                       "SAGen's generator is conditioned on the target: set "
                       "model.fill_only=()")
    gen = TwoHeadGenerator(spec.channels, spec.num_classes, features=spec.gen_features,
                           residual=spec.residual, mask=spec.mask, infill=spec.infill,
                           hard_mask=spec.hard_mask, mask_grow=spec.mask_grow,
                           dtype=spec.dtype, rngs=rngs)
    return gen, self.discriminator(spec, rngs)

  def counterfactuals(self, gen, xs, sources, targets):
    return gen.grouped(xs, targets)[1]

  def generator_loss(self, gen, disc, f, xs, sources, targets, w, prior=None):
    b = xs.shape[1]
    src, tgt = group_labels(sources, b), group_labels(targets, b)
    stable, adv = gen.grouped(xs, targets)
    terms = {
        "flip": losses.cross_entropy(f(flatten_groups(adv), start=flatten_groups(xs)), tgt),
        "keep": losses.cross_entropy(f(flatten_groups(stable)), src),
        "adv": losses.bce_logits(disc.grouped(adv, targets), real=True),
        "stable_prox": losses.mse_mae(stable, xs),
        "l1": losses.l1(adv, xs, w.get("l1_cap", 0.0)),
        "l0": losses.edited_fraction(adv, xs),
        "tv": losses.edit_variation(adv, xs),
    }
    if prior is not None:
      terms["prior"] = prior(flatten_groups(adv), tgt)
    return weighted_total(terms, w)

  def explain(self, gen, x, predicted, target):
    return gen(x, target)
