"""Training the latent method's generative model and attribute predictor (or taking a
pretrained model as it is), on the shared train loop."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from cfx_jax import data as data_lib
from cfx_jax import persistence, validation
from cfx_jax.engine import mesh as mesh_lib
from cfx_jax.engine import state as state_lib
from cfx_jax.engine.loop import LoopConfig, train_loop
from cfx_jax.models.vae import ConvVAE, gaussian_kl
from cfx_jax.methods.latent.config import GENERATOR_DIR, GENERATOR_META
from cfx_jax.methods.latent.generator import (LatentGenerator, PretrainedGenerator,
                                              architecture, build_predictor, build_vae,
                                              load_generator, probe_decodings,
                                              save_generator)

logger = logging.getLogger(__name__)


def train_network(name: str, loss_fn, params, frozen, arrays: dict, cfg, *, steps: int,
                  seed: int, workdir: str | None, meta: dict, shown=("loss",)):
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
                                  steps=int(cfg.vae_steps), seed=int(cfg.seed),
                                  workdir=workdir,
                                  meta={"architecture": arch, "beta": beta,
                                        "kl_warmup": warmup,
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


def train_fit(gen: LatentGenerator, images: np.ndarray, attributes: np.ndarray | None,
              cfg) -> dict:
  """`evaluate_generator` on the first 1024 training images: the fit stored with a
  generator."""
  held = slice(0, min(len(images), 1024))
  return evaluate_generator(gen, images[held], None if attributes is None else attributes[held],
                            int(cfg.chunk_size))


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
  gen.metrics["train_fit"] = train_fit(gen, images, attributes, cfg)
  if path:
    save_generator(path, gen)
  return gen


def pretrained_generator(pretrained: PretrainedGenerator, images: np.ndarray,
                         attributes: np.ndarray | None, names: tuple[str, ...], cfg,
                         workdir: str | None = None) -> LatentGenerator:
  """`pretrained` as it is, with an attribute predictor trained on `images` (when
  attributes are given); nothing else trains. A model without a prior keeps the codes of
  up to `num_samples` training images to sample from."""
  probe = np.round(probe_decodings(pretrained), 3)
  arch = {"image_shape": list(pretrained.image_shape),
          "latent_shape": list(pretrained.latent_shape),
          "predictor_features": [int(f) for f in cfg.predictor_features],
          "generator": hashlib.sha1(probe.tobytes()).hexdigest()[:10]}
  pred_def = pred_params = None
  metrics = {}
  if attributes is not None:
    pred_def, pred_params, metrics["predictor"] = train_attribute_predictor(
        images, attributes, cfg, workdir)
  gen = LatentGenerator(None, None, pred_def, pred_params, pretrained.image_shape,
                        tuple(names) if attributes is not None else (), arch, metrics,
                        pretrained)
  if pretrained.sample_prior is None:
    pick = np.random.default_rng(int(cfg.seed)).permutation(len(images))[:int(cfg.num_samples)]
    gen = dataclasses.replace(gen, latents=gen.encode_mean(images[pick], int(cfg.chunk_size)))
  gen.metrics["train_fit"] = train_fit(gen, images, attributes, cfg)
  return gen
