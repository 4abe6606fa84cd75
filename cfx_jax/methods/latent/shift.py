"""The shift predictor: its objective and training (the objective is described in
`cfx_jax.methods.latent`)."""

from __future__ import annotations

import hashlib
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from cfx_jax.classifier import Classifier
from cfx_jax.models.vae import ShiftPredictor
from cfx_jax.methods.latent.fitting import train_network
from cfx_jax.methods.latent.generator import LatentGenerator, build_shift


# Probabilities of every attribute, the outcome last --------------------------------------


def attribute_logits(gen: LatentGenerator, classifier: Classifier, params, images):
  """(N, K + 1) logits: the attribute predictor's, then the classifier's log-odds of
  class 1 (the outcome)."""
  clf_logits = classifier.apply(params["classifier"], images)
  outcome = (clf_logits[:, 1] - clf_logits[:, 0])[:, None]
  if gen.predictor_def is None:
    return outcome
  attrs = nnx.merge(gen.predictor_def, params["predictor"])(images)
  return jnp.concatenate([attrs, outcome], axis=-1)


def decode_latent(gen: LatentGenerator, params, z):
  return gen.decode_fn(params["generator"], z)


def shift_size(dz, latent_shape, local: bool = False):
  """|dz|_2 per example; with `local` (a latent grid (h, w, c) only), the sum over grid
  positions of each position's |dz|_2, a group lasso: moving one position costs the same
  as before, spreading the same change over many costs more, so the edit stays where the
  evidence is."""
  if not local:
    return jnp.sqrt(jnp.sum(jnp.square(dz), axis=-1) + 1e-12)
  per_position = dz.reshape((dz.shape[0], -1, latent_shape[-1]))
  return jnp.sum(jnp.sqrt(jnp.sum(jnp.square(per_position), axis=-1) + 1e-12), axis=-1)


def shift_loss(shift: ShiftPredictor, gen: LatentGenerator, classifier: Classifier, frozen,
               images, key, cfg):
  """The shift-training objective on one batch (see the module docstring)."""
  k = gen.num_attributes
  n = images.shape[0]
  k_post, k_prior, k_which, k_entry, k_flip = jax.random.split(key, 5)
  z, z_prior = gen.shift_latents(frozen["generator"], images, k_post, k_prior)
  if z_prior is not None:
    use_prior = jax.random.bernoulli(k_which, float(cfg.prior_fraction), (n, 1))
    z = jnp.where(use_prior, z_prior, z)
  z = jax.lax.stop_gradient(z)

  before = jax.lax.stop_gradient(
      attribute_logits(gen, classifier, frozen, decode_latent(gen, frozen, z)))
  entry = jax.random.randint(k_entry, (n,), 0, k + 1)
  requested = jax.nn.one_hot(entry, k + 1)
  current = jnp.sum(requested * (before > 0), axis=-1)
  flip = jax.random.bernoulli(k_flip, float(cfg.flip_fraction), (n,))
  value = jnp.where(flip, 1.0 - current, current)
  sign = 2.0 * value - 1.0
  t = requested * sign[:, None]

  dz = shift(z, t)
  after = attribute_logits(gen, classifier, frozen, decode_latent(gen, frozen, z + dz))
  # BCE towards the requested value, with the logit shifted by `margin` against it: the
  # edit keeps pushing until the predictor is clearly convinced, not just past 0.5.
  own = jnp.sum(requested * after, axis=-1)
  change = jax.nn.softplus(float(cfg.margin) - sign * own)
  is_outcome = entry == k
  keep_weight = jnp.where(is_outcome, float(cfg.outcome_keep), float(cfg.keep))
  held = (1.0 - requested)[:, :k]
  # Hold the evidence for the other attributes, not just their decisions: a Huber loss on
  # the (clipped) logits, so that a faded lesion with the same decision still costs.
  c = float(cfg.keep_clip)
  keep = jnp.sum(held * optax.huber_loss(jnp.clip(after[:, :k], -c, c),
                                         jnp.clip(before[:, :k], -c, c)), axis=-1)
  norm = shift_size(dz, gen.latent_shape, bool(cfg.shift_local))
  loss = jnp.mean(change + keep_weight * keep + float(cfg.shift_norm) * norm)
  reached = jnp.sum(requested * ((after > 0) == (value[:, None] > 0.5)), axis=-1)
  kept = jnp.sum(held * ((after[:, :k] > 0) == (before[:, :k] > 0)), axis=-1)
  metrics = {"change": jnp.mean(change), "keep": jnp.mean(keep), "dz": jnp.mean(norm),
             "reached": jnp.mean(reached),
             "kept": jnp.mean(kept / jnp.maximum(jnp.sum(held, axis=-1), 1.0)) if k else 1.0,
             "reached_outcome": jnp.sum(reached * is_outcome) / jnp.maximum(
                 jnp.sum(is_outcome), 1.0)}
  return loss, metrics


def fingerprint_hash(classifier: Classifier) -> str:
  return hashlib.sha1(json.dumps(classifier.fingerprint()).encode()).hexdigest()[:10]



def train_shift(gen: LatentGenerator, classifier: Classifier, images: np.ndarray, cfg,
                workdir: str | None = None):
  """Fit the shift predictor for this classifier; returns (graphdef, params, metrics).

  Checkpoints are kept per classifier, generator and settings
  (`<workdir>/shift_<hash>_checkpoints`, the hash of the classifier's fingerprint, the
  generator's architecture and the shift settings), so explainers of several classifiers
  can share a workdir and its generator.
  """
  graphdef, params = nnx.split(build_shift(gen.latent_shape, gen.num_attributes + 1,
                                            cfg.shift_hidden, int(cfg.seed) + 2))
  frozen = {**gen.params(), "classifier": classifier.params}

  def loss_fn(p, fr, batch, key, step):
    del step
    return shift_loss(nnx.merge(graphdef, p), gen, classifier, fr, batch["image"], key, cfg)

  meta = {"architecture": gen.architecture, "attribute_names": list(gen.attribute_names),
          "classifier": fingerprint_hash(classifier), "hidden": list(cfg.shift_hidden),
          "weights": [float(cfg[k]) for k in ("shift_norm", "margin", "keep", "keep_clip",
                                               "outcome_keep", "flip_fraction",
                                               "prior_fraction")],
          "shift_local": bool(cfg.shift_local),
          "learning_rate": float(cfg.learning_rate), "seed": int(cfg.seed),
          "batch_size": int(cfg.batch_size)}
  run = hashlib.sha1(json.dumps(meta, sort_keys=True).encode()).hexdigest()[:10]
  return (graphdef,) + train_network(
      f"shift_{run}", loss_fn, params, frozen, {"image": images}, cfg,
      steps=int(cfg.shift_steps), seed=int(cfg.seed) + 2, workdir=workdir, meta=meta,
      shown=("loss", "reached", "kept", "dz"))
