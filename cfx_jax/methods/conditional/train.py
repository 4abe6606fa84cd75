"""Train a generative explainer against a frozen classifier: the readable loop.

Data is split by the classifier's own predictions (not ground truth); every global batch
holds the same number of images of each predicted class. The jitted step is the one in
`gan.py`; metrics leave the device only on logging steps.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from cfx_jax import data as data_lib
from cfx_jax import diagnosis
from cfx_jax.classifier import Classifier, as_classifier, check_fingerprint
from cfx_jax.methods import common
from cfx_jax.methods.conditional import config as config_lib
from cfx_jax.methods.conditional.recipe import ModelSpec
from cfx_jax.methods.conditional import get_recipe
from cfx_jax.methods.conditional.explainer import GeneratorExplainer
from cfx_jax.methods.conditional import gan, population, prior
from cfx_jax.engine import mesh as mesh_lib
from cfx_jax.engine.logging import MetricsLog
from cfx_jax.engine.loop import LoopConfig, train_loop


def model_spec(config: ml_collections.ConfigDict, image_shape, num_classes: int) -> ModelSpec:
  h, w, c = image_shape
  if h != w:
    raise ValueError(f"explainers expect square images, got {h}x{w}")
  m = config.model
  return ModelSpec(image_size=h, channels=c, num_classes=num_classes,
                   gen_features=tuple(m.gen_features), disc_features=tuple(m.disc_features),
                   residual=bool(m.residual), shared=m.shared,
                   mask=bool(m.get("mask", False)),
                   infill=bool(m.get("infill", False)),
                   hard_mask=bool(m.get("hard_mask", False)),
                   fill_only=tuple(int(c) for c in m.get("fill_only", ())),
                   mask_grow=int(m.get("mask_grow", 0)), disc_kind=m.get("disc_kind", "global"),
                   dtype=None if m.dtype == "float32" else jnp.dtype(m.dtype))


def fit(name: str, classifier: Classifier, images: np.ndarray, *, config=None, seed: int = 0,
        steps: int | None = None, batch_size: int | None = None,
        workdir: str | None = None) -> GeneratorExplainer:
  """The registry's entry point: `config` is None, a ConfigDict from
  `cfx_jax.explainer_config` or a nested dict of overrides; the keywords win."""
  cfg = resolve_config(name, config, seed=seed, steps=steps, batch_size=batch_size)
  return train_explainer(as_classifier(classifier, images.shape[1:]), images, cfg, workdir)


def resolve_config(name: str, config=None, *, seed: int = 0, steps: int | None = None,
                   batch_size: int | None = None) -> ml_collections.ConfigDict:
  """The full config of a fit: the defaults of `name` with `config` (None, a ConfigDict or
  a nested dict of overrides) and the keywords on top."""
  if isinstance(config, (dict, ml_collections.ConfigDict)):
    common.check_names(name, config, valid_settings(name))
  if config is None:
    cfg = config_lib.explainer_config(name)
  elif isinstance(config, ml_collections.ConfigDict):
    cfg = config.copy_and_resolve_references()
  elif isinstance(config, dict):
    cfg = config_lib.explainer_config(name)
    cfg.update_from_flattened_dict(_flatten(config))
  else:
    raise TypeError(f"config must be a ConfigDict or a dict, got {type(config).__name__}")
  cfg.method = name
  if steps is not None:  # checked by the registry (keyword_settings)
    cfg.steps = int(steps)
  if batch_size is not None:
    cfg.batch_size = int(batch_size)
  cfg.seed = int(seed)
  return cfg


def valid_settings(name: str) -> dict:
  """Every name a config of `name` may set: the defaults', and in `weights` every loss
  term of the method (the defaults list only the ones they change)."""
  valid = config_lib.explainer_config(name).to_dict()
  valid["weights"] = dict(get_recipe(name).default_weights)
  return valid


def _flatten(d: dict, prefix: str = "") -> dict:
  """{"model": {"residual": False}} -> {"model.residual": False}; `weights` stays a dict
  of its own entries, which may name terms the defaults do not list."""
  out = {}
  for k, v in d.items():
    if isinstance(v, dict) and k != "weights":
      out.update(_flatten(v, f"{prefix}{k}."))
    elif isinstance(v, dict):
      for wk, wv in v.items():
        out[f"{prefix}{k}.{wk}"] = wv
    else:
      out[f"{prefix}{k}"] = v
  return out


def train_explainer(classifier: Classifier, images: np.ndarray,
                    config: ml_collections.ConfigDict, workdir: str | None = None) -> GeneratorExplainer:
  """Fit `config.method` to explain `classifier` on `images` (validated, in [-1, 1]).

  In a multi-process job every process passes the same `images`; each reads only its
  own slice of every global batch.
  """
  return train_group(classifier, images, [config], workdir)[0]


def train_group(classifier: Classifier, images: np.ndarray, configs, workdir: str | None = None,
                *, population_mode: str = "auto") -> list[GeneratorExplainer]:
  """Fit one explainer per config in one compiled program: the configs must share
  everything but their loss weights and seeds (`population.group_key`). One config is a
  plain fit; several are a population (`population.py`), each member on the same
  batches (those of the first config's seed)."""
  config = configs[0]
  method = get_recipe(config.method)
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

  logits = classifier.logits(images, config.chunk_size)
  diagnosis.check_outputs(logits, "training images")
  diagnosis.check_gradients(classifier, images)
  predicted = np.argmax(logits, axis=-1).astype(np.int32)
  counts = np.bincount(predicted, minlength=k)
  if np.any(counts == 0):
    missing = np.flatnonzero(counts == 0).tolist()
    raise ValueError(f"the classifier predicts no image as class(es) {missing}; the "
                     "explainer needs images the classifier assigns to every class")
  # The batch of step i is a pure function of (seed, i): the step is the iterator state.
  dataset = data_lib.grouped_batches(data_lib.ArraySource({"image": images}), predicted,
                                     k, per_class, seed=config.seed)

  members = [gan.init(method, spec, seed=c.seed, lr=config.learning_rate, b1=config.b1,
                      disc_lr_scale=float(config.get("disc_lr_scale", 1.0))) for c in configs]
  models = members[0][0]
  traced = population.traced_weights(configs, k)
  mode = population.resolve_mode(population_mode) if len(configs) > 1 else None
  state = population.stack([s for _, s in members], mode) if mode else members[0][1]
  layout = mesh_lib.describe(mesh, batch_size)
  meta = {"method": method.name, "image_shape": list(images.shape[1:]),
          "num_classes": k, "classifier_fingerprint": classifier.fingerprint(),
          "config": config.to_dict(), "layout": layout}
  if len(configs) > 1:
    meta["population"] = {name: np.asarray(v).tolist() for name, v in traced.items()}
    meta["seeds"] = [int(c.seed) for c in configs]

  state_sharding = mesh_lib.state_shardings(mesh, state)
  replicated = mesh_lib.replicated(mesh)
  images_sharding = mesh_lib.batch_sharding(mesh, 5, axis=1)
  state = jax.device_put(state, state_sharding)
  frozen = classifier.params
  prior_graphdef = None
  if method.weights(k, dict(config.weights))["prior"] > 0:
    prior_graphdef, prior_params = prior.fit_class_prior(
        images, predicted, k, steps=config.prior.steps, code_dim=config.prior.code_dim,
        seed=config.seed, workdir=workdir)
    frozen = (frozen, prior_params)
  frozen = jax.device_put(frozen, replicated)
  one_step = gan.make_train_step(method, models, classifier.apply, dict(config.weights),
                                 disc_steps=int(config.get("disc_steps", 1)),
                                 disc_jitter=float(config.get("disc_jitter", 0.0)),
                                 flip_jitter=float(config.get("flip_jitter", 0.0)),
                                 runner_up_share=float(config.get("runner_up_share", 0.0)),
                                 prior_graphdef=prior_graphdef)
  if mode == "loop":  # one compiled member step, called for each member in turn
    member_sharding = state_sharding[0]
    step_fn = population.population_step(
        jax.jit(one_step, in_shardings=(member_sharding, replicated, images_sharding,
                                        replicated),
                out_shardings=(member_sharding, replicated), donate_argnums=0),
        traced, mode)
  else:
    if mode:
      one_step = population.population_step(one_step, traced, mode)
    step_fn = jax.jit(one_step, in_shardings=(state_sharding, replicated, images_sharding),
                      out_shardings=(state_sharding, replicated), donate_argnums=0)

  ids_log = MetricsLog(os.path.join(workdir, "example_ids.jsonl")
                       if workdir and config.get("log_example_ids") else None)

  def batch_at(step):
    local = dataset[step]
    if ids_log.path:
      ids_log.write(step + 1, {}, ids=np.asarray(local["id"]).tolist())
    return data_lib.to_global({"image": local["image"]}, {"image": images_sharding})["image"]

  loop = LoopConfig.from_config(f"explainer/{method.name}", config, steps,
                                checkpoint_dir="checkpoints",
                                metrics_file="explainer_metrics.jsonl",
                                shown=("d_loss", "g_loss", "g_flip"))
  def explainer_of(host, c):
    return GeneratorExplainer(method, spec, models.gen_def, host.gen, classifier,
                              chunk_size=c.chunk_size, map_reference=map_reference(c),
                              config=c.to_dict())

  def advice(state):
    host = mesh_lib.to_host(state, mesh)
    first = population.unstack(host, len(configs))[0] if len(configs) > 1 else host
    return nonfinite_advice(explainer_of(first, config), images)

  state, log = train_loop(
      state, lambda s, images: step_fn(s, frozen, images), batch_at, loop, mesh=mesh,
      workdir=workdir, meta=meta, compare=("method", "image_shape", "num_classes",
                                           "population", "seeds"),
      check_saved=lambda saved: check_fingerprint(saved["classifier_fingerprint"],
                                                  classifier, f"checkpoint in {workdir}"),
      extra_logs=(ids_log,), advice=advice)
  host = mesh_lib.to_host(state, mesh)
  states = population.unstack(host, len(configs)) if len(configs) > 1 else [host]
  explainers = []
  for i, (c, s) in enumerate(zip(configs, states)):
    explainer = explainer_of(s, c)
    explainer.history = population.member_history(log.history, i, len(configs))
    explainer.nonfinite_step = int(s.nonfinite_step)
    explainers.append(explainer)
  if workdir and len(configs) == 1:
    explainers[0].save(os.path.join(workdir, "explainer"))
  return explainers


def nonfinite_advice(explainer: GeneratorExplainer, images: np.ndarray) -> str:
  """Whether the classifier's outputs on the counterfactuals of the last good generator
  are finite: where they are not, the classifier is the cause, not the learning rate."""
  try:
    explainer.explain(images[:diagnosis.PROBE_IMAGES])
  except diagnosis.NonFiniteOutputsError as e:
    return (f"the cause is the classifier, not the learning rate: {e}; it must return "
            "finite outputs on images near the data")
  return ("the classifier's outputs are finite on the training images and on the last "
          "good generator's counterfactuals of them, so training diverged: try a lower "
          "learning rate")


def map_reference(config) -> str:
  """The config's choice, or the method's default for its generator form."""
  if config.map_reference != "auto":
    return config.map_reference
  return get_recipe(config.method).default_map_reference(bool(config.model.residual))
