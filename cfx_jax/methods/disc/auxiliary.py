"""Uncertainty-aware auxiliary model for DISC's manifold-consistency term: an RBF head.

A small conv-BN-ReLU trunk ends in a deterministic radial-basis head (DUQ, van Amersfoort
et al., 2020, arXiv 2003.02037): each class c has a learned projection W_c of the pooled
features and a centroid e_c, and the model outputs kernel values

  K_c(x) = exp(-mean_d (W_c phi(x) - e_c)_d^2 / (2 sigma^2))      in (0, 1].

Training pushes K_y towards 1 and the other kernels towards 0 (one binary cross-entropy
per class); centroids follow an exponential moving average of their class's embeddings.
The uncertainty is 1 - max_c K_c: an image whose features lie near no class centroid is
unlike the training data. Why this and not a softmax deep ensemble or MC dropout: far
from the data, softmax models extrapolate to *confident* logits (a member reads uniform
noise as a certain lesion, and all members agree), so their entropy is lowest exactly
where it should be highest; a distance-aware kernel decays there instead. It is also one
forward pass, which matters inside DISC's optimisation loop.

Simplification: DUQ's two-sided gradient penalty (a double backward pass) is left out to
keep training to seconds; without it the trunk may map some off-data inputs close to a
centroid (feature collapse), so a low uncertainty is weaker evidence than a high one.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from cfx_jax import data as data_lib
from cfx_jax import persistence, validation
from cfx_jax.engine import mesh as mesh_lib
from cfx_jax.engine import state as state_lib
from cfx_jax.engine.loop import LoopConfig, train_loop
from cfx_jax.batching import map_in_chunks
from cfx_jax.models.reference_cnn import conv_blocks
from cfx_jax.models.layers import max_pool2

META_FILE = "auxiliary.json"
# DUQ's initial centroid "count": the first batches move the centroids only gradually.
INITIAL_COUNT = 12.0


def auxiliary_config(**overrides) -> ml_collections.ConfigDict:
  """Small and quick: the model has to be unsure off the data more than it has to be accurate."""
  c = ml_collections.ConfigDict()
  c.features = (16, 32, 32)
  c.embedding = 16             # size d of each class's projection W_c phi(x)
  c.length_scale = 0.1         # sigma of the RBF kernel (DUQ's default)
  c.centroid_momentum = 0.99   # EMA of the class centroids per step
  c.steps = 200
  c.batch_size = 64
  c.learning_rate = 3e-3
  c.weight_decay = 1e-4
  c.seed = 0
  c.log_every = 50
  c.checkpoint_every = 100     # with a workdir, a stopped run resumes from here
  c.progress = False
  unknown = sorted(set(overrides) - set(c.keys()))
  if unknown:
    raise ValueError(f"unknown auxiliary setting(s) {unknown}; available: {sorted(c.keys())}")
  c.update(overrides)
  for name in ("steps", "batch_size", "embedding"):
    if int(c[name]) < 1:
      raise ValueError(f"{name} must be at least 1, got {c[name]}")
  if not c.length_scale > 0:
    raise ValueError(f"length_scale must be positive, got {c.length_scale}")
  if not 0 <= c.centroid_momentum < 1:
    raise ValueError(f"centroid_momentum must lie in [0, 1), got {c.centroid_momentum}")
  return c


class RBFNet(nnx.Module):
  """Conv blocks (conv-BN-ReLU-pool), global average pooling, one RBF kernel per class."""

  def __init__(self, channels: int, num_classes: int, *, features=(16, 32, 32),
               embedding: int = 16, length_scale: float = 0.1, rngs: nnx.Rngs):
    self.convs, self.norms, prev = conv_blocks(channels, features, rngs)
    self.projection = nnx.Param(jax.nn.initializers.he_normal(in_axis=-1, out_axis=(0, 1))(
        rngs.params(), (num_classes, embedding, prev)))
    # Centroid e_c = sum_c / count_c, both moving averages (running statistics, not learned).
    count = jnp.full((num_classes,), INITIAL_COUNT)
    self.centroid_sum = nnx.BatchStat(
        0.05 * jax.random.normal(rngs.params(), (num_classes, embedding)) * count[:, None])
    self.centroid_count = nnx.BatchStat(count)
    self.length_scale = float(length_scale)

  def embed(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    """Per-class embeddings W_c phi(x): (N, K, d)."""
    for i, (conv, norm) in enumerate(zip(self.convs, self.norms)):
      x = jax.nn.relu(norm(conv(x), use_running_average=not train))
      if i < len(self.convs) - 1:
        x = max_pool2(x)
    phi = jnp.mean(x, axis=(1, 2))
    return jnp.einsum("nf,kdf->nkd", phi, self.projection[...])

  def kernels(self, z: jax.Array) -> jax.Array:
    centroids = self.centroid_sum[...] / self.centroid_count[...][:, None]
    dist = jnp.mean(jnp.square(z - centroids), axis=-1)
    return jnp.exp(-dist / (2.0 * self.length_scale ** 2))

  def update_centroids(self, z: jax.Array, onehot: jax.Array, momentum: float) -> None:
    z = jax.lax.stop_gradient(z)
    self.centroid_count[...] = (momentum * self.centroid_count[...]
                                + (1 - momentum) * jnp.sum(onehot, axis=0))
    self.centroid_sum[...] = (momentum * self.centroid_sum[...]
                              + (1 - momentum) * jnp.einsum("nkd,nk->kd", z, onehot))

  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    """Kernel values (N, K) in (0, 1]."""
    return self.kernels(self.embed(x, train=train))


def kernel_uncertainty(kernels: jax.Array) -> jax.Array:
  """1 - max_c K_c: near 0 close to a class centroid, near 1 far from all of them."""
  return 1.0 - jnp.max(kernels, axis=-1)


@dataclasses.dataclass(frozen=True)
class AuxiliaryModel:
  """`apply(params, images (N, H, W, C)) -> kernel values (N, K)`; pure, so DISC can trace it."""

  apply: Callable[[Any, jax.Array], jax.Array]
  params: Any
  num_classes: int
  image_shape: tuple[int, int, int]
  architecture: dict = dataclasses.field(default_factory=dict)  # what `load` rebuilds

  def uncertainty_fn(self, params, images: jax.Array) -> jax.Array:
    """Traceable (N,) uncertainty, for use inside an optimisation."""
    return kernel_uncertainty(self.apply(params, images))

  def kernels(self, images, chunk_size: int = 256) -> np.ndarray:
    x = validation.check_images(images, self.image_shape)
    fn = jax.jit(self.apply)
    return map_in_chunks(lambda xb: fn(self.params, xb), [x], chunk_size)

  def uncertainty(self, images, chunk_size: int = 256) -> np.ndarray:
    """(N,) uncertainty on a large array of images, in compiled chunks."""
    return np.asarray(kernel_uncertainty(jnp.asarray(self.kernels(images, chunk_size))))

  def predict(self, images, chunk_size: int = 256) -> np.ndarray:
    return np.argmax(self.kernels(images, chunk_size), axis=-1).astype(np.int32)


def _build(image_shape, num_classes: int, config, seed: int = 0) -> RBFNet:
  return RBFNet(image_shape[-1], num_classes, features=tuple(config["features"]),
                embedding=int(config["embedding"]), length_scale=float(config["length_scale"]),
                rngs=nnx.Rngs(seed))


def _wrap(module: RBFNet, image_shape, config) -> AuxiliaryModel:
  graphdef, state = nnx.split(module)

  def apply(params, images):
    return nnx.merge(graphdef, params)(images)

  num_classes = int(module.centroid_count[...].shape[0])
  architecture = {"features": [int(f) for f in config["features"]],
                  "embedding": int(config["embedding"]),
                  "length_scale": float(config["length_scale"])}
  return AuxiliaryModel(apply, state, num_classes, tuple(int(d) for d in image_shape),
                        architecture)


def train_auxiliary(config: ml_collections.ConfigDict, train: dict, test: dict | None = None,
                    workdir: str | None = None) -> tuple[AuxiliaryModel, dict]:
  """Train on the classifier's training data (one jitted AdamW step); optionally save.

  Saved to `<workdir>/auxiliary` when `workdir` is given (checkpoints in
  `<workdir>/auxiliary_checkpoints`: a stopped run resumes). Returns the model and metrics
  (test accuracy of argmax_c K_c and mean uncertainty when `test` is given).
  """
  images = validation.check_images(train["image"], name="train images")
  labels = np.asarray(train["label"]).astype(np.int32)
  if labels.shape != (len(images),):
    raise ValueError(f"train labels must have shape ({len(images)},), got {labels.shape}")
  num_classes = int(labels.max()) + 1
  if test is not None:
    num_classes = max(num_classes, int(np.max(test["label"])) + 1)
  num_classes = max(num_classes, 2)
  image_shape = images.shape[1:]
  model = _build(image_shape, num_classes, config, int(config.seed))
  graphdef, params, stats = nnx.split(model, nnx.Param, nnx.BatchStat)
  tx = optax.adamw(optax.cosine_decay_schedule(config.learning_rate, int(config.steps)),
                   weight_decay=config.weight_decay)
  state = state_lib.init(params, tx, stats=stats)
  momentum = float(config.centroid_momentum)

  def train_step(state, batch):
    onehot = jax.nn.one_hot(batch["label"], num_classes)

    def loss_fn(pp):
      m = nnx.merge(graphdef, pp, state["stats"], copy=True)
      z = m.embed(batch["image"], train=True)
      k = jnp.clip(m.kernels(z), 1e-6, 1.0 - 1e-6)
      bce = -(onehot * jnp.log(k) + (1.0 - onehot) * jnp.log1p(-k))
      m.update_centroids(z, onehot, momentum)
      return jnp.mean(jnp.sum(bce, axis=-1)), nnx.state(m, nnx.BatchStat)

    (loss, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
    return state_lib.apply_gradients(state, tx, grads, stats=new_stats), {"loss": loss}

  batch = min(int(config.batch_size), len(images))
  dataset = data_lib.batches(data_lib.ArraySource({"image": images, "label": labels}), batch,
                             seed=int(config.seed))
  mesh = mesh_lib.make_mesh(1)
  meta = {"image_shape": list(image_shape), "num_classes": num_classes,
          "config": {"model": {k: config[k] for k in ("features", "embedding",
                                                      "length_scale")}}}
  state, log = train_loop(
      state, jax.jit(train_step, donate_argnums=0),
      lambda i: {k: v for k, v in dataset[i].items() if k != "id"},
      LoopConfig.from_config("auxiliary", config, int(config.steps)), mesh=mesh,
      workdir=workdir, meta=meta)
  params, stats = jax.device_get((state["params"], state["stats"]))
  loss = log.history[-1]["loss"] if log.history else float("nan")
  aux = _wrap(nnx.merge(graphdef, params, stats), image_shape, config)
  metrics = {"final_loss": float(loss), "num_train": int(len(labels))}
  if test is not None:
    metrics["test_accuracy"] = float(np.mean(aux.predict(test["image"]) == test["label"]))
    metrics["test_uncertainty"] = float(np.mean(aux.uncertainty(test["image"])))
  if workdir:
    save_auxiliary(os.path.join(workdir, "auxiliary"), aux, metrics)
  return aux, metrics


def save_auxiliary(path: str, aux: AuxiliaryModel, metrics: dict | None = None) -> None:
  meta = {"kind": "rbf_head", "image_shape": list(aux.image_shape),
          "num_classes": aux.num_classes, **aux.architecture, "metrics": metrics or {}}
  persistence.save(path, META_FILE, meta, "state", aux.params)


def load_auxiliary(path: str) -> AuxiliaryModel:
  """An auxiliary model saved by `train_auxiliary` / `save_auxiliary`."""
  meta = persistence.read_meta(path, META_FILE, "auxiliary model")
  shape = tuple(meta["image_shape"])
  model = nnx.eval_shape(lambda: _build(shape, meta["num_classes"], meta))
  graphdef, abstract = nnx.split(model)
  return _wrap(nnx.merge(graphdef, persistence.restore(path, "state", abstract)), shape, meta)
