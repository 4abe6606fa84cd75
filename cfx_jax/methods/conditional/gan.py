"""One compiled train step for every generative explainer.

The step updates the discriminator(s) (real/fake BCE + gradient penalty), then the
generator(s) against the updated discriminator, with every loss term of the method
computed in the same XLA program. State is a pytree of NNX states and optax states,
donated to the step; the batch is sharded over the mesh's `data` axis.
A step whose losses are not finite leaves the state unchanged and records its index in
`nonfinite_step`, so the last good state is never overwritten.
"""

from __future__ import annotations


import jax
import jax.numpy as jnp
import optax
from flax import nnx

from cfx_jax.data import augment
from cfx_jax.engine.state import (GanModels, GanState, commit_if_finite, init_gan,
                                  optimizer)
from cfx_jax.methods.common import other_class
from cfx_jax.methods.conditional.recipe import GeneratorRecipe, ModelSpec, flatten_groups
from cfx_jax.methods.conditional import prior


def init(method: GeneratorRecipe, spec: ModelSpec, *, seed: int, lr: float, b1: float,
         disc_lr_scale: float = 1.0):
  """Build the networks once and split them; returns (models, state)."""
  gen, disc = method.build(spec, nnx.Rngs(seed))
  return init_gan(gen, disc, optimizer(lr, b1), optimizer(disc_lr_scale * lr, b1), seed)


def directions(num_classes: int, key: jax.Array, runner_ups: jax.Array | None = None,
               runner_up_share: float = 0.0):
  """Sources, targets and shift of one step (see recipe.py).

  With more than two classes and `runner_up_share` > 0 every image gets its own target:
  that share of them its runner-up class `runner_ups` (K, B) (the class `explain` aims
  at by default), the rest a random other class. A single shift per step spreads the
  training over all K(K-1) directions; most images are only ever explained toward one.
  """
  sources = tuple(range(num_classes))
  if num_classes == 2:
    return sources, (1, 0), 1
  if runner_up_share <= 0:
    shift = jax.random.randint(key, (), 1, num_classes)
    return sources, (jnp.arange(num_classes) + shift) % num_classes, shift
  k_shift, k_pick = jax.random.split(key)
  shape = runner_ups.shape
  random = (jnp.arange(num_classes)[:, None]
            + jax.random.randint(k_shift, shape, 1, num_classes)) % num_classes
  targets = jnp.where(jax.random.uniform(k_pick, shape) < runner_up_share, runner_ups, random)
  return sources, targets.astype(jnp.int32), None


class Jittered:
  """A discriminator that judges images after a random photometric jitter.

  Every call draws fresh jitter, so real and generated images are jittered alike in
  distribution but independently: what survives a change of colour decides.
  """

  def __init__(self, disc, key: jax.Array, strength: float):
    self.disc, self.key, self.strength, self.calls = disc, key, strength, 0

  def grouped(self, xs, classes):
    self.calls += 1
    key = jax.random.fold_in(self.key, self.calls)
    return self.disc.grouped(augment.jitter(key, xs, self.strength), classes)


def partial_edit(key: jax.Array, start: jax.Array, edited: jax.Array,
                 share: float) -> jax.Array:
  """`start + k * (edited - start)` with k uniform in [1 - share, 1], one k per image.

  Asking the classifier to flip even when only part of the edit is applied rules out
  edits that stop just past its decision boundary: a lesion faded until the classifier
  no longer sees it, but still visible as a ghost ring, passes at k = 1 and fails at
  k < 1. A drawn lesion must likewise be strong enough to survive being weakened.
  """
  k = jax.random.uniform(key, (start.shape[0],) + (1,) * (start.ndim - 1),
                         minval=1.0 - share, maxval=1.0)
  return start + k * (edited - start)


def make_train_step(method: GeneratorRecipe, models: GanModels, classifier_apply,
                    weights: dict, *,
                    disc_steps: int = 1, disc_jitter: float = 0.0, flip_jitter: float = 0.0,
                    runner_up_share: float = 0.0, prior_graphdef=None):
  """Returns the pure step `(state, classifier_params, images[, traced]) -> (state,
  metrics)`.

  `images` is (K, B, H, W, C), grouped by the classifier's prediction. `disc_steps`
  discriminator updates (each with its own directions) precede the generator update;
  `disc_jitter` and `flip_jitter` are the strengths of the photometric jitter the
  discriminator and the classifier see (0: none); `runner_up_share` see `directions`.
  `weights` override the method's defaults for the step's number of classes; the weight
  `flip_partial` (0: off) is the share of the edit that the flip may leave out
  (`partial_edit`). With `prior_graphdef` (the class prior's autoencoder, `prior.py`)
  the second argument is `(classifier_params, prior_params)` and the counterfactuals
  pay the weight `prior` times their reconstruction error under their target class.
  `traced`, a dict of weights as arrays, overrides `weights` inside the program: one
  compiled step serves every member of a population (`population.py`) that differs only
  in these weights. A traced `flip_partial` applies the partial edit at any value (at 0
  it is the whole edit).
  """
  if disc_steps < 1:
    raise ValueError(f"disc_steps must be >= 1, got {disc_steps}")
  if not 0.0 <= weights.get("flip_partial", 0.0) < 1.0:
    raise ValueError(f"flip_partial must be in [0, 1), got {weights['flip_partial']}")
  if weights.get("prior", 0.0) > 0 and prior_graphdef is None:
    raise ValueError("weights.prior > 0 needs the class prior's autoencoders "
                     "(prior_graphdef; methods/conditional/prior.py)")

  def judge(disc, key):
    return Jittered(disc, key, disc_jitter) if disc_jitter > 0 else disc

  def step(state: GanState, frozen, images, traced=None):
    clf_params, prior_params = frozen if prior_graphdef is not None else (frozen, None)
    num_classes = images.shape[0]
    w = method.weights(num_classes, {**weights, **(traced or {})})
    partial = "flip_partial" in (traced or {}) or weights.get("flip_partial", 0.0) > 0
    key = jax.random.fold_in(jax.random.wrap_key_data(state.key), state.step)
    k_dir, k_gp, k_dj, k_gj, k_fj, k_fp = jax.random.split(key, 6)
    runner_ups = None
    if num_classes > 2 and runner_up_share > 0:
      logits = classifier_apply(clf_params, flatten_groups(images)).astype(jnp.float32)
      runner_ups = other_class(logits).reshape(images.shape[:2])
    draw = lambda k: directions(num_classes, k, runner_ups, runner_up_share)
    sources, targets, shift = draw(k_dir)

    def f(x, start=None):
      """Classifier logits; with `start`, the images the edit began from (for the flip)."""
      if start is not None and partial:
        x = partial_edit(k_fp, start, x, w["flip_partial"])
      if flip_jitter > 0:
        x = augment.jitter(k_fj, x, flip_jitter)
      return classifier_apply(clf_params, x).astype(jnp.float32)
    gen = nnx.merge(models.gen_def, state.gen)
    class_prior = None if prior_graphdef is None else (
        lambda cf, classes: prior.reconstruction_error(prior_graphdef, prior_params, cf,
                                                       classes))

    disc_params, disc_opt = state.disc, state.disc_opt
    for i in range(disc_steps):
      k_i = jax.random.fold_in(k_gp, i)
      src_i, tgt_i, shift_i = ((sources, targets, shift) if i == disc_steps - 1 else
                               draw(jax.random.fold_in(k_dir, i + 1)))

      def d_loss(params):
        disc = judge(nnx.merge(models.disc_def, params), jax.random.fold_in(k_dj, i))
        return method.discriminator_loss(gen, disc, images, src_i, tgt_i, shift_i, k_i, w)

      (_, d_metrics), d_grads = jax.value_and_grad(d_loss, has_aux=True)(disc_params)
      d_updates, disc_opt = models.disc_tx.update(d_grads, disc_opt, disc_params)
      disc_params = optax.apply_updates(disc_params, d_updates)

    def g_loss(gen_params):
      g = nnx.merge(models.gen_def, gen_params)
      d = judge(nnx.merge(models.disc_def, disc_params), k_gj)
      return method.generator_loss(g, d, f, images, sources, targets, w, prior=class_prior)

    (_, g_metrics), g_grads = jax.value_and_grad(g_loss, has_aux=True)(state.gen)
    g_updates, gen_opt = models.gen_tx.update(g_grads, state.gen_opt, state.gen)
    gen_params = optax.apply_updates(state.gen, g_updates)

    metrics = {**d_metrics, **g_metrics}
    finite = jnp.isfinite(metrics["d_loss"]) & jnp.isfinite(metrics["g_loss"])
    return commit_if_finite(state, finite, gen=gen_params, disc=disc_params, gen_opt=gen_opt,
                            disc_opt=disc_opt), metrics

  return step
