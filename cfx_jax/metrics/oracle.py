"""An independent judge of counterfactuals: a second classifier of the same task.

It differs from the explained classifier in architecture (GroupNorm instead of
BatchNorm, strided 5x5/3x3 convolutions instead of max pooling, other widths), seed and
training: every batch is jittered in colour, brightness, contrast and noise, so a tint
or faint texture that flips the explained classifier does not flip it. Trained once per
dataset and cached in a directory with a fingerprint of its training data.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from cfx_jax import data as data_lib
from cfx_jax import persistence
from cfx_jax.batching import map_in_chunks
from cfx_jax.methods.augment import jitter
from cfx_jax.training.logging import Progress


class OracleNet(nnx.Module):
  """5x5 stem, two stride-2 stages, GroupNorm + SiLU, global average pooling."""

  def __init__(self, channels: int, num_classes: int, *,
               features: tuple[int, ...] = (48, 96, 160), rngs: nnx.Rngs):
    self.convs = nnx.List()
    self.norms = nnx.List()
    prev = channels
    for i, f in enumerate(features):
      self.convs.append(nnx.Conv(prev, f, (5, 5) if i == 0 else (3, 3),
                                 strides=1 if i == 0 else 2, rngs=rngs))
      self.norms.append(nnx.GroupNorm(f, num_groups=8, rngs=rngs))
      prev = f
    self.head = nnx.Linear(prev, num_classes, rngs=rngs)

  def features(self, x: jax.Array) -> jax.Array:
    for conv, norm in zip(self.convs, self.norms):
      x = jax.nn.silu(norm(conv(x)))
    return jnp.mean(x, axis=(1, 2))

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.head(self.features(x))


@dataclasses.dataclass(frozen=True)
class Oracle:
  """A trained OracleNet with its test accuracy; `predict` and `features` on arrays."""

  graphdef: object
  params: object
  num_classes: int
  test_accuracy: float

  def _apply(self, method: str, images, chunk_size: int = 256) -> np.ndarray:
    fn = _compiled(self.graphdef, method)
    return map_in_chunks(lambda x: fn(self.params, x), [images], chunk_size)

  def predict(self, images) -> np.ndarray:
    return np.argmax(self._apply("__call__", images), axis=-1).astype(np.int32)

  def features(self, images) -> np.ndarray:
    return self._apply("features", images)


_COMPILED: dict = {}


def _compiled(graphdef, method: str):
  key = (graphdef, method)
  if key not in _COMPILED:
    _COMPILED[key] = jax.jit(
        lambda params, x: getattr(nnx.merge(graphdef, params), method)(x))
  return _COMPILED[key]


def fingerprint(images: np.ndarray, labels: np.ndarray) -> str:
  """Content hash of a training set: a cached oracle is reused only for the same data."""
  h = hashlib.sha256()
  for a in (np.ascontiguousarray(images, np.float32), np.ascontiguousarray(labels, np.int32)):
    h.update(str(a.shape).encode())
    h.update(a.tobytes())
  return h.hexdigest()[:16]


def train_oracle(train: dict, test: dict, *, steps: int = 1200, batch_size: int = 64,
                 learning_rate: float = 2e-3, seed: int = 17,
                 progress: bool = True) -> Oracle:
  """Supervised training on jittered batches; deterministic from `seed`."""
  images, labels = np.asarray(train["image"], np.float32), np.asarray(train["label"])
  num_classes = int(max(labels.max(), np.max(test["label"]))) + 1
  model = OracleNet(images.shape[-1], num_classes, rngs=nnx.Rngs(seed))
  graphdef, params = nnx.split(model)
  tx = optax.adamw(optax.cosine_decay_schedule(learning_rate, steps), weight_decay=1e-4)
  opt_state = tx.init(params)

  @jax.jit
  def step(params, opt_state, key, x, y):
    def loss_fn(p):
      logits = nnx.merge(graphdef, p)(jitter(key, x))
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  dataset = data_lib.batches(data_lib.ArraySource({"image": images, "label": labels}),
                             batch_size, seed=seed)
  key = jax.random.key(seed)
  bar = Progress(steps, desc="oracle", enabled=progress)
  for i in range(steps):
    b = dataset[i]
    params, opt_state, loss = step(params, opt_state, jax.random.fold_in(key, i),
                                   b["image"], b["label"])
    if (i + 1) % 100 == 0 or i + 1 == steps:
      bar.update(i + 1, {"loss": float(loss)})
  bar.close()
  oracle = Oracle(graphdef, params, num_classes, 0.0)
  accuracy = float(np.mean(oracle.predict(test["image"]) == np.asarray(test["label"])))
  return dataclasses.replace(oracle, test_accuracy=accuracy)


def load_or_train_oracle(path: str, train: dict, test: dict, *, progress: bool = True,
                         **settings) -> Oracle:
  """The oracle cached at `path` if it was trained on the same data and settings."""
  key = {"data": fingerprint(train["image"], train["label"]),
         "settings": {k: settings[k] for k in sorted(settings)}}
  meta_file = os.path.join(path, "oracle.json")
  if os.path.exists(meta_file):
    meta = persistence.read_meta(path, "oracle.json", "oracle")
    if meta.get("key") == key:
      shape, k = train["image"].shape[-1], meta["num_classes"]
      abstract = nnx.eval_shape(lambda: OracleNet(shape, k, rngs=nnx.Rngs(0)))
      graphdef, abstract_params = nnx.split(abstract)
      params = persistence.restore(path, "state", abstract_params)
      return Oracle(graphdef, params, k, meta["test_accuracy"])
  oracle = train_oracle(train, test, progress=progress, **settings)
  persistence.save(path, "oracle.json", {"key": key, "num_classes": oracle.num_classes,
                                         "test_accuracy": oracle.test_accuracy},
                   "state", oracle.params)
  return oracle
