"""Train a generative explainer against a frozen classifier: the readable loop.

Data is split by the classifier's own predictions (not ground truth); every global batch
holds the same number of images of each predicted class. The jitted step is the one in
`gan.py`; metrics leave the device only on logging steps.
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from cfx_jax import config as config_lib
from cfx_jax import data as data_lib
from cfx_jax.classifier import Classifier
from cfx_jax.explainer import Explainer, check_fingerprint
from cfx_jax.methods import ModelSpec, get_method
from cfx_jax.training import gan
from cfx_jax.training import mesh as mesh_lib
from cfx_jax.training.checkpoints import Checkpoints
from cfx_jax.training.logging import MetricsLog, Progress, is_main_process
from cfx_jax.training.preemption import NonFiniteError, Preemption




def model_spec(config: ml_collections.ConfigDict, image_shape, num_classes: int) -> ModelSpec:
  h, w, c = image_shape
  if h != w:
    raise ValueError(f"explainers expect square images, got {h}x{w}")
  m = config.model
  return ModelSpec(image_size=h, channels=c, num_classes=num_classes,
                   gen_features=tuple(m.gen_features), disc_features=tuple(m.disc_features),
                   residual=bool(m.residual), shared=m.shared,
                   mask=bool(m.get("mask", False)), disc_kind=m.get("disc_kind", "global"),
                   dtype=None if m.dtype == "float32" else jnp.dtype(m.dtype))


def train_explainer(classifier: Classifier, images: np.ndarray,
                    config: ml_collections.ConfigDict, workdir: str | None = None) -> Explainer:
  """Fit `config.method` to explain `classifier` on `images` (validated, in [-1, 1]).

  In a multi-process job every process passes the same `images`; each reads only its
  own slice of every global batch.
  """
  method = get_method(config.method)
  k = classifier.num_classes
  spec = model_spec(config, images.shape[1:], k)
  steps = config.steps or config_lib.default_steps(spec.image_size)
  batch_size = config.batch_size or config_lib.default_batch_size(k)
  mesh = mesh_lib.make_mesh(config.num_devices, config.get("fsdp", 1))
  devices = mesh.devices.size
  if len(images) < devices:
    raise ValueError(f"{len(images)} images cannot be spread over {devices} devices")
  per_class = batch_size // k
  if per_class < 1 or batch_size % k:
    raise ValueError(f"batch_size {batch_size} must be a positive multiple of the "
                     f"{k} classes")
  if per_class % devices:
    raise ValueError(f"images per class per batch ({per_class}) must be divisible by the "
                     f"{devices} devices; change batch_size or num_devices")

  predicted = classifier.predict(images, config.chunk_size)
  counts = np.bincount(predicted, minlength=k)
  if np.any(counts == 0):
    missing = np.flatnonzero(counts == 0).tolist()
    raise ValueError(f"the classifier predicts no image as class(es) {missing}; the "
                     "explainer needs images the classifier assigns to every class")
  # The batch of step i is a pure function of (seed, i): the step is the iterator state.
  dataset = data_lib.grouped_batches(data_lib.ArraySource({"image": images}), predicted,
                                     k, per_class, seed=config.seed)

  models, state = gan.init(method, spec, seed=config.seed, lr=config.learning_rate,
                           b1=config.b1, disc_lr_scale=float(config.get("disc_lr_scale", 1.0)))
  layout = mesh_lib.describe(mesh, batch_size)
  meta = {"method": method.name, "image_shape": list(images.shape[1:]),
          "num_classes": k, "classifier_fingerprint": classifier.fingerprint(),
          "config": config.to_dict(), "layout": layout}

  state_sharding = mesh_lib.state_shardings(mesh, state)
  replicated = mesh_lib.replicated(mesh)
  images_sharding = mesh_lib.batch_sharding(mesh, 5, axis=1)
  state = jax.device_put(state, state_sharding)
  clf_params = jax.device_put(classifier.params, replicated)
  step_fn = jax.jit(gan.make_train_step(method, models, classifier.apply,
                                        dict(config.weights),
                                        disc_steps=int(config.get("disc_steps", 1)),
                                        disc_jitter=float(config.get("disc_jitter", 0.0)),
                                        flip_jitter=float(config.get("flip_jitter", 0.0))),
                    in_shardings=(state_sharding, replicated, images_sharding),
                    out_shardings=(state_sharding, replicated), donate_argnums=0)

  ckpts = Checkpoints(os.path.join(workdir, "checkpoints"), keep=config.keep_checkpoints) \
      if workdir else None
  log = MetricsLog(os.path.join(workdir, "explainer_metrics.jsonl") if workdir else None)
  ids_log = MetricsLog(os.path.join(workdir, "example_ids.jsonl")
                       if workdir and config.get("log_example_ids") else None)
  preemption = Preemption()
  try:
    start = 0
    if ckpts is not None:
      restored = ckpts.restore_latest_good(
          state, lambda saved, step: _check_resumable(saved, meta, workdir, classifier,
                                                      steps, step))
      if restored is not None:
        state = restored[0]
        start = int(state.step)
        log.truncate_after(start)
        ids_log.truncate_after(start)
    if is_main_process():
      print(f"explainer/{method.name}: {layout}", flush=True)
    progress = Progress(steps, start, desc=f"explainer/{method.name}", enabled=config.progress)
    with jax.set_mesh(mesh):
      for step in range(start, steps):
        local = dataset[step]
        batch = data_lib.to_global({"image": local["image"]}, {"image": images_sharding})
        state, metrics = step_fn(state, clf_params, batch["image"])
        done = step + 1
        if ids_log.path:
          ids_log.write(done, {}, ids=np.asarray(local["id"]).tolist())
        if done % config.log_every == 0 or done == steps:
          _raise_if_nonfinite(state, mesh)
          row = log.write(done, mesh_lib.to_host(metrics, mesh))
          progress.update(done, {k_: row[k_] for k_ in ("d_loss", "g_loss", "g_flip")})
        preemption.checkpoint_or_stop(ckpts, done, steps, config.checkpoint_every, state,
                                      meta, lambda: _raise_if_nonfinite(state, mesh))
    progress.close()
  finally:
    preemption.restore()
    if ckpts is not None:
      ckpts.close()
  explainer = Explainer(method, spec, models.gen_def, mesh_lib.to_host(state.gen, mesh), classifier,
                        chunk_size=config.chunk_size, map_reference=map_reference(config),
                        config=config.to_dict())
  explainer.history = log.history
  if workdir:
    explainer.save(os.path.join(workdir, "explainer"))
  return explainer


def map_reference(config) -> str:
  """The config's choice, or the method's default for its generator form."""
  if config.map_reference != "auto":
    return config.map_reference
  return get_method(config.method).default_map_reference(bool(config.model.residual))


def _raise_if_nonfinite(state, mesh) -> None:
  bad = int(mesh_lib.to_host(state.nonfinite_step, mesh))
  if bad >= 0:
    raise NonFiniteError(f"losses became non-finite at step {bad}; training stopped and "
                         "the last good checkpoint was kept (try a lower learning rate)")


def _check_resumable(saved: dict, meta: dict, workdir: str, classifier, steps: int,
                     latest_step: int) -> None:
  """A work directory resumes only the same model against the same classifier."""
  for key in ("method", "image_shape", "num_classes"):
    if saved.get(key) != meta[key]:
      raise ValueError(f"checkpoint in {workdir} was made for {key}={saved.get(key)}, "
                       f"this run has {key}={meta[key]}; use another workdir")
  old_model = saved["config"]["model"]
  new_model = json.loads(json.dumps(meta["config"]["model"]))  # tuples read back as lists
  if old_model != new_model:
    raise ValueError(f"checkpoint in {workdir} was made for the model {old_model}, this "
                     f"run asks for {new_model}; use another workdir")
  check_fingerprint(saved["classifier_fingerprint"], classifier, f"checkpoint in {workdir}")
  if latest_step > steps:
    raise ValueError(f"checkpoint in {workdir} is at step {latest_step}, past the {steps} "
                     "steps asked for; ask for at least that many or use another workdir")
