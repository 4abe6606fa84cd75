"""CyCE and SyCE: cycle- and symmetry-consistent conditional-generator explainers.

Loss weights follow the papers' published code. `l1` is the direct proximity term
that makes the residual generator's maps sparse; set it to 0 for the paper's exact form.

`cycle_grad` is the share of the cycle and symmetric losses' gradient that reaches the
first translation (1 in the papers). Through it, "map back to the start" rewards a first
translation that keeps the evidence recoverable: a tint that the classifier misreads
but the second pass can undo, instead of a removal that loses the lesion. With 0 the
second pass still learns to map back, and the first is judged only by the flip,
realism and proximity terms.

`fill_l1` and `fill_l0` are the proximity weights of the generators in
`model.fill_only`, in place of `l1` and `l0`. Such a generator cannot tint, so the L1
cost of a change only holds its mask part-open over the evidence; charging it for where
it edits (l0) instead lets it replace the evidence completely, while the generator that
draws keeps the L1 that stops it from painting in many places.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from cfx_jax.methods import losses
from cfx_jax.methods.conditional.recipe import (GeneratorRecipe, ModelSpec, flatten_groups,
                                                weighted_total)
from cfx_jax.models import Generator
from cfx_jax.models.generator import group_labels


def proximity(xa, xs, sources, fill_only, cap: float) -> dict:
  """The L1 and edited-fraction terms of the grouped edit xs -> xa (G, B, H, W, C): over
  every group, or, with generators that only in-fill, those groups apart (`fill_l1`,
  `fill_l0`), each a sum of group means over G so the four add up to the two."""
  if not fill_only:
    return {"l1": losses.l1(xa, xs, cap), "l0": losses.edited_fraction(xa, xs)}
  g = len(sources)
  fills = jnp.asarray([int(s) in fill_only for s in sources], jnp.float32)
  l1 = jnp.stack([losses.l1(xa[i], xs[i], cap) for i in range(g)])
  l0 = jnp.stack([losses.edited_fraction(xa[i], xs[i]) for i in range(g)])
  return {"l1": jnp.sum(l1 * (1 - fills)) / g, "l0": jnp.sum(l0 * (1 - fills)) / g,
          "fill_l1": jnp.sum(l1 * fills) / g, "fill_l0": jnp.sum(l0 * fills) / g}


class CycleRecipe(GeneratorRecipe):
  """CyCE; `symmetric=True` gives SyCE."""

  def __init__(self, symmetric: bool):
    self.symmetric = symmetric
    self.name = "syce" if symmetric else "cyce"
    self.paper_map_reference = "stable" if symmetric else "input"
    self.default_weights = dict(
        flip=0.2, adv=0.25, cycle=2.0 if symmetric else 10.0, cycle_cls=0.005,
        sym=10.0 if symmetric else 0.0, sym_cls=0.01 if symmetric else 0.0,
        l1=1.0, l1_cap=0.0, l0=0.0, tv=0.0, gp=1.0, cycle_grad=1.0, flip_margin=0.0,
        flip_partial=0.0, prior=0.0, fill_l1=1.0, fill_l0=0.0)
    # With more than two classes the symmetric term asks G(., s -> t) to undo itself on
    # an image that starts as the input, and the conditional generator stays the identity
    # (ten-class Fashion-MNIST: mean change 7e-5, flip 0). Without it, a flip weight of 1
    # and a margin of 3 took SyCE from flip 0.59 to 0.80 at 300 steps, and to 0.965
    # (oracle 0.867) at 600 (docs/fashion_mnist.md, "Ten classes").
    self.multiclass_weights = (dict(sym=0.0, sym_cls=0.0, flip=1.0, flip_margin=3.0)
                               if symmetric else {})

  def trains_stable(self, weights: dict[str, float]) -> bool:
    """SyCE's stable image G(G(x)) is trained only by its symmetric terms; CyCE's cycle
    reconstruction by the cycle terms, always on."""
    return not self.symmetric or bool(weights["sym"] or weights["sym_cls"])

  def default_map_reference(self, residual: bool) -> str:
    """|x - G(x)| for the residual generator, whatever the paper's map.

    A residual generator edits sparsely, so applying it twice cannot restore evidence it
    removed: the SyCE map |G(G(x)) - G(x)| fades exactly where the evidence was
    (lesion set, 800 steps: pixel AUROC 0.87 for that map against 0.99 for |x - G(x)|).
    """
    return "input" if residual else self.paper_map_reference

  def build(self, spec: ModelSpec, rngs: nnx.Rngs):
    gen = Generator(spec.channels, spec.num_classes, shared=spec.shared,
                    features=spec.gen_features, residual=spec.residual,
                    mask=spec.mask, infill=spec.infill, hard_mask=spec.hard_mask,
                    fill_only=spec.fill_only, mask_grow=spec.mask_grow,
                    dtype=spec.dtype, rngs=rngs)
    return gen, self.discriminator(spec, rngs)

  def counterfactuals(self, gen, xs, sources, targets):
    return gen.grouped(xs, sources, targets)

  def generator_loss(self, gen, disc, f, xs, sources, targets, w, prior=None):
    b = xs.shape[1]
    src, tgt = group_labels(sources, b), group_labels(targets, b)
    xa = gen.grouped(xs, sources, targets)
    g = w["cycle_grad"]
    xa_back = g * xa + (1.0 - g) * jax.lax.stop_gradient(xa)  # input of the second pass
    cycled = gen.grouped(xa_back, targets, sources)
    terms = {
        "flip": losses.flip_loss(f(flatten_groups(xa), start=flatten_groups(xs)), tgt,
                                 w.get("flip_margin", 0.0)),
        "adv": losses.bce_logits(disc.grouped(xa, targets), real=True),
        "cycle": losses.mse_mae(xs, cycled),
        "cycle_cls": losses.cross_entropy(f(flatten_groups(cycled)), src),
        **proximity(xa, xs, sources, gen.fill_only, w.get("l1_cap", 0.0)),
        "tv": losses.edit_variation(xa, xs),
    }
    if self.symmetric:
      twice = gen.grouped(xa_back, sources, targets)
      terms["sym"] = losses.mse_mae(xs, twice)
      terms["sym_cls"] = losses.cross_entropy(f(flatten_groups(twice)), src)
    if prior is not None:
      terms["prior"] = prior(flatten_groups(xa), tgt)
    return weighted_total(terms, w)

  def explain(self, gen, x, predicted, target):
    xa = gen(x, predicted, target)
    if self.symmetric:
      return gen(xa, predicted, target), xa   # x_st = G_y(G_y(x))
    return gen(xa, target, predicted), xa      # the cycle reconstruction

