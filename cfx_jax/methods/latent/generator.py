"""The generative model (the built-in conv VAE, or a pretrained one used as it is) and the
attribute predictor: their definitions, saving and loading. Training them:
`cfx_jax.methods.latent.fitting`."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from cfx_jax import persistence, validation
from cfx_jax.batching import map_in_chunks
from cfx_jax.models.vae import (AttributePredictor, ConvShiftPredictor, ConvVAE,
                                ShiftPredictor, vae_latent_shape)
from cfx_jax.methods.latent.config import GENERATOR_META


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


def probe_decodings(g: PretrainedGenerator) -> np.ndarray:
  """The model's decodings of two fixed latents: tells one pretrained generator from
  another (shift checkpoints in a shared workdir, loading a saved explainer)."""
  z = jax.random.normal(jax.random.key(0), (2,) + g.latent_shape)
  return np.asarray(jax.jit(g.decode)(z), np.float32)
