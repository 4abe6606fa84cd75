"""Train the reference CNN classifier (the model the explainers explain); save and load it."""

from __future__ import annotations

import logging
import os
import warnings

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from cfx_jax import data as data_lib
from cfx_jax import integrity, persistence, validation
from cfx_jax.classifier import Classifier, from_module
from cfx_jax.models import CNNClassifier
from cfx_jax.engine import mesh as mesh_lib
from cfx_jax.engine import state as state_lib
from cfx_jax.engine import workdir as workdir_lib
from cfx_jax.engine.checkpoints import CheckpointWarning
from cfx_jax.engine.loop import LoopConfig, train_loop

logger = logging.getLogger(__name__)


def classifier_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.features = (32, 64, 128)
  c.steps = 800
  c.batch_size = 64
  c.learning_rate = 2e-3
  c.weight_decay = 1e-4
  c.seed = 0
  c.log_every = 100
  c.checkpoint_every = 200          # a stopped run resumes from here
  c.keep_checkpoints = 2
  c.num_devices = 0
  c.progress = True
  return c


def _build(image_shape, num_classes, features, seed=0) -> CNNClassifier:
  return CNNClassifier(image_shape[-1], num_classes, features=tuple(features),
                       rngs=nnx.Rngs(seed))


class _Unfinished(Exception):
  """A restore-only run found no checkpoint of the finished training."""


def train_classifier(config: ml_collections.ConfigDict, train: dict, test: dict,
                     workdir: str | None = None, *, num_classes: int | None = None,
                     restore_only: bool = False) -> tuple[Classifier, dict]:
  """Supervised training with BatchNorm; returns the frozen classifier and test metrics.

  With `workdir`, a run stopped by SIGTERM resumes from `<workdir>/classifier_checkpoints`.
  `num_classes` defaults to the largest label + 1; give it where the labels may not
  show every class. `restore_only` takes the finished weights from the newest good
  checkpoint and raises `_Unfinished` instead of training a single step.
  """
  num_classes = num_classes or int(max(train["label"].max(), test["label"].max())) + 1
  image_shape = train["image"].shape[1:]
  model = _build(image_shape, num_classes, config.features, config.seed)
  graphdef, params, stats = nnx.split(model, nnx.Param, nnx.BatchStat)
  schedule = optax.cosine_decay_schedule(config.learning_rate, config.steps)
  tx = optax.adamw(schedule, weight_decay=config.weight_decay)
  state = state_lib.init(params, tx, stats=stats)

  def train_step(state, batch):
    def loss_fn(p, s):
      m = nnx.merge(graphdef, p, s, copy=True)
      logits = m(batch["image"], train=True)
      labels = batch["label"]
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
      return loss, (nnx.state(m, nnx.BatchStat), jnp.mean(jnp.argmax(logits, -1) == labels))
    (loss, (new_stats, acc)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state["params"], state["stats"])
    return (state_lib.apply_gradients(state, tx, grads, stats=new_stats),
            {"loss": loss, "acc": acc})

  mesh = mesh_lib.make_mesh(config.num_devices)
  rep = mesh_lib.replicated(mesh)
  shard = {"image": mesh_lib.batch_sharding(mesh, 4), "label": mesh_lib.batch_sharding(mesh, 1)}
  step_fn = jax.jit(train_step, in_shardings=(rep, shard), out_shardings=(rep, rep),
                    donate_argnums=0)
  dataset = data_lib.batches(data_lib.ArraySource({"image": train["image"],
                                                   "label": train["label"]}),
                             config.batch_size, seed=config.seed)

  def batch_at(i):
    if restore_only:
      raise _Unfinished(f"the newest usable one is at step {i} of {config.steps}"
                        if i else "it holds no usable step")
    b = dataset[i]
    return data_lib.to_global({"image": b["image"], "label": b["label"]}, shard)

  meta = {"image_shape": list(image_shape), "num_classes": num_classes,
          "features": list(config.features), "num_train": int(len(train["label"]))}
  state, _ = train_loop(jax.device_put(state, rep), step_fn, batch_at,
                        LoopConfig.from_config("classifier", config, config.steps,
                                               metrics_file="classifier_metrics.jsonl",
                                               shown=("loss", "acc")),
                        mesh=mesh, workdir=workdir, meta=meta)
  params, stats = mesh_lib.to_host((state["params"], state["stats"]))
  clf = from_module(nnx.merge(graphdef, params, stats), image_shape)
  metrics = {"test_accuracy": float(np.mean(clf.predict(test["image"]) == test["label"])),
             "num_train": int(len(train["label"])), "num_test": int(len(test["label"]))}
  if workdir:
    save_classifier(os.path.join(workdir, "classifier"), clf, config, metrics)
  return clf, metrics


def save_classifier(path: str, clf: Classifier, config, metrics: dict) -> None:
  meta = {"image_shape": list(clf.image_shape), "num_classes": clf.num_classes,
          "features": list(config.features), "metrics": metrics}
  persistence.save(path, "classifier.json", meta, "state", clf.params)


def load_or_train_classifier(config: ml_collections.ConfigDict, train: dict, test: dict,
                             workdir: str, *, restart: bool = False
                             ) -> tuple[Classifier, dict]:
  """The classifier saved in `<workdir>/classifier` and its test metrics; where there is
  none, one trained from `config` (and saved there), so a rerun reuses it.

  The workdir records the settings and data it was trained on: a rerun with others is
  refused, or with `restart` trains it (and whatever was made from it) again."""
  identity = {**workdir_lib.settings_identity(validation.flat(config)),
              "images": workdir_lib.data_hash(train["image"], train["label"]),
              "test_images": workdir_lib.data_hash(test["image"], test["label"])}
  workdir_lib.claim(workdir, "classifier", identity, restart=restart)
  path = os.path.join(workdir, "classifier")
  if os.path.exists(path):
    try:
      clf = load_classifier(path)
    except integrity.DamagedSaveError as e:
      return _restore_classifier(config, train, test, workdir, e)
    logger.info("classifier: reusing %s", path)
    return clf, persistence.read_meta(path, "classifier.json", "classifier")["metrics"]
  return train_classifier(config, train, test, workdir)


def _restore_classifier(config, train, test, workdir: str, damage: Exception):
  """A damaged save rebuilt from the checkpoint of its finished training (the workdir's
  identity, already claimed, says it was trained from these settings and data); without
  one, the damage is an error: training again silently would hide it."""
  where = os.path.join(workdir, "classifier_checkpoints")
  damage = str(damage).removesuffix(". Refit it or restore it from a backup")
  why = "there is none"
  if os.path.isdir(where):
    try:
      clf, metrics = train_classifier(config, train, test, workdir, restore_only=True)
    except (_Unfinished, RuntimeError) as e:  # RuntimeError: no step restores
      why = str(e)
    else:
      warnings.warn(f"{damage}; restored it from the finished training in {where} and "
                    "saved it again", CheckpointWarning, stacklevel=3)
      return clf, metrics
  raise integrity.DamagedSaveError(
      f"{damage}. No usable checkpoint in {where} holds its finished training to restore "
      f"it from ({why}); delete {os.path.join(workdir, 'classifier')} to train it again")


def load_classifier(path: str) -> Classifier:
  """The reference CNN saved by `train_classifier`, ready to explain."""
  meta = persistence.read_meta(path, "classifier.json", "classifier")
  shape = tuple(meta["image_shape"])
  model = nnx.eval_shape(lambda: _build(shape, meta["num_classes"], meta["features"]))
  graphdef, abstract = nnx.split(model)
  return from_module(nnx.merge(graphdef, persistence.restore(path, "state", abstract)), shape)
