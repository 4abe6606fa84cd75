"""An independent judge of counterfactuals: a second classifier of the same task.

It differs from the explained classifier in architecture (GroupNorm instead of
BatchNorm, strided 5x5/3x3 convolutions instead of max pooling, other widths), seed and
training: every batch is jittered in colour, brightness, contrast and noise, so a tint
or faint texture that flips the explained classifier does not flip it. Trained once per
dataset and cached in a directory with a fingerprint of its training data.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import inspect
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from cfx_jax import data as data_lib
from cfx_jax import persistence
from cfx_jax.batching import map_in_chunks
from cfx_jax.engine import mesh as mesh_lib
from cfx_jax.engine import state as state_lib
from cfx_jax.engine.logging import is_main_process
from cfx_jax.engine.loop import LoopConfig, train_loop
from cfx_jax.data.augment import jitter


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
                 features: tuple[int, ...] = (48, 96, 160),
                 progress: bool = True, workdir: str | None = None,
                 checkpoint_every: int = 300) -> Oracle:
  """Supervised training on jittered batches; deterministic from `seed`. With `workdir`,
  a stopped run resumes from `<workdir>/oracle_checkpoints`. `features`: the OracleNet's
  widths (another judge: another seed and other widths)."""
  images, labels = np.asarray(train["image"], np.float32), np.asarray(train["label"])
  num_classes = int(max(labels.max(), np.max(test["label"]))) + 1
  model = OracleNet(images.shape[-1], num_classes, features=tuple(features),
                    rngs=nnx.Rngs(seed))
  graphdef, params = nnx.split(model)
  tx = optax.adamw(optax.cosine_decay_schedule(learning_rate, steps), weight_decay=1e-4)
  state = state_lib.init(params, tx)
  key = jax.random.key(seed)

  @functools.partial(jax.jit, donate_argnums=0)
  def step(state, batch):
    def loss_fn(p):
      x = jitter(jax.random.fold_in(key, state["step"]), batch["image"])
      logits = nnx.merge(graphdef, p)(x)
      return optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()
    loss, grads = jax.value_and_grad(loss_fn)(state["params"])
    return state_lib.apply_gradients(state, tx, grads), {"loss": loss}

  dataset = data_lib.batches(data_lib.ArraySource({"image": images, "label": labels}),
                             batch_size, seed=seed)
  meta = {"data": fingerprint(images, labels), "num_classes": num_classes,
          "settings": {"steps": steps, "batch_size": batch_size, "learning_rate": learning_rate,
                       "seed": seed}}
  state, _ = train_loop(
      state, step, lambda i: {k: v for k, v in dataset[i].items() if k != "id"},
      LoopConfig("oracle", steps, log_every=100, checkpoint_every=checkpoint_every,
                 progress=progress),
      mesh=mesh_lib.make_mesh(1), workdir=workdir, meta=meta)
  params = jax.device_get(state["params"])
  oracle = Oracle(graphdef, params, num_classes, 0.0)
  accuracy = float(np.mean(oracle.predict(test["image"]) == np.asarray(test["label"])))
  return dataclasses.replace(oracle, test_accuracy=accuracy)


# What `train_oracle` does when a setting is not given: a cache key holds only the
# settings that differ from these, so `steps=1200` finds the oracle trained by default.
_DEFAULTS = {k: p.default for k, p in inspect.signature(train_oracle).parameters.items()
             if p.default is not inspect.Parameter.empty}


def load_or_train_oracle(path: str, train: dict, test: dict, *, progress: bool = True,
                         **settings) -> Oracle:
  """The oracle cached at `path` if it was trained on the same data and settings."""
  changed = {k: v for k, v in settings.items() if k not in _DEFAULTS or v != _DEFAULTS[k]}
  key = json.loads(json.dumps({"data": fingerprint(train["image"], train["label"]),
                               "settings": {k: changed[k] for k in sorted(changed)}}))
  meta_file = os.path.join(path, "oracle.json")
  if os.path.exists(meta_file):
    meta = persistence.read_meta(path, "oracle.json", "oracle")
    if meta.get("key") == key:
      shape, k = train["image"].shape[-1], meta["num_classes"]
      widths = tuple(settings.get("features", _DEFAULTS["features"]))
      abstract = nnx.eval_shape(lambda: OracleNet(shape, k, features=widths,
                                                  rngs=nnx.Rngs(0)))
      graphdef, abstract_params = nnx.split(abstract)
      params = persistence.restore(path, "state", abstract_params)
      return Oracle(graphdef, params, k, meta["test_accuracy"])
  # Checkpoints of an interrupted training, kept apart per data and settings.
  digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
  scratch = os.path.join(path, f"training_{digest}")
  oracle = train_oracle(train, test, progress=progress, workdir=scratch, **settings)
  persistence.save(path, "oracle.json", {"key": key, "num_classes": oracle.num_classes,
                                         "test_accuracy": oracle.test_accuracy},
                   "state", oracle.params)
  if is_main_process():
    shutil.rmtree(scratch, ignore_errors=True)
  return oracle
