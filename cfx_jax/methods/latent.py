"""Contrastive counterfactuals in a generative latent space, with causal scores.

After Alipour et al., "Explaining image classifiers using contrastive counterfactuals in
generative latent spaces" (arXiv 2206.05257). Three learned pieces:

  G             a generator with a latent space. The paper uses a frozen StyleGAN2; here
                a small conv VAE (`cfx_jax.models.vae`) trained on the explained images:
                it trains stably on CPU, and its encoder gives the latent code of a real
                image without a per-image GAN inversion.
  predictors    one sigmoid output per binary attribute (a small CNN trained on real,
                labelled images), plus the classifier itself as one more attribute, the
                last one, named "outcome" (its probability of class 1).
  shift         an MLP (z, t) -> dz, t in {-1, 0, +1}^(K+1) the requested changes, trained
                so that the predictors on G(z + dz) show them.

Shift training (one jitted step): latents z come from the prior and from encoded
training images; each example requests one change (an attribute or the outcome, chosen
uniformly; the requested value is the opposite of the current decision with probability
`flip_fraction`, else a no-op request the shift must learn to keep small). With l_j the
logits of the predictors on G(z + dz), l0_j on G(z) and s = +-1 the requested direction:

  softplus(margin - s * l_requested)            BCE towards the requested value; the
                                                margin makes the edit clear, not borderline
  + keep * sum_j huber(clip(l_j) - clip(l0_j))  j: the other attributes (not the outcome)
  + shift_norm * |dz|_2

The keep term compares (clipped) logits rather than decisions: a lesion that fades under
a brightness edit but is still just detected keeps its decision, yet it has changed, and
a classifier may stop seeing it. The keep term never holds the outcome: under an
intervention on an attribute the classifier's decision is the measured effect, so it
must be free to follow. When the outcome itself is requested (a contrastive
counterfactual), the attributes are held with the weight `outcome_keep` (default 0): the
counterfactual may change exactly what the classifier relies on, and the norm term keeps
the change small.

Causal scores (PN, PS, PNS of each attribute for the decision): `cfx_jax.methods.causal`.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from cfx_jax import data as data_lib
from cfx_jax import persistence, validation
from cfx_jax.batching import map_in_chunks
from cfx_jax.classifier import Classifier
from cfx_jax.explanation import Explanation
from cfx_jax.methods import optimised
from cfx_jax.models.vae import AttributePredictor, ConvVAE, ShiftPredictor, gaussian_kl
from cfx_jax.engine import mesh as mesh_lib
from cfx_jax.engine import state as state_lib
from cfx_jax.engine.loop import LoopConfig, train_loop

OUTCOME = "outcome"
GENERATOR_DIR = "generator"
GENERATOR_META = "generator.json"
EXPLAINER_META = "latent.json"


def latent_config(**overrides) -> ml_collections.ConfigDict:
  """CPU-sized defaults for 32 px images; overrides on top (unknown names raise)."""
  c = ml_collections.ConfigDict()
  c.latent_dim = 16
  c.vae_features = (16, 32, 64)
  c.vae_steps = 6000            # the lesion, a few pixels across, is encoded late in training
  c.beta = 0.5                  # KL weight; the reconstruction term is the summed squared error
  c.kl_warmup = 500             # steps over which the KL weight ramps up from 0
  c.predictor_features = (16, 32, 64)
  c.predictor_steps = 600
  c.shift_hidden = (128, 128)
  c.shift_steps = 1500
  c.batch_size = 32
  c.learning_rate = 1e-3        # Adam, cosine-decayed, for each of the three networks
  c.shift_norm = 0.05           # weight of |dz|_2
  c.margin = 2.0                # logit margin the requested change must clear
  c.keep = 1.0                  # weight of holding the unrequested attributes
  c.keep_clip = 8.0             # their logits are compared clipped to [-keep_clip, keep_clip]
  c.outcome_keep = 0.0          # the same weight when the outcome is the requested change
  c.flip_fraction = 0.75        # share of requests that ask for the opposite of the decision
  c.prior_fraction = 0.5        # share of shift-training latents drawn from the prior
  c.num_samples = 4096          # latent samples for the causal scores
  c.confidence = 0.95           # of the Wilson intervals
  c.num_devices = 1             # devices of the training mesh (0: all)
  c.log_every = 100
  c.checkpoint_every = 500
  c.progress = True
  c.chunk_size = 256            # images per compiled call in explain and the scores
  c.seed = 0
  c.warn_failures = True        # warn, listing indices, when a counterfactual misses its target
  return optimised.settings("latent", c, overrides, check_config)


def check_config(cfg) -> None:
  """Fail before anything trains on settings the method cannot use."""
  if int(cfg.kl_warmup) < 0:
    raise ValueError(f"kl_warmup must be non-negative, got {cfg.kl_warmup}")
  for name in ("latent_dim", "vae_steps", "predictor_steps", "shift_steps", "batch_size",
               "num_samples", "log_every", "checkpoint_every", "chunk_size"):
    if int(cfg[name]) < 1:
      raise ValueError(f"{name} must be at least 1, got {cfg[name]}")
  for name in ("vae_features", "predictor_features"):
    if not tuple(cfg[name]) or any(int(f) < 1 for f in cfg[name]):
      raise ValueError(f"{name} must be a non-empty sequence of positive widths, got "
                       f"{cfg[name]}")
  if any(int(f) < 1 for f in cfg.shift_hidden):
    raise ValueError(f"shift_hidden widths must be positive, got {cfg.shift_hidden}")
  for name in ("beta", "shift_norm", "margin", "keep", "keep_clip", "outcome_keep"):
    if not cfg[name] >= 0:
      raise ValueError(f"{name} must be non-negative, got {cfg[name]}")
  if not cfg.learning_rate > 0:
    raise ValueError(f"learning_rate must be positive, got {cfg.learning_rate}")
  for name in ("flip_fraction", "prior_fraction"):
    if not 0 <= cfg[name] <= 1:
      raise ValueError(f"{name} must lie in [0, 1], got {cfg[name]}")
  if not 0 < cfg.confidence < 1:
    raise ValueError(f"confidence must lie in (0, 1), got {cfg.confidence}")
  if int(cfg.num_devices) < 0:
    raise ValueError(f"num_devices must be non-negative (0: all), got {cfg.num_devices}")


def _config_from_json(config: dict) -> ml_collections.ConfigDict:
  return latent_config(**{k: tuple(v) if isinstance(v, list) else v for k, v in config.items()})


# Inputs ---------------------------------------------------------------------------------


def check_binary_classifier(classifier: Classifier) -> None:
  if classifier.num_classes != 2:
    raise ValueError(f"the latent explainer treats the classifier's decision as a binary "
                     f"attribute and needs a binary classifier; this one has "
                     f"{classifier.num_classes} classes")


def check_attributes(attributes, n: int, names=None) -> tuple[np.ndarray, tuple[str, ...]]:
  """(N, K) binary labels as int32 and K names (default attribute_0, ...)."""
  a = np.asarray(attributes)
  if a.dtype == object or not (np.issubdtype(a.dtype, np.number) or a.dtype == bool):
    raise TypeError(f"attributes must be a numeric or boolean array (N, K), got dtype {a.dtype}")
  if a.ndim != 2 or a.shape[0] != n or a.shape[1] < 1:
    raise ValueError(f"attributes must have shape ({n}, K) with K >= 1, one row per image, "
                     f"got {a.shape}")
  bad = ~np.isin(a, (0, 1))
  if bad.any():
    raise ValueError(f"attributes must be binary (0 or 1); found values "
                     f"{np.unique(a[bad])[:5].tolist()}")
  k = a.shape[1]
  names = tuple(f"attribute_{i}" for i in range(k)) if names is None else tuple(
      str(s) for s in names)
  if len(names) != k:
    raise ValueError(f"got {len(names)} attribute names for {k} attribute columns")
  if len(set(names)) != k or OUTCOME in names:
    raise ValueError(f"attribute names must be distinct and not {OUTCOME!r}, got {names}")
  return a.astype(np.int32), names


# Training loop --------------------------------------------------------------------------


def _train(name: str, loss_fn, params, frozen, arrays: dict, cfg, *, steps: int, seed: int,
           workdir: str | None, meta: dict, shown=("loss",)):
  """Adam on `loss_fn(params, frozen, batch, key, step) -> (loss, metrics)`: one jitted step.

  The batch is split over the devices of a (data, fsdp) mesh, `frozen` (networks that are
  not trained) is replicated. With `workdir`, checkpoints go to
  `<workdir>/<name>_checkpoints` (resumed when present, refused when made for another
  model) and metrics to `<workdir>/<name>_train.jsonl`. Returns (params, last metrics).
  """
  batch_size = int(cfg.batch_size)
  mesh = mesh_lib.make_mesh(int(cfg.num_devices))
  devices = mesh.devices.size
  if batch_size % devices:
    raise ValueError(f"batch_size {batch_size} must be divisible by the {devices} devices")
  n = len(next(iter(arrays.values())))
  if n < batch_size:
    raise ValueError(f"{name}: batch_size {batch_size} exceeds the {n} training images")
  tx = optax.adam(optax.cosine_decay_schedule(float(cfg.learning_rate), steps, alpha=0.05))
  state = state_lib.init(params, tx)
  base_key = jax.random.key(seed)

  def train_step(state, frozen, batch):
    key = jax.random.fold_in(base_key, state["step"])
    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state["params"], frozen, batch, key, state["step"])
    return state_lib.apply_gradients(state, tx, grads), {"loss": loss, **metrics}

  rep = mesh_lib.replicated(mesh)
  shardings = {k: mesh_lib.batch_sharding(mesh, np.ndim(v)) for k, v in arrays.items()}
  step_fn = jax.jit(train_step, in_shardings=(rep, rep, shardings),
                    out_shardings=(rep, rep), donate_argnums=0)
  dataset = data_lib.batches(data_lib.ArraySource(arrays), batch_size, seed=seed)
  frozen = jax.device_put(frozen, rep)

  def batch_at(i):
    b = dataset[i]
    return data_lib.to_global({k: b[k] for k in arrays}, shardings)

  state, log = train_loop(
      jax.device_put(state, rep), lambda s, batch: step_fn(s, frozen, batch), batch_at,
      LoopConfig.from_config(name, cfg, steps, shown=tuple(shown)), mesh=mesh,
      workdir=workdir, meta={"name": name, **meta})
  last = log.history[-1] if log.history else {}
  return jax.device_get(state["params"]), {k: v for k, v in last.items() if k != "step"}


# Generator and attribute predictor ------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LatentGenerator:
  """The VAE and (when attributes were given) the attribute predictor, used functionally."""

  vae_def: Any
  vae_params: Any
  predictor_def: Any
  predictor_params: Any
  image_shape: tuple[int, int, int]
  attribute_names: tuple[str, ...]
  architecture: dict
  metrics: dict = dataclasses.field(default_factory=dict)

  @property
  def latent_dim(self) -> int:
    return int(self.architecture["latent_dim"])

  @property
  def num_attributes(self) -> int:
    return len(self.attribute_names)

  def params(self):
    return {"vae": self.vae_params, "predictor": self.predictor_params}

  def without_attributes(self) -> LatentGenerator:
    return dataclasses.replace(self, predictor_def=None, predictor_params=None,
                               attribute_names=())

  def encode(self, images, chunk_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """The encoder's (mean, log-variance) of each image, (N, latent_dim) each."""
    x = validation.check_images(images, self.image_shape)
    return map_in_chunks(lambda xb: _encode_program(self.vae_def, self.vae_params, xb), [x],
                         chunk_size)

  def encode_mean(self, images, chunk_size: int = 256) -> np.ndarray:
    return self.encode(images, chunk_size)[0]

  def decode(self, z, chunk_size: int = 256) -> np.ndarray:
    return map_in_chunks(lambda zb: _decode_program(self.vae_def, self.vae_params, zb),
                         [np.asarray(z, np.float32)], chunk_size)

  def attribute_probs(self, images, chunk_size: int = 256) -> np.ndarray:
    if self.predictor_def is None:
      raise ValueError("this generator has no attribute predictor (fit without attributes)")
    x = validation.check_images(images, self.image_shape)
    return map_in_chunks(
        lambda xb: _attribute_program(self.predictor_def, self.predictor_params, xb), [x],
        chunk_size)


# Compiled once per network structure (the graphdef is static), not once per call.
@functools.partial(jax.jit, static_argnums=0)
def _encode_program(graphdef, params, images):
  return nnx.merge(graphdef, params).encode(images)


@functools.partial(jax.jit, static_argnums=0)
def _decode_program(graphdef, params, z):
  return nnx.merge(graphdef, params).decode(z)


@functools.partial(jax.jit, static_argnums=0)
def _attribute_program(graphdef, params, images):
  return jax.nn.sigmoid(nnx.merge(graphdef, params)(images))


def architecture(cfg, image_shape) -> dict:
  return {"image_shape": [int(d) for d in image_shape], "latent_dim": int(cfg.latent_dim),
          "vae_features": [int(f) for f in cfg.vae_features],
          "predictor_features": [int(f) for f in cfg.predictor_features]}


def _build_vae(arch: dict, seed: int = 0) -> ConvVAE:
  return ConvVAE(tuple(arch["image_shape"]), latent_dim=int(arch["latent_dim"]),
                 features=tuple(arch["vae_features"]), rngs=nnx.Rngs(seed))


def _build_predictor(arch: dict, num_attributes: int, seed: int = 0) -> AttributePredictor:
  return AttributePredictor(int(arch["image_shape"][-1]), num_attributes,
                            features=tuple(arch["predictor_features"]), rngs=nnx.Rngs(seed))


def vae_loss(vae: ConvVAE, images: jax.Array, key: jax.Array, beta):
  """Negative ELBO per image: summed squared error (a Gaussian likelihood of variance
  1/2) plus beta * KL to N(0, I); returns (loss, metrics)."""
  recon, mean, logvar = vae(images, key)
  sse = jnp.mean(jnp.sum(jnp.square(recon - images), axis=(1, 2, 3)))
  kl = jnp.mean(gaussian_kl(mean, logvar))
  return sse + beta * kl, {"sse": sse, "kl": kl}


def train_vae(images: np.ndarray, cfg, workdir: str | None = None):
  """Fit the VAE to `images`; returns (graphdef, params, metrics)."""
  images = validation.check_images(images, name="VAE training images")
  arch = architecture(cfg, images.shape[1:])
  graphdef, params = nnx.split(_build_vae(arch, int(cfg.seed)))
  beta, warmup = float(cfg.beta), int(cfg.kl_warmup)

  def loss_fn(p, frozen, batch, key, step):
    del frozen
    # KL warm-up: small details (the lesion) get encoded before the KL term squeezes the
    # latent; posterior collapse of such details is the VAE's usual failure.
    ramp = jnp.minimum(1.0, (step + 1.0) / warmup) if warmup > 0 else 1.0
    return vae_loss(nnx.merge(graphdef, p), batch["image"], key, beta * ramp)

  params, metrics = _train("vae", loss_fn, params, {}, {"image": images}, cfg,
                           steps=int(cfg.vae_steps), seed=int(cfg.seed), workdir=workdir,
                           meta={"architecture": arch, "beta": beta, "kl_warmup": warmup,
                                 "learning_rate": float(cfg.learning_rate)},
                           shown=("loss", "sse", "kl"))
  return graphdef, params, metrics


def train_attribute_predictor(images: np.ndarray, attributes: np.ndarray, cfg,
                              workdir: str | None = None):
  """Per-attribute BCE on labelled real images; returns (graphdef, params, metrics)."""
  arch = architecture(cfg, images.shape[1:])
  graphdef, params = nnx.split(_build_predictor(arch, attributes.shape[1], int(cfg.seed) + 1))

  def loss_fn(p, frozen, batch, key, step):
    del frozen, key, step
    logits = nnx.merge(graphdef, p)(batch["image"])
    labels = batch["attributes"].astype(logits.dtype)
    loss = jnp.mean(optax.sigmoid_binary_cross_entropy(logits, labels))
    return loss, {"accuracy": jnp.mean((logits > 0) == (labels > 0.5))}

  return (graphdef,) + _train(
      "predictor", loss_fn, params, {}, {"image": images, "attributes": attributes}, cfg,
      steps=int(cfg.predictor_steps), seed=int(cfg.seed) + 1, workdir=workdir,
      meta={"architecture": arch, "num_attributes": int(attributes.shape[1]),
            "learning_rate": float(cfg.learning_rate)}, shown=("loss", "accuracy"))


def evaluate_generator(gen: LatentGenerator, images: np.ndarray,
                       attributes: np.ndarray | None, chunk_size: int = 256) -> dict:
  """Reconstruction error, and the attribute predictor's accuracy on real images and on
  their reconstructions (what it will judge: generated images)."""
  z = gen.encode_mean(images, chunk_size)
  recon = gen.decode(z, chunk_size)
  out = {"num_images": int(len(images)),
         "reconstruction_mae": float(np.mean(np.abs(recon - images)))}
  if attributes is not None and gen.predictor_def is not None:
    on_real = gen.attribute_probs(images, chunk_size) > 0.5
    on_recon = gen.attribute_probs(recon, chunk_size) > 0.5
    out["predictor_accuracy"] = {
        name: {"real": float(np.mean(on_real[:, k] == attributes[:, k])),
               "reconstructed": float(np.mean(on_recon[:, k] == attributes[:, k]))}
        for k, name in enumerate(gen.attribute_names)}
  return out


def save_generator(path: str, gen: LatentGenerator) -> None:
  meta = {"architecture": gen.architecture, "attribute_names": list(gen.attribute_names),
          "metrics": gen.metrics}
  tree = {"vae": gen.vae_params}
  if gen.predictor_params is not None:
    tree["predictor"] = gen.predictor_params
  persistence.save(path, GENERATOR_META, meta, "state", tree)


def load_generator(path: str) -> LatentGenerator:
  """A generator saved by `save_generator` (e.g. `<workdir>/generator`)."""
  meta = persistence.read_meta(path, GENERATOR_META, "latent generator")
  return _restore_networks(path, "state", meta["architecture"], meta["attribute_names"],
                           meta.get("metrics", {}))[0]


def _restore_networks(path, tree_dir, arch, names, metrics, shift_hidden=None):
  """(generator, shift params or None) from a tree saved with "vae", optionally
  "predictor" (when there are attribute names) and "shift" (when shift_hidden is given)."""
  vae_def, vae_abstract = nnx.split(nnx.eval_shape(lambda: _build_vae(arch)))
  abstract = {"vae": vae_abstract}
  pred_def = None
  if names:
    pred_def, abstract["predictor"] = nnx.split(nnx.eval_shape(
        lambda: _build_predictor(arch, len(names))))
  if shift_hidden is not None:
    abstract["shift"] = nnx.state(nnx.eval_shape(
        lambda: _build_shift(int(arch["latent_dim"]), len(names) + 1, shift_hidden)))
  tree = persistence.restore(path, tree_dir, abstract)
  gen = LatentGenerator(vae_def, tree["vae"], pred_def, tree.get("predictor"),
                        tuple(int(d) for d in arch["image_shape"]), tuple(names), dict(arch),
                        dict(metrics))
  return gen, tree.get("shift")


def load_or_train_generator(images: np.ndarray, attributes: np.ndarray | None,
                            names: tuple[str, ...], cfg,
                            workdir: str | None = None) -> LatentGenerator:
  """`<workdir>/generator` when one is there (so several classifiers share one
  generator, used as it is), else a VAE and attribute predictor trained on `images`."""
  arch = architecture(cfg, images.shape[1:])
  path = os.path.join(workdir, GENERATOR_DIR) if workdir else None
  if path and os.path.exists(os.path.join(path, GENERATOR_META)):
    saved = persistence.read_meta(path, GENERATOR_META, "latent generator")
    if saved["architecture"] != arch:
      raise ValueError(f"the generator in {path} has the architecture "
                       f"{saved['architecture']}, these settings ask for {arch}; use another "
                       "workdir")
    if attributes is not None and tuple(saved["attribute_names"]) != tuple(names):
      raise ValueError(f"the generator in {path} predicts the attributes "
                       f"{saved['attribute_names']}, these are {list(names)}; use another "
                       "workdir")
    gen = load_generator(path)
    print(f"latent: reusing the generator in {path}", flush=True)
    return gen if attributes is not None else gen.without_attributes()
  vae_def, vae_params, vae_metrics = train_vae(images, cfg, workdir)
  pred_def = pred_params = None
  metrics = {"vae": vae_metrics}
  if attributes is not None:
    pred_def, pred_params, metrics["predictor"] = train_attribute_predictor(
        images, attributes, cfg, workdir)
  gen = LatentGenerator(vae_def, vae_params, pred_def, pred_params,
                        tuple(int(d) for d in images.shape[1:]),
                        tuple(names) if attributes is not None else (), arch, metrics)
  held = slice(0, min(len(images), 1024))
  gen.metrics["train_fit"] = evaluate_generator(
      gen, images[held], None if attributes is None else attributes[held],
      int(cfg.chunk_size))
  if path:
    save_generator(path, gen)
  return gen


# Probabilities of every attribute, the outcome last --------------------------------------


def _attribute_logits(gen: LatentGenerator, classifier: Classifier, params, images):
  """(N, K + 1) logits: the attribute predictor's, then the classifier's log-odds of
  class 1 (the outcome)."""
  clf_logits = classifier.apply(params["classifier"], images)
  outcome = (clf_logits[:, 1] - clf_logits[:, 0])[:, None]
  if gen.predictor_def is None:
    return outcome
  attrs = nnx.merge(gen.predictor_def, params["predictor"])(images)
  return jnp.concatenate([attrs, outcome], axis=-1)


def _decode(gen: LatentGenerator, params, z):
  return nnx.merge(gen.vae_def, params["vae"]).decode(z)


def shift_loss(shift: ShiftPredictor, gen: LatentGenerator, classifier: Classifier, frozen,
               images, key, cfg):
  """The shift-training objective on one batch (see the module docstring)."""
  k = gen.num_attributes
  n = images.shape[0]
  k_post, k_prior, k_which, k_entry, k_flip = jax.random.split(key, 5)
  mean, logvar = nnx.merge(gen.vae_def, frozen["vae"]).encode(images)
  z_post = mean + jnp.exp(0.5 * logvar) * jax.random.normal(k_post, mean.shape)
  z_prior = jax.random.normal(k_prior, mean.shape)
  use_prior = jax.random.bernoulli(k_which, float(cfg.prior_fraction), (n, 1))
  z = jax.lax.stop_gradient(jnp.where(use_prior, z_prior, z_post))

  before = jax.lax.stop_gradient(
      _attribute_logits(gen, classifier, frozen, _decode(gen, frozen, z)))
  entry = jax.random.randint(k_entry, (n,), 0, k + 1)
  requested = jax.nn.one_hot(entry, k + 1)
  current = jnp.sum(requested * (before > 0), axis=-1)
  flip = jax.random.bernoulli(k_flip, float(cfg.flip_fraction), (n,))
  value = jnp.where(flip, 1.0 - current, current)
  sign = 2.0 * value - 1.0
  t = requested * sign[:, None]

  dz = shift(z, t)
  after = _attribute_logits(gen, classifier, frozen, _decode(gen, frozen, z + dz))
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
  norm = jnp.sqrt(jnp.sum(jnp.square(dz), axis=-1) + 1e-12)
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


def _build_shift(latent_dim: int, num_entries: int, hidden, seed: int = 0) -> ShiftPredictor:
  return ShiftPredictor(latent_dim, num_entries, hidden=tuple(int(h) for h in hidden),
                        rngs=nnx.Rngs(seed))


def train_shift(gen: LatentGenerator, classifier: Classifier, images: np.ndarray, cfg,
                workdir: str | None = None):
  """Fit the shift predictor for this classifier; returns (graphdef, params, metrics).

  Checkpoints are kept per classifier and settings (`<workdir>/shift_<hash>_checkpoints`,
  the hash of the classifier's fingerprint and the shift settings), so explainers of
  several classifiers can share a workdir and its generator.
  """
  graphdef, params = nnx.split(_build_shift(gen.latent_dim, gen.num_attributes + 1,
                                            cfg.shift_hidden, int(cfg.seed) + 2))
  frozen = {**gen.params(), "classifier": classifier.params}
  if gen.predictor_params is None:
    del frozen["predictor"]

  def loss_fn(p, fr, batch, key, step):
    del step
    return shift_loss(nnx.merge(graphdef, p), gen, classifier, fr, batch["image"], key, cfg)

  meta = {"architecture": gen.architecture, "attribute_names": list(gen.attribute_names),
          "classifier": fingerprint_hash(classifier), "hidden": list(cfg.shift_hidden),
          "weights": [float(cfg[k]) for k in ("shift_norm", "margin", "keep", "keep_clip",
                                               "outcome_keep", "flip_fraction",
                                               "prior_fraction")],
          "learning_rate": float(cfg.learning_rate), "seed": int(cfg.seed),
          "batch_size": int(cfg.batch_size)}
  run = hashlib.sha1(json.dumps(meta, sort_keys=True).encode()).hexdigest()[:10]
  return (graphdef,) + _train(
      f"shift_{run}", loss_fn, params, frozen, {"image": images}, cfg,
      steps=int(cfg.shift_steps), seed=int(cfg.seed) + 2, workdir=workdir, meta=meta,
      shown=("loss", "reached", "kept", "dz"))


# Explainer ------------------------------------------------------------------------------


class LatentExplainer(optimised.ClassifierBound):
  """Counterfactuals by a learned shift of the image's latent code.

  explain: z = the encoder mean of x, dz = shift(z, t) with t = +-1 on the outcome
  (towards the target class) and 0 on the attributes; counterfactual = G(z + dz);
  map = |G(z + dz) - G(z)| averaged over channels. The map compares two decodings, not
  the counterfactual with x, so the VAE's reconstruction error (blur everywhere) cancels
  and the map shows only what the shift changed.
  """

  def __init__(self, classifier, generator: LatentGenerator, shift_params, config=None, *,
               image_shape=None, metrics: dict | None = None):
    config = optimised.as_settings(config, latent_config)
    self.classifier = optimised.bind_classifier(classifier, image_shape)
    check_binary_classifier(self.classifier)
    if tuple(generator.image_shape) != self.image_shape:
      raise ValueError(f"the generator was trained on images of shape {generator.image_shape}, "
                       f"the classifier expects {self.image_shape}")
    self.config = config
    self.generator = generator
    self.shift_def = nnx.graphdef(nnx.eval_shape(lambda: _build_shift(
        generator.latent_dim, generator.num_attributes + 1, config.shift_hidden)))
    self.shift_params = shift_params
    self.metrics = dict(metrics or {})
    self._explain_program = jax.jit(self._explain_chunk)
    self._intervene_program = jax.jit(self._intervene_chunk)
    self._edit_program = jax.jit(self._edit_chunk)

  @classmethod
  def fit(cls, classifier, images, *, seed: int = 0, config=None, workdir=None,
          attributes=None, attribute_names=None) -> LatentExplainer:
    """Train (or reuse, from `<workdir>/generator`) the VAE and attribute predictor on
    `images`, then the shift predictor for this classifier.

    attributes: (N, K) binary labels of `images` (None: the outcome is the only
    attribute); attribute_names: their K names (default attribute_0, ...). Binary
    classifiers only: the decision is the last attribute, "outcome".

    With `workdir`, every network is checkpointed there and resumed. A generator already
    in `<workdir>/generator` is used as it is (the images only train the shift), so
    explainers of several classifiers can share one workdir and one generator.
    """
    cfg = optimised.as_settings(config, latent_config)
    cfg.seed = int(seed)
    x = validation.check_images(images)
    clf = optimised.bind_classifier(classifier, x.shape[1:])
    check_binary_classifier(clf)
    names: tuple[str, ...] = ()
    if attributes is not None:
      attributes, names = check_attributes(attributes, len(x), attribute_names)
    elif attribute_names is not None:
      raise ValueError("attribute_names were given without attributes")
    if len(x) < int(cfg.batch_size):
      raise ValueError(f"need at least batch_size={cfg.batch_size} images to train, got "
                       f"{len(x)}")
    if workdir:
      os.makedirs(workdir, exist_ok=True)
    gen = load_or_train_generator(x, attributes, names, cfg, workdir)
    _, shift_params, shift_metrics = train_shift(gen, clf, x, cfg, workdir)
    explainer = cls(clf, gen, shift_params, cfg, metrics={"shift": shift_metrics})
    z = np.asarray(jax.random.normal(jax.random.key(int(cfg.seed) + 3),
                                     (min(512, int(cfg.num_samples)), gen.latent_dim)))
    explainer.metrics["edits"] = explainer.edit_success(z)
    return explainer

  @property
  def attribute_names(self) -> tuple[str, ...]:
    return self.generator.attribute_names

  @property
  def num_attributes(self) -> int:
    return self.generator.num_attributes

  def _params(self):
    p = {**self.generator.params(), "classifier": self.classifier.params,
         "shift": self.shift_params}
    if self.generator.predictor_params is None:
      del p["predictor"]
    return p

  def _shift(self, params, z, t):
    return nnx.merge(self.shift_def, params["shift"])(z, t)

  def _explain_chunk(self, params, x, t):
    gen, clf = self.generator, self.classifier
    probs = jax.nn.softmax(clf.apply(params["classifier"], x), axis=-1)
    z = nnx.merge(gen.vae_def, params["vae"]).encode(x)[0]
    request = jnp.zeros((x.shape[0], gen.num_attributes + 1), z.dtype)
    request = request.at[:, -1].set(2.0 * t.astype(z.dtype) - 1.0)
    base = _decode(gen, params, z)
    cf = _decode(gen, params, z + self._shift(params, z, request))
    cf_probs = jax.nn.softmax(clf.apply(params["classifier"], cf), axis=-1)
    maps = jnp.mean(jnp.abs(cf - base), axis=-1)
    return Explanation(maps=maps, target=t, probs=probs, counterfactual=cf, cf_probs=cf_probs)

  def explain(self, images, target=None) -> Explanation:
    """Counterfactuals of every image, in compiled chunks.

    target: the class each counterfactual should reach (int or (N,), not the predicted
    class); default: the other class.
    """
    x = validation.check_images(images, self.image_shape)
    chunk = int(self.config.chunk_size)
    predicted = self.classifier.predict(x, chunk)
    t = (1 - predicted if target is None
         else validation.check_target(target, len(x), self.num_classes, predicted))
    params = self._params()
    out = map_in_chunks(lambda xb, tb: self._explain_program(params, xb, tb),
                        [x, t.astype(np.int32)], chunk)
    if self.config.warn_failures:
      self.report_failures(out, stacklevel=3)
    return out

  def report_failures(self, explanation: Explanation, *, stacklevel: int = 2) -> np.ndarray:
    """Indices whose counterfactual is not classified as its target, with a warning."""
    return optimised.report_failures("latent", explanation, "did not reach the target class",
                                     stacklevel)

  def edit(self, z, t) -> np.ndarray:
    """G(z + shift(z, t)) for latents (N, latent_dim) and requests (N, K + 1) in {-1, 0, 1}."""
    z = np.asarray(z, np.float32)
    t = np.asarray(t, np.float32)
    if z.ndim != 2 or z.shape[1] != self.generator.latent_dim:
      raise ValueError(f"z must have shape (N, {self.generator.latent_dim}), got {z.shape}")
    if t.shape != (len(z), self.num_attributes + 1) or not np.isin(t, (-1, 0, 1)).all():
      raise ValueError(f"t must have shape ({len(z)}, {self.num_attributes + 1}) with entries "
                       f"in {{-1, 0, 1}} (the attributes, then the outcome), got {t.shape}")
    params = self._params()
    return map_in_chunks(lambda zb, tb: self._edit_program(params, zb, tb), [z, t],
                         int(self.config.chunk_size))

  def _edit_chunk(self, params, z, t):
    return _decode(self.generator, params, z + self._shift(params, z, t))

  def _intervene_chunk(self, params, z):
    gen, clf = self.generator, self.classifier
    k = gen.num_attributes

    def decide(images):
      return _attribute_logits(gen, clf, params, images) > 0

    observed = decide(_decode(gen, params, z))
    eye = jnp.eye(k + 1, dtype=z.dtype)
    after = {}
    for sign in (1.0, -1.0):
      rows = []
      for j in range(k + 1):
        t = jnp.broadcast_to(sign * eye[j], (z.shape[0], k + 1))
        rows.append(decide(_decode(gen, params, z + self._shift(params, z, t))))
      after[sign] = jnp.stack(rows, axis=1)  # (N, entry edited, decision)
    return {"a": observed[:, :k], "y": observed[:, k],
            "y_do1": after[1.0][:, :k, k], "y_do0": after[-1.0][:, :k, k],
            "a_do1": jnp.diagonal(after[1.0][:, :k, :k], axis1=1, axis2=2),
            "a_do0": jnp.diagonal(after[-1.0][:, :k, :k], axis1=1, axis2=2),
            "kept_do1": after[1.0][:, :k, :k], "kept_do0": after[-1.0][:, :k, :k],
            "y_set1": after[1.0][:, k, k], "y_set0": after[-1.0][:, k, k]}

  def intervene(self, z) -> dict:
    """Decisions on G(z) and under every single edit, for latents z (N, latent_dim).

    "a" (N, K), "y" (N,): observed; "y_do1" / "y_do0" (N, K): the outcome after setting
    attribute k to 1 / 0; "a_do1" / "a_do0" (N, K): attribute k after that edit;
    "kept_do1" / "kept_do0" (N, K, K): every attribute after editing attribute k;
    "y_set1" / "y_set0" (N,): the outcome after asking for outcome 1 / 0.
    """
    z = np.asarray(z, np.float32)
    if z.ndim != 2 or z.shape[1] != self.generator.latent_dim:
      raise ValueError(f"z must have shape (N, {self.generator.latent_dim}), got {z.shape}")
    params = self._params()
    out = map_in_chunks(lambda zb: self._intervene_program(params, zb), [z],
                        int(self.config.chunk_size))
    return {key: np.asarray(v, bool) for key, v in out.items()}

  def edit_success(self, z) -> dict:
    """How often single edits of latents z reach their request and leave the other
    attributes as they were, over all z: where an attribute already has the requested
    value the edit should leave it so (`causal_scores` counts only the edits that change
    it)."""
    out = self.intervene(z)
    k = self.num_attributes
    result = {OUTCOME: {"set1_reached": float(out["y_set1"].mean()),
                        "set0_reached": float(1.0 - out["y_set0"].mean())}}
    others = ~np.eye(k, dtype=bool)
    for j, name in enumerate(self.attribute_names):
      entry = {"do1_reached": float(out["a_do1"][:, j].mean()),
               "do0_reached": float(1.0 - out["a_do0"][:, j].mean())}
      if k > 1:
        same1 = out["kept_do1"][:, j, others[j]] == out["a"][:, others[j]]
        same0 = out["kept_do0"][:, j, others[j]] == out["a"][:, others[j]]
        entry["others_kept"] = float(np.mean(np.concatenate([same1, same0])))
      result[name] = entry
    return result

  def save(self, path: str) -> None:
    """Settings, the classifier's fingerprint, the generator and the shift predictor."""
    gen = self.generator
    meta = {"architecture": gen.architecture, "attribute_names": list(gen.attribute_names),
            "generator_metrics": gen.metrics, "metrics": self.metrics}
    tree = {"vae": gen.vae_params, "shift": self.shift_params}
    if gen.predictor_params is not None:
      tree["predictor"] = gen.predictor_params
    persistence.save(path, EXPLAINER_META, meta, "networks", tree)
    optimised.save_settings(path, "latent", self)

  @classmethod
  def from_meta(cls, meta: dict, classifier: Classifier, path: str) -> LatentExplainer:
    cfg = _config_from_json(meta["config"])
    saved = persistence.read_meta(path, EXPLAINER_META, "latent explainer")
    gen, shift = _restore_networks(path, "networks", saved["architecture"],
                                   saved["attribute_names"], saved.get("generator_metrics", {}),
                                   shift_hidden=cfg.shift_hidden)
    return cls(classifier, gen, shift, cfg, metrics=saved.get("metrics", {}))
