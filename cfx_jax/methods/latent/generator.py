"""The generative model (the built-in conv VAE, or a pretrained one used as it is) and the
attribute predictor: training, saving, loading."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from cfx_jax import data as data_lib
from cfx_jax import persistence, validation
from cfx_jax.batching import map_in_chunks
from cfx_jax.models.vae import (AttributePredictor, ConvShiftPredictor, ConvVAE,
                                ShiftPredictor, gaussian_kl, vae_latent_shape)
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
class PretrainedGenerator:
  """A frozen generative model that the latent method uses as it is, never trains.

  encode(images) -> z and decode(z) -> images: JAX-traceable functions of a batch, with
  images (N, *image_shape) in [-1, 1] (the range the method works in, whatever range the
  caller's images are in) and z (N, *latent_shape). They close over their own weights.
  sample_prior(key, n) -> z (optional): n draws of the model's latent prior. Without it,
  the shift trains on encoded training images only (`prior_fraction` has no effect), and
  the samples of the causal scores and of the fit's edit check are encoded training
  images.
  """

  encode: Callable
  decode: Callable
  latent_shape: tuple[int, ...]
  image_shape: tuple[int, int, int]
  sample_prior: Callable | None = None

  def __post_init__(self):
    for name in ("encode", "decode"):
      if not callable(getattr(self, name)):
        raise TypeError(f"generator.{name} must be callable")
    if self.sample_prior is not None and not callable(self.sample_prior):
      raise TypeError("generator.sample_prior must be callable or None")
    for name, what in (("latent_shape", "sizes"), ("image_shape", "sizes (H, W, C)")):
      given = getattr(self, name)
      shape = (given,) if isinstance(given, (int, np.integer)) else tuple(given)
      if (not shape or any(int(d) < 1 for d in shape)
          or (name == "image_shape" and len(shape) != 3)):
        raise ValueError(f"generator.{name} must be a tuple of positive {what}, got {given}")
      object.__setattr__(self, name, tuple(int(d) for d in shape))


def as_pretrained(generator, image_shape, images) -> PretrainedGenerator:
  """`generator` (a `PretrainedGenerator` or any object with its attributes) checked
  against the classifier's `image_shape` and, on two of `images`, the shapes its
  functions return; fails before anything trains."""
  if not isinstance(generator, PretrainedGenerator):
    missing = [a for a in ("encode", "decode", "latent_shape", "image_shape")
               if not hasattr(generator, a)]
    if missing:
      raise TypeError(f"a pretrained generator needs encode, decode, latent_shape and "
                      f"image_shape (see PretrainedGenerator); {type(generator).__name__} "
                      f"lacks {missing}")
    generator = PretrainedGenerator(generator.encode, generator.decode, generator.latent_shape,
                                    generator.image_shape,
                                    getattr(generator, "sample_prior", None))
  g = generator
  if g.image_shape != tuple(image_shape):
    raise ValueError(f"the generator's image_shape is {g.image_shape}, the classifier takes "
                     f"images of shape {tuple(image_shape)}")
  x = jnp.asarray(images[:2])
  n = x.shape[0]

  def check(what, out, expected):
    if not hasattr(out, "shape") or tuple(out.shape) != expected:
      raise ValueError(f"generator.{what} returned {getattr(out, 'shape', type(out).__name__)}, "
                       f"expected {expected}")

  z = jax.eval_shape(g.encode, x)
  check(f"encode of {n} images", z, (n,) + g.latent_shape)
  check(f"decode of {n} latents", jax.eval_shape(g.decode, z), (n,) + g.image_shape)
  if g.sample_prior is not None:
    prior = jax.eval_shape(lambda key: g.sample_prior(key, n), jax.random.key(0))
    check(f"sample_prior(key, {n})", prior, (n,) + g.latent_shape)
  return g


@dataclasses.dataclass(frozen=True)
class LatentGenerator:
  """The generative model and (when attributes were given) the attribute predictor, used
  functionally.

  The model is the built-in VAE (`vae_def`; its parameters `vae_params` are an argument
  of the compiled programs) or a `PretrainedGenerator` (`pretrained`, which closes over
  its own). Compiled code reaches it only through `encode_fn`, `decode_fn`,
  `shift_latents` with `params()["generator"]`; latents there are flat,
  (N, latent_dim) with latent_dim the size of `latent_shape`. `latents`: encoded
  training images, what a pretrained model without a prior samples instead.
  """

  vae_def: Any
  vae_params: Any
  predictor_def: Any
  predictor_params: Any
  image_shape: tuple[int, int, int]
  attribute_names: tuple[str, ...]
  architecture: dict
  metrics: dict = dataclasses.field(default_factory=dict)
  pretrained: PretrainedGenerator | None = None
  latents: np.ndarray | None = None

  @property
  def latent_shape(self) -> tuple[int, ...]:
    if self.pretrained is not None:
      return self.pretrained.latent_shape
    return builtin_latent_shape(self.architecture)

  @property
  def latent_dim(self) -> int:
    return int(np.prod(self.latent_shape))

  @property
  def num_attributes(self) -> int:
    return len(self.attribute_names)

  def params(self):
    p = {"generator": self.vae_params if self.pretrained is None else {}}
    if self.predictor_params is not None:
      p["predictor"] = self.predictor_params
    return p

  def without_attributes(self) -> LatentGenerator:
    return dataclasses.replace(self, predictor_def=None, predictor_params=None,
                               attribute_names=())

  # Traceable: `params` is `params()["generator"]`.

  def encode_fn(self, params, x):
    """The latent code of each image, (N, latent_dim): the VAE's posterior mean."""
    if self.pretrained is None:
      return nnx.merge(self.vae_def, params).encode(x)[0]
    return self.pretrained.encode(x).reshape(x.shape[0], -1)

  def decode_fn(self, params, z):
    if self.pretrained is None:
      return nnx.merge(self.vae_def, params).decode(z)
    return self.pretrained.decode(z.reshape((z.shape[0],) + self.latent_shape))

  def shift_latents(self, params, x, key_data, key_prior):
    """(latents of the images x, prior draws or None) to train the shift on. The VAE's
    are posterior samples and N(0, I) draws; a pretrained model's are its encodings and
    its `sample_prior` draws (None without one)."""
    if self.pretrained is None:
      mean, logvar = nnx.merge(self.vae_def, params).encode(x)
      return (mean + jnp.exp(0.5 * logvar) * jax.random.normal(key_data, mean.shape),
              jax.random.normal(key_prior, mean.shape))
    return self.encode_fn(params, x), self._prior(key_prior, x.shape[0])

  def _prior(self, key, n: int):
    if self.pretrained is None:
      return jax.random.normal(key, (n, self.latent_dim))
    if self.pretrained.sample_prior is None:
      return None
    return self.pretrained.sample_prior(key, n).reshape(n, -1)

  # NumPy, in compiled chunks.

  @functools.cached_property
  def _programs(self):
    return {"encode": jax.jit(self.encode_fn), "decode": jax.jit(self.decode_fn),
            "posterior": jax.jit(lambda p, x: nnx.merge(self.vae_def, p).encode(x))}

  def encode(self, images, chunk_size: int = 256) -> tuple[np.ndarray, np.ndarray | None]:
    """The encoder's (mean, log-variance) of each image, (N, latent_dim) each; for a
    pretrained model (its code, None)."""
    if self.pretrained is not None:
      return self.encode_mean(images, chunk_size), None
    x = validation.check_images(images, self.image_shape)
    params = self.params()["generator"]
    return map_in_chunks(lambda xb: self._programs["posterior"](params, xb), [x], chunk_size)

  def encode_mean(self, images, chunk_size: int = 256) -> np.ndarray:
    x = validation.check_images(images, self.image_shape)
    params = self.params()["generator"]
    return map_in_chunks(lambda xb: self._programs["encode"](params, xb), [x], chunk_size)

  def decode(self, z, chunk_size: int = 256) -> np.ndarray:
    params = self.params()["generator"]
    z = np.asarray(z, np.float32).reshape(len(z), -1)
    return map_in_chunks(lambda zb: self._programs["decode"](params, zb), [z], chunk_size)

  def sample_latents(self, key, n: int) -> np.ndarray:
    """n latents (n, latent_dim) from the prior; for a pretrained model without one,
    encoded training images drawn uniformly (`latents`)."""
    z = self._prior(key, int(n))
    if z is not None:
      return np.asarray(z, np.float32)
    if self.latents is None:
      raise ValueError("this generator has neither a prior nor encoded training images")
    return self.latents[np.asarray(jax.random.randint(key, (int(n),), 0, len(self.latents)))]

  def attribute_probs(self, images, chunk_size: int = 256) -> np.ndarray:
    if self.predictor_def is None:
      raise ValueError("this generator has no attribute predictor (fit without attributes)")
    x = validation.check_images(images, self.image_shape)
    return map_in_chunks(
        lambda xb: _attribute_program(self.predictor_def, self.predictor_params, xb), [x],
        chunk_size)

  def as_pretrained(self) -> PretrainedGenerator:
    """The built-in VAE as a frozen `PretrainedGenerator` (encoder mean, N(0, I) prior),
    e.g. to explain a classifier of other images of the same shape; its attribute
    predictor is not part of it."""
    if self.pretrained is not None:
      return self.pretrained
    vae_def, params, shape = self.vae_def, self.vae_params, self.latent_shape
    return PretrainedGenerator(
        lambda x: nnx.merge(vae_def, params).encode(x)[0].reshape((x.shape[0],) + shape),
        lambda z: nnx.merge(vae_def, params).decode(z), shape, self.image_shape,
        lambda key, n: jax.random.normal(key, (n,) + shape))


@functools.partial(jax.jit, static_argnums=0)
def _attribute_program(graphdef, params, images):
  return jax.nn.sigmoid(nnx.merge(graphdef, params)(images))


def architecture(cfg, image_shape) -> dict:
  return {"image_shape": [int(d) for d in image_shape], "latent_dim": int(cfg.latent_dim),
          "vae_features": [int(f) for f in cfg.vae_features],
          "spatial_latent": bool(cfg.spatial_latent),
          "predictor_features": [int(f) for f in cfg.predictor_features]}


def build_vae(arch: dict, seed: int = 0) -> ConvVAE:
  return ConvVAE(tuple(arch["image_shape"]), latent_dim=int(arch["latent_dim"]),
                 features=tuple(arch["vae_features"]),
                 spatial=bool(arch.get("spatial_latent", False)), rngs=nnx.Rngs(seed))


def builtin_latent_shape(arch: dict) -> tuple[int, ...]:
  return vae_latent_shape(arch["image_shape"], arch["latent_dim"], len(arch["vae_features"]),
                          bool(arch.get("spatial_latent", False)))


def build_predictor(arch: dict, num_attributes: int, seed: int = 0) -> AttributePredictor:
  return AttributePredictor(int(arch["image_shape"][-1]), num_attributes,
                            features=tuple(arch["predictor_features"]), rngs=nnx.Rngs(seed))


def build_shift(latent_shape, num_entries: int, hidden, seed: int = 0):
  """An MLP shift for a latent vector, a convolutional one for a latent grid (h, w, c)."""
  hidden, rngs = tuple(int(h) for h in hidden), nnx.Rngs(seed)
  if len(latent_shape) == 3:
    return ConvShiftPredictor(latent_shape, num_entries, hidden=hidden, rngs=rngs)
  return ShiftPredictor(int(np.prod(latent_shape)), num_entries, hidden=hidden, rngs=rngs)


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


def restore_networks(path, tree_dir, arch, names, metrics, shift_hidden=None,
                     pretrained: PretrainedGenerator | None = None, num_latents: int = 0):
  """(generator, shift params or None) from a tree saved with "vae" (or, for a
  `pretrained` generator given again, "probe" and `num_latents` encoded "latents"),
  optionally "predictor" (when there are attribute names) and "shift" (when shift_hidden
  is given)."""
  vae_def, abstract = None, {}
  if pretrained is None:
    vae_def, abstract["vae"] = nnx.split(nnx.eval_shape(lambda: build_vae(arch)))
    latent_shape = builtin_latent_shape(arch)
  else:
    latent_shape = pretrained.latent_shape
    abstract["probe"] = jax.ShapeDtypeStruct((2,) + pretrained.image_shape, jnp.float32)
    if num_latents:
      abstract["latents"] = jax.ShapeDtypeStruct(
          (int(num_latents), int(np.prod(latent_shape))), jnp.float32)
  pred_def = None
  if names:
    pred_def, abstract["predictor"] = nnx.split(nnx.eval_shape(
        lambda: build_predictor(arch, len(names))))
  if shift_hidden is not None:
    abstract["shift"] = nnx.state(nnx.eval_shape(
        lambda: build_shift(latent_shape, len(names) + 1, shift_hidden)))
  tree = persistence.restore(path, tree_dir, abstract)
  if pretrained is not None and not np.allclose(probe_decodings(pretrained), tree["probe"],
                                                atol=1e-3):
    raise ValueError(f"the generator given decodes differently from the one the explainer at "
                     f"{path} was fitted with; pass that one")
  gen = LatentGenerator(vae_def, tree.get("vae"), pred_def, tree.get("predictor"),
                        tuple(int(d) for d in arch["image_shape"]), tuple(names), dict(arch),
                        dict(metrics), pretrained,
                        None if "latents" not in tree else np.asarray(tree["latents"]))
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


def probe_decodings(g: PretrainedGenerator) -> np.ndarray:
  """The model's decodings of two fixed latents: tells one pretrained generator from
  another (shift checkpoints in a shared workdir, loading a saved explainer)."""
  z = jax.random.normal(jax.random.key(0), (2,) + g.latent_shape)
  return np.asarray(jax.jit(g.decode)(z), np.float32)


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
  held = slice(0, min(len(images), 1024))
  gen.metrics["train_fit"] = evaluate_generator(
      gen, images[held], None if attributes is None else attributes[held],
      int(cfg.chunk_size))
  return gen
