"""Train CAE (class association embedding, arXiv 2406.07961): one compiled, sharded step.

Every batch holds the same number of images of each class (the labels given: for an
explainer, the classifier's decisions). Image i of class k is paired with the image at
the same position of class (k + shift) mod K (shift = 1 for two classes, random per step
otherwise), its *donor*, and gets the donor's class code: x_sw = dec(s_donor, c_x).
Generator terms (encoder and decoder), with the design notes' weights:

  recon  10   |dec(s_x, c_x) - x|_1                  the codes must describe the image
  code    1   |s(x_sw) - s_donor|_1 + |c(x_sw) - c_x|_1   the swap is read back as made
  cycle   1   |dec(s_x, c(x_sw)) - x|_1              swapping back restores the image
  cls    10   CE(class head(x_sw), class of donor)   the class code decides the class
  adv     1   -log sigmoid(real/fake head(x_sw))     non-saturating realism

Discriminator: BCE real/fake on the batch against the swapped images (the same forward
pass's x_sw, gradient stopped) plus 2 x CE of the class head on the real images.
The code targets (s_donor, c_x) are held fixed (stop-gradient): only the re-encoding is
pulled towards them, so the term cannot be lowered by shrinking every code.

Both updates are computed from the same forward pass with the parameters the step
started from (simultaneous gradient steps), so the networks run once per step; the
state is `GanState`, donated to the step, replicated on the mesh, with the batch
sharded along the per-class axis. Checkpoints and resume follow `inpainter_train`.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from cfx_jax import data as data_lib
from cfx_jax import validation
from cfx_jax.batching import map_in_chunks
from cfx_jax.models.cae import build_networks
from cfx_jax.engine.state import (GanModels, GanState, commit_if_finite, init_gan,
                                  optimizer)
from cfx_jax.engine import mesh as mesh_lib
from cfx_jax.engine.loop import LoopConfig, train_loop

WEIGHT_NAMES = ("recon", "code", "cycle", "cls", "adv", "disc_cls")
MODEL_INTS = ("style_dim", "content_channels", "mlp_width")
MODEL_WIDTHS = ("features", "disc_features")


def cae_train_config() -> ml_collections.ConfigDict:
  """Small networks and a schedule that trains 32 px images in minutes on a CPU."""
  c = ml_collections.ConfigDict()
  c.steps = 1500
  c.batch_size = 32          # global, all classes: a multiple of the number of classes
  c.learning_rate = 5e-4     # Adam, constant (a resumed run continues the same schedule)
  c.b1 = 0.5
  c.b2 = 0.999
  c.seed = 0
  # The design notes' weights; disc_cls is the discriminator's class-head weight.
  c.weights = ml_collections.ConfigDict(dict(
      recon=10.0, code=1.0, cycle=1.0, cls=10.0, adv=1.0, disc_cls=2.0))
  c.model = ml_collections.ConfigDict(dict(
      style_dim=8,                 # size of the class-associated code s
      features=(16, 32, 64),       # encoder trunk (decoder in reverse): c at side / 4
      content_channels=32,         # channels of the individual code c
      mlp_width=64,                # class-code MLPs (encoder head, decoder modulation)
      skip=8,                      # channels of the full-resolution skip path (0: none,
                                   # the paper's decoder; models/cae.py)
      disc_features=(16, 32, 64)))
  c.num_devices = 0          # 0: every device
  c.log_every = 50
  c.checkpoint_every = 500
  c.keep_checkpoints = 3
  c.chunk_size = 256         # images per compiled call when encoding after training
  c.progress = True
  return c


def check_train_config(c) -> None:
  """Fail before building anything on settings training cannot use."""
  if int(c.steps) < 0:
    raise ValueError(f"steps must be non-negative, got {c.steps}")
  for name in ("batch_size", "log_every", "checkpoint_every", "keep_checkpoints",
               "chunk_size"):
    if int(c[name]) < 1:
      raise ValueError(f"{name} must be at least 1, got {c[name]}")
  if not c.learning_rate > 0:
    raise ValueError(f"learning_rate must be positive, got {c.learning_rate}")
  for name in ("b1", "b2"):
    if not 0 <= c[name] < 1:
      raise ValueError(f"{name} must lie in [0, 1), got {c[name]}")
  weights = dict(c.weights)
  unknown = sorted(set(weights) - set(WEIGHT_NAMES))
  missing = sorted(set(WEIGHT_NAMES) - set(weights))
  if unknown or missing:
    raise ValueError(f"CAE weights must be exactly {list(WEIGHT_NAMES)}; unknown {unknown}, "
                     f"missing {missing}")
  for name, value in weights.items():
    if not value >= 0:
      raise ValueError(f"weight {name} must be non-negative, got {value}")
  model = dict(c.model)
  expected = set(MODEL_INTS) | set(MODEL_WIDTHS) | {"skip"}
  if set(model) != expected:
    raise ValueError(f"CAE model settings must be exactly {sorted(expected)}, got "
                     f"{sorted(model)}")
  for name in MODEL_INTS:
    if int(model[name]) < 1:
      raise ValueError(f"model.{name} must be at least 1, got {model[name]}")
  if int(model["skip"]) < 0:
    raise ValueError(f"model.skip must be non-negative, got {model['skip']}")
  for name in MODEL_WIDTHS:
    widths = tuple(model[name])
    if not widths or any(int(f) < 1 for f in widths):
      raise ValueError(f"model.{name} must be a non-empty sequence of positive widths, "
                       f"got {widths}")


# Losses -------------------------------------------------------------------------------


def l1(a: jax.Array, b: jax.Array) -> jax.Array:
  return jnp.mean(jnp.abs(a - b))


def class_loss(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Mean softmax cross-entropy of (N, K) logits against (N,) integer labels."""
  return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))


def generator_adversarial(fake_logits: jax.Array) -> jax.Array:
  """Non-saturating generator term: mean -log sigmoid(D(fake)) = mean softplus(-D)."""
  return jnp.mean(jax.nn.softplus(-fake_logits))


def discriminator_adversarial(real_logits: jax.Array, fake_logits: jax.Array) -> jax.Array:
  """BCE of real (label 1) and fake (label 0) logits: softplus(-real) + softplus(fake)."""
  return jnp.mean(jax.nn.softplus(-real_logits)) + jnp.mean(jax.nn.softplus(fake_logits))


def code_loss(s_swapped, c_swapped, s_source, c_source) -> jax.Array:
  """|s(x_sw) - s_donor|_1 + |c(x_sw) - c_x|_1, the targets held fixed."""
  return (l1(s_swapped, jax.lax.stop_gradient(s_source))
          + l1(c_swapped, jax.lax.stop_gradient(c_source)))


def swap_partners(num_classes: int, per_class: int, shift) -> jax.Array:
  """Donor index of each image of a class-grouped batch flattened to (K * P,).

  Image p of class k takes its class code from image p of class (k + shift) mod K; with
  1 <= shift < K the donor's class always differs.
  """
  k = jnp.arange(num_classes * per_class) // per_class
  p = jnp.arange(num_classes * per_class) % per_class
  return ((k + shift) % num_classes) * per_class + p


def generator_terms(encode, decode, disc, x, labels, partner):
  """Unweighted generator terms and the swapped images.

  encode(x) -> (s, c); decode(s, c) -> images; disc(images) -> (real/fake (N,), class
  logits (N, K)); partner (N,) the donor of each image's class code.
  """
  s, c = encode(x)
  s_donor = s[partner]
  n = x.shape[0]
  both = decode(jnp.concatenate([s, s_donor]), jnp.concatenate([c, c]))
  rec, swapped = both[:n], both[n:]
  s_sw, c_sw = encode(swapped)
  back = decode(s, c_sw)
  real_fake, class_logits = disc(swapped)
  donor_labels = labels[partner]
  terms = {
      "recon": l1(rec, x),
      "code": code_loss(s_sw, c_sw, s_donor, c),
      "cycle": l1(back, x),
      "cls": class_loss(class_logits, donor_labels),
      "adv": generator_adversarial(real_fake),
      "swap_acc": jnp.mean(jnp.argmax(class_logits, -1) == donor_labels),
  }
  return terms, swapped


def discriminator_terms(disc, x, labels, fake):
  """Unweighted discriminator terms: real/fake BCE and the class head on real images."""
  real_logit, real_classes = disc(x)
  fake_logit, _ = disc(fake)
  return {"adv": discriminator_adversarial(real_logit, fake_logit),
          "cls": class_loss(real_classes, labels),
          "acc": jnp.mean(jnp.argmax(real_classes, -1) == labels)}


def generator_total(terms: dict, weights: dict) -> jax.Array:
  return sum(weights[k] * terms[k] for k in ("recon", "code", "cycle", "cls", "adv"))


def discriminator_total(terms: dict, weights: dict) -> jax.Array:
  return terms["adv"] + weights["disc_cls"] * terms["cls"]


# Train step ---------------------------------------------------------------------------


def init(image_shape, num_classes: int, config):
  """Build the networks once and split them; returns (GanModels, GanState)."""
  auto, disc = build_networks(image_shape, num_classes, config.model, nnx.Rngs(config.seed))
  tx = optimizer(config.learning_rate, config.b1, config.b2)
  return init_gan(auto, disc, tx, tx, config.seed)


def make_train_step(models: GanModels, weights: dict):
  """The pure step `(state, images (K, P, H, W, C)) -> (state, metrics)`, row k class k."""
  w = {k: float(v) for k, v in dict(weights).items()}

  def step(state: GanState, images):
    num_classes, per_class = images.shape[:2]
    x = images.reshape((num_classes * per_class,) + images.shape[2:])
    labels = jnp.repeat(jnp.arange(num_classes, dtype=jnp.int32), per_class)
    key = jax.random.fold_in(jax.random.wrap_key_data(state.key), state.step)
    shift = 1 if num_classes == 2 else jax.random.randint(key, (), 1, num_classes)
    partner = swap_partners(num_classes, per_class, shift)
    disc = nnx.merge(models.disc_def, state.disc)

    def g_loss(gen_params):
      auto = nnx.merge(models.gen_def, gen_params)
      terms, swapped = generator_terms(auto.encode, auto.decode, disc, x, labels, partner)
      return generator_total(terms, w), (terms, swapped)

    (g_total, (g_terms, swapped)), g_grads = jax.value_and_grad(g_loss, has_aux=True)(
        state.gen)
    fake = jax.lax.stop_gradient(swapped)

    def d_loss(disc_params):
      terms = discriminator_terms(nnx.merge(models.disc_def, disc_params), x, labels, fake)
      return discriminator_total(terms, w), terms

    (d_total, d_terms), d_grads = jax.value_and_grad(d_loss, has_aux=True)(state.disc)
    g_updates, gen_opt = models.gen_tx.update(g_grads, state.gen_opt, state.gen)
    d_updates, disc_opt = models.disc_tx.update(d_grads, state.disc_opt, state.disc)
    metrics = {**{f"g_{k}": v for k, v in g_terms.items()}, "g_loss": g_total,
               **{f"d_{k}": v for k, v in d_terms.items()}, "d_loss": d_total}
    return commit_if_finite(state, jnp.isfinite(g_total) & jnp.isfinite(d_total),
                            gen=optax.apply_updates(state.gen, g_updates),
                            disc=optax.apply_updates(state.disc, d_updates),
                            gen_opt=gen_opt, disc_opt=disc_opt), metrics

  return step


# Jitted steps by everything they close over, so that training the same networks again in
# one process (a resumed run, a sweep) reuses the compiled program.
_STEPS: dict = {}


def compiled_train_step(models: GanModels, config, mesh, images_sharding):
  """The jitted step: state replicated and donated, batch sharded along the class rows."""
  weights = tuple(sorted((k, float(v)) for k, v in dict(config.weights).items()))
  key = (models.gen_def, models.disc_def, float(config.learning_rate), float(config.b1),
         float(config.b2), weights, mesh)
  if key not in _STEPS:
    if len(_STEPS) >= 8:
      _STEPS.clear()
    rep = mesh_lib.replicated(mesh)
    _STEPS[key] = jax.jit(make_train_step(models, dict(weights)),
                          in_shardings=(rep, images_sharding), out_shardings=(rep, rep),
                          donate_argnums=0)
  return _STEPS[key]


# The trained model ----------------------------------------------------------------------


@functools.partial(jax.jit, static_argnums=0)
def _encode_program(graphdef, params, images):
  return nnx.merge(graphdef, params).encode(images)


@functools.partial(jax.jit, static_argnums=0)
def _reconstruct_program(graphdef, params, images):
  return nnx.merge(graphdef, params)(images)


@dataclasses.dataclass
class CaeModel:
  """A trained CAE autoencoder: the network's static half, its parameters, what it is for."""

  graphdef: Any
  params: Any
  image_shape: tuple[int, int, int]
  num_classes: int
  config: dict = dataclasses.field(default_factory=dict)
  history: list = dataclasses.field(default_factory=list)

  def __post_init__(self):
    self.image_shape = tuple(int(d) for d in self.image_shape)

  @property
  def network(self):
    return nnx.merge(self.graphdef, self.params)

  def encode(self, images, chunk_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """(s (N, style_dim), c (N, h, w, F)) of images in [-1, 1], in compiled chunks."""
    x = validation.check_images(images, self.image_shape)
    return map_in_chunks(lambda b: _encode_program(self.graphdef, self.params, b), [x],
                         chunk_size)

  def reconstruct(self, images, chunk_size: int = 256) -> np.ndarray:
    x = validation.check_images(images, self.image_shape)
    return map_in_chunks(lambda b: _reconstruct_program(self.graphdef, self.params, b), [x],
                         chunk_size)


# Loop ---------------------------------------------------------------------------------


def check_labels(labels, n: int, num_classes: int | None) -> tuple[np.ndarray, int]:
  """(labels as int32, number of classes); every class needs at least one image."""
  labels = np.asarray(labels)
  if labels.shape != (n,):
    raise ValueError(f"labels must have shape ({n},) to match the images, got {labels.shape}")
  if not np.issubdtype(labels.dtype, np.integer):
    raise TypeError(f"labels must be integer classes, got dtype {labels.dtype}")
  k = int(num_classes) if num_classes is not None else max(2, int(labels.max()) + 1)
  if k < 2:
    raise ValueError(f"CAE swaps class codes between classes: it needs at least 2, got {k}")
  if labels.min() < 0 or labels.max() >= k:
    raise ValueError(f"labels must lie in [0, {k}), got values in "
                     f"[{labels.min()}, {labels.max()}]")
  missing = np.flatnonzero(np.bincount(labels, minlength=k) == 0).tolist()
  if missing:
    raise ValueError(f"no image has label(s) {missing}: CAE learns each class's code from "
                     "images of that class, so every class needs some (for an explainer, "
                     "the classifier must predict every class on the training images)")
  return labels.astype(np.int32), k


def labels_digest(labels: np.ndarray) -> str:
  """Identifies the labelling in checkpoints (for an explainer: the classifier's decisions)."""
  return hashlib.sha256(np.ascontiguousarray(labels, np.int32).tobytes()).hexdigest()[:16]


def train_cae(images, labels, config: ml_collections.ConfigDict, workdir: str | None = None,
              *, num_classes: int | None = None) -> CaeModel:
  """Fit CAE to `images` (N, H, W, C) in [-1, 1] labelled `labels` (N,); resumes from `workdir`.

  Writes `<workdir>/cae_checkpoints` and `<workdir>/cae_train.jsonl`; a later call with
  the same work directory continues from the newest checkpoint (a finished run returns at
  once). `num_classes` defaults to max(label) + 1. Every process passes the same arrays.
  """
  check_train_config(config)
  images = validation.check_images(images, name="train images")
  labels, k = check_labels(labels, len(images), num_classes)
  image_shape = tuple(int(d) for d in images.shape[1:])
  steps, batch_size = int(config.steps), int(config.batch_size)
  per_class = batch_size // k
  if per_class < 1 or batch_size % k:
    raise ValueError(f"batch_size {batch_size} must be a positive multiple of the {k} classes")
  mesh = mesh_lib.make_mesh(config.num_devices)
  devices = mesh.devices.size
  if per_class % devices:
    raise ValueError(f"images per class per batch ({per_class}) must be divisible by the "
                     f"{devices} devices; change batch_size or num_devices")
  dataset = data_lib.grouped_batches(data_lib.ArraySource({"image": images}), labels, k,
                                     per_class, seed=int(config.seed))

  models, state = init(image_shape, k, config)
  layout = mesh_lib.describe(mesh, batch_size)
  meta = {"image_shape": list(image_shape), "num_classes": k,
          "labels": labels_digest(labels), "config": config.to_dict(), "layout": layout}
  images_sharding = mesh_lib.batch_sharding(mesh, 5, axis=1)
  state = jax.device_put(state, mesh_lib.replicated(mesh))
  step_fn = compiled_train_step(models, config, mesh, images_sharding)

  loop = LoopConfig.from_config("cae", config, steps, shown=("g_recon", "g_cls", "d_loss"))
  state, log = train_loop(
      state, step_fn, lambda i: data_lib.to_global(
          {"image": dataset[i]["image"]}, {"image": images_sharding})["image"],
      loop, mesh=mesh, workdir=workdir, meta=meta,
      compare=("image_shape", "num_classes", "labels"))
  return CaeModel(models.gen_def, mesh_lib.to_host(state.gen, mesh), image_shape, k,
                  config.to_dict(), log.history)
