"""`train_and_evaluate`: what `python -m train` runs for a config.

A config names a dataset, a classifier to train (skipped when the work directory already
holds one; a damaged save of it is restored from the checkpoint of its finished
training) and optionally an explainer to fit against it and evaluate. Finished stages
are never redone; an interrupted explainer resumes from its last checkpoint. A config
with an `inpainter` section first trains (or reuses) a generative in-filler for FIDO and
scores it against the blur and mean fills; with `classifier = None` that is all it does.

`config.explainer` holds `method`, `seed` and that method's settings: an
`explainer_config` for the generator methods, `cfx_jax.configs.common.method_config` for the
others.

Every setting is checked before anything trains. The work directory records what each
stage was made from (`cfx_jax.engine.workdir`): a rerun with other settings or data is
refused with what changed, unless `runtime.restart` starts the changed stages over.
`config.json` is written once the stages have accepted the work directory, so it always
describes the run whose results are there. One process at a time may use a workdir.
"""

from __future__ import annotations

import json
import logging
import os
import time

import ml_collections

from cfx_jax import report, validation
from cfx_jax.api import checked_settings, fit_explainer
from cfx_jax.engine import lock
from cfx_jax.methods import registry
from cfx_jax.metrics.oracle import load_or_train_oracle
from cfx_jax.jobs import classifier_training
from cfx_jax.jobs.datasets import load_split
from cfx_jax.jobs.evaluate import check_scores, evaluate_explainer, write_outputs
from cfx_jax.jobs.evaluators import TRAIN_JOB_FAMILIES
from cfx_jax.jobs.inpainter_stage import run_inpainter_stage
from cfx_jax.engine.logging import is_main_process

logger = logging.getLogger(__name__)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  workdir = os.path.abspath(workdir)
  # Checked before anything trains; jobs without an explainer have no `eval`.
  scores = check_scores((config.get("eval") or {}).get("scores", TRAIN_JOB_FAMILIES))
  timings = {}
  t0 = time.time()
  train, test = load_split(config.dataset, "train"), load_split(config.dataset, "test")
  timings["data_s"] = time.time() - t0
  check_job_settings(config, len(train["image"]))
  with lock.held(workdir):
    return _run(config, workdir, scores, train, test, timings)


def check_job_settings(config: ml_collections.ConfigDict, num_train: int) -> None:
  """The classifier's and the explainer's settings, checked the way `fit_explainer`
  checks them, before the classifier trains."""
  if config.get("classifier") is not None:
    validation.check_settings(config.classifier, what="classifier", num_images=num_train)
  if config.get("explainer") is not None:
    c = config.explainer
    checked_settings(registry.get(c.method), _settings(c), None, None, num_train)


def _restart(config) -> bool:
  return bool((config.get("runtime") or {}).get("restart", False))


def _write_config(config, workdir: str) -> None:
  if is_main_process():
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=2))


def _run(config, workdir, scores, train, test, timings) -> dict:
  """The stages of `train_and_evaluate`, under the workdir's lock."""
  os.makedirs(workdir, exist_ok=True)

  inpainter_metrics = None
  if config.get("inpainter") is not None:
    t0 = time.time()
    inpainter_metrics = run_inpainter_stage(config.inpainter, train, test, workdir)
    timings["inpainter_s"] = time.time() - t0
    if config.get("classifier") is None:
      results = {"dataset": config.dataset.name, "inpainter": inpainter_metrics,
                 "timings": timings}
      _write_config(config, workdir)
      if is_main_process():
        report.save_json(os.path.join(workdir, "metrics.json"), results)
      logger.info("wrote %s/inpainter_metrics.json, inpainter.png", workdir)
      return results

  t0 = time.time()
  clf, clf_metrics = classifier_training.load_or_train_classifier(
      config.classifier, train, test, workdir, restart=_restart(config))
  timings["classifier_s"] = time.time() - t0
  logger.info("classifier test accuracy: %.4f", clf_metrics["test_accuracy"])
  results = {"dataset": config.dataset.name, "classifier": clf_metrics}
  if inpainter_metrics is not None:
    results["inpainter"] = inpainter_metrics

  if config.get("explainer") is None:
    _write_config(config, workdir)
    if is_main_process():
      report.save_json(os.path.join(workdir, "metrics.json"), {**results, "timings": timings})
    return results

  t0 = time.time()
  name = config.explainer.method
  explainer = fit_job_explainer(config.explainer, clf, train, workdir, restart=_restart(config))
  _write_config(config, workdir)
  timings["explainer_s"] = time.time() - t0
  t0 = time.time()
  oracle = None
  if "truth" in scores and config.eval.get("oracle_steps"):
    oracle = load_or_train_oracle(os.path.join(workdir, "oracle"), train, test,
                                  steps=int(config.eval.oracle_steps))
    timings["oracle_s"] = time.time() - t0
    t0 = time.time()
  metrics, out = evaluate_explainer(explainer, test, num_images=config.eval.num_images,
                                    oracle=oracle, scores=scores)
  timings["evaluate_s"] = time.time() - t0
  results["timings"] = timings
  selection = getattr(explainer, "selection", None)
  write_outputs(workdir, name, test, metrics, out, extra=results,
                grid_rows=config.eval.grid_rows, oracle=oracle, selection=selection)
  if selection:
    results["selection"] = selection
  if hasattr(explainer, "report") and is_main_process():  # e.g. CAE's code-space plot
    n = config.eval.num_images
    explainer.report(workdir, test["image"][:n], test.get("label", out.predicted)[:n])
  results["explainer"] = metrics
  logger.info("%s", json.dumps(results["explainer"], indent=2))
  logger.info("wrote %s/report.md, explanations.png, metrics.json", workdir)
  return results


def _settings(c: ml_collections.ConfigDict) -> dict:
  return {k: v for k, v in c.to_dict().items() if k not in ("method", "seed")}


def fit_job_explainer(c: ml_collections.ConfigDict, clf, train: dict, workdir: str, *,
                      restart: bool = False):
  """Fit `c.method` with the rest of `c` as its settings; a rerun resumes from the
  checkpoints in `workdir` and saves the explainer to `<workdir>/explainer` again."""
  attributes = train.get("attributes") if registry.get(c.method).uses_attributes else None
  return fit_explainer(clf, train["image"], method=c.method, seed=int(c.get("seed", 0)),
                       workdir=workdir, config=_settings(c), attributes=attributes,
                       restart=restart)
