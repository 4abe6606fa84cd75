"""The generative model (a conv VAE) and the attribute predictor: training, saving, loading."""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from cfx_jax import data as data_lib
from cfx_jax import persistence, validation
from cfx_jax.batching import map_in_chunks
from cfx_jax.models.vae import AttributePredictor, ConvVAE, ShiftPredictor, gaussian_kl
from cfx_jax.engine import mesh as mesh_lib
from cfx_jax.engine import state as state_lib
from cfx_jax.engine.loop import LoopConfig, train_loop
from cfx_jax.methods.latent.config import GENERATOR_DIR, GENERATOR_META

logger = logging.getLogger(__name__)


# Training loop --------------------------------------------------------------------------


def train_network(name: str, loss_fn, params, frozen, arrays: dict, cfg, *, steps: int, seed: int,
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


def build_vae(arch: dict, seed: int = 0) -> ConvVAE:
  return ConvVAE(tuple(arch["image_shape"]), latent_dim=int(arch["latent_dim"]),
                 features=tuple(arch["vae_features"]), rngs=nnx.Rngs(seed))


def build_predictor(arch: dict, num_attributes: int, seed: int = 0) -> AttributePredictor:
  return AttributePredictor(int(arch["image_shape"][-1]), num_attributes,
                            features=tuple(arch["predictor_features"]), rngs=nnx.Rngs(seed))


def build_shift(latent_dim: int, num_entries: int, hidden, seed: int = 0) -> ShiftPredictor:
  return ShiftPredictor(latent_dim, num_entries, hidden=tuple(int(h) for h in hidden),
                        rngs=nnx.Rngs(seed))


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
  graphdef, params = nnx.split(build_vae(arch, int(cfg.seed)))
  beta, warmup = float(cfg.beta), int(cfg.kl_warmup)

  def loss_fn(p, frozen, batch, key, step):
    del frozen
    # KL warm-up: small details (the lesion) get encoded before the KL term squeezes the
    # latent; posterior collapse of such details is the VAE's usual failure.
    ramp = jnp.minimum(1.0, (step + 1.0) / warmup) if warmup > 0 else 1.0
    return vae_loss(nnx.merge(graphdef, p), batch["image"], key, beta * ramp)

  params, metrics = train_network("vae", loss_fn, params, {}, {"image": images}, cfg,
                           steps=int(cfg.vae_steps), seed=int(cfg.seed), workdir=workdir,
                           meta={"architecture": arch, "beta": beta, "kl_warmup": warmup,
                                 "learning_rate": float(cfg.learning_rate)},
                           shown=("loss", "sse", "kl"))
  return graphdef, params, metrics


def train_attribute_predictor(images: np.ndarray, attributes: np.ndarray, cfg,
                              workdir: str | None = None):
  """Per-attribute BCE on labelled real images; returns (graphdef, params, metrics)."""
  arch = architecture(cfg, images.shape[1:])
  graphdef, params = nnx.split(build_predictor(arch, attributes.shape[1], int(cfg.seed) + 1))

  def loss_fn(p, frozen, batch, key, step):
    del frozen, key, step
    logits = nnx.merge(graphdef, p)(batch["image"])
    labels = batch["attributes"].astype(logits.dtype)
    loss = jnp.mean(optax.sigmoid_binary_cross_entropy(logits, labels))
    return loss, {"accuracy": jnp.mean((logits > 0) == (labels > 0.5))}

  return (graphdef,) + train_network(
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
  return restore_networks(path, "state", meta["architecture"], meta["attribute_names"],
                           meta.get("metrics", {}))[0]


def restore_networks(path, tree_dir, arch, names, metrics, shift_hidden=None):
  """(generator, shift params or None) from a tree saved with "vae", optionally
  "predictor" (when there are attribute names) and "shift" (when shift_hidden is given)."""
  vae_def, vae_abstract = nnx.split(nnx.eval_shape(lambda: build_vae(arch)))
  abstract = {"vae": vae_abstract}
  pred_def = None
  if names:
    pred_def, abstract["predictor"] = nnx.split(nnx.eval_shape(
        lambda: build_predictor(arch, len(names))))
  if shift_hidden is not None:
    abstract["shift"] = nnx.state(nnx.eval_shape(
        lambda: build_shift(int(arch["latent_dim"]), len(names) + 1, shift_hidden)))
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
    logger.info("latent: reusing the generator in %s", path)
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
