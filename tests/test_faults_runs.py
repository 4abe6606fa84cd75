"""Faults in how runs are started: a workdir reused with other settings, two writers on
one workdir, settings that cannot train, and a classifier an explainer cannot learn from.
Each is refused before anything trains, with a message that names the cause."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import cfx_jax
from cfx_jax import persistence
from cfx_jax.configs import common
from cfx_jax.engine import lock, workdir as workdir_lib
from cfx_jax.engine.preemption import NonFiniteError
from cfx_jax.jobs.train import train_and_evaluate
from conftest import IMAGE_SHAPE, linear_logits, model_config, random_images


def _fit(images, workdir=None, *, seed=0, restart=False, classifier=linear_logits, **cfg):
  steps = cfg.pop("steps", 2)
  return cfx_jax.fit_explainer(classifier, images, method="syce", steps=steps, batch_size=8,
                               seed=seed, workdir=workdir, restart=restart,
                               config=model_config(**cfg))


@pytest.fixture(scope="module")
def template(images, tmp_path_factory):
  """A workdir of a finished two-step SyCE fit."""
  path = str(tmp_path_factory.mktemp("runs") / "template")
  _fit(images, path)
  return path


@pytest.fixture
def workdir(template, tmp_path):
  path = str(tmp_path / "work")
  shutil.copytree(template, path)
  return path


# Workdir identity -------------------------------------------------------------------

@pytest.mark.parametrize("change, shown", [
    (dict(learning_rate=1e-3), "explainer.learning_rate: 0.0001 -> 0.001"),
    (dict(seed=1), "explainer.seed: 0 -> 1"),
    (dict(other_images=True), "explainer.images: "),
    (dict(model={"gen_features": (8, 8), "disc_features": (8, 16)}),
     "explainer.model.gen_features: [8, 16] -> [8, 8]"),
])
def test_a_rerun_with_other_settings_is_refused_with_what_changed(workdir, images, change,
                                                                  shown):
  x = random_images(32, seed=5) if change.pop("other_images", False) else images
  before = open(os.path.join(workdir, "identity.json")).read()
  with pytest.raises(ValueError, match="with other settings") as info:
    _fit(x, workdir, **change)
  assert shown in str(info.value) and "restart=True" in str(info.value)
  assert open(os.path.join(workdir, "identity.json")).read() == before


def test_reporting_settings_and_more_steps_resume(workdir, images):
  _fit(images, workdir, steps=4, log_every=2, checkpoint_every=4, keep_checkpoints=1,
       progress=False)
  with open(os.path.join(workdir, "explainer_metrics.jsonl")) as f:
    steps = [json.loads(line)["step"] for line in f]
  assert steps == [1, 2, 4]  # the first two from the finished run, then continued
  assert workdir_lib.read(workdir)[0]["identity"]["steps"] == 4


def test_restart_starts_over_and_matches_a_fresh_fit(workdir, images, tmp_path):
  with pytest.warns(workdir_lib.WorkdirWarning, match="learning_rate: 0.0001 -> 0.001"):
    restarted = _fit(images, workdir, restart=True, learning_rate=1e-3)
  fresh = _fit(images, str(tmp_path / "fresh"), learning_rate=1e-3)
  for a, b in zip(jax.tree.leaves(restarted.gen_params), jax.tree.leaves(fresh.gen_params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert workdir_lib.read(workdir)[0]["identity"]["learning_rate"] == 1e-3


def _classifier_job(**classifier):
  d = common.lesions(num_train=64, num_test=16)
  d.kwargs.image_size = 16
  c = common.experiment(d, method=None)
  c.classifier.steps, c.classifier.num_devices, c.classifier.progress = 2, 1, False
  c.classifier.features, c.classifier.batch_size = (8,), 16
  c.classifier.update(classifier)
  return c


@pytest.fixture(scope="module")
def job_template(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("job") / "template")
  train_and_evaluate(_classifier_job(), path)
  return path


def test_the_train_job_reuses_its_classifier_only_for_the_same_settings(job_template,
                                                                       tmp_path):
  path = str(tmp_path / "job")
  shutil.copytree(job_template, path)
  config_json = open(os.path.join(path, "config.json")).read()
  with pytest.raises(ValueError, match="classifier.learning_rate: 0.002 -> 0.001"):
    train_and_evaluate(_classifier_job(learning_rate=1e-3), path)
  assert open(os.path.join(path, "config.json")).read() == config_json
  weights = os.path.getmtime(os.path.join(path, "classifier", "manifest.json"))
  train_and_evaluate(_classifier_job(log_every=1, checkpoint_every=1), path)  # reused
  assert os.path.getmtime(os.path.join(path, "classifier", "manifest.json")) == weights
  c = _classifier_job(learning_rate=1e-3)
  c.runtime.restart = True
  with pytest.warns(workdir_lib.WorkdirWarning, match="classifier in .* starts over"):
    train_and_evaluate(c, path)
  with open(os.path.join(path, "config.json")) as f:
    assert json.load(f)["classifier"]["learning_rate"] == 1e-3


def _truncate_weights(folder):
  files = sorted(os.path.join(d, f) for d, _, names in os.walk(os.path.join(folder, "state"))
                 for f in names if os.path.getsize(os.path.join(d, f)) > 64)
  with open(files[-1], "r+b") as f:
    f.truncate(os.path.getsize(files[-1]) // 2)


def test_a_damaged_classifier_save_is_restored_from_its_finished_checkpoint(job_template,
                                                                            tmp_path):
  from cfx_jax.engine.checkpoints import CheckpointWarning
  from cfx_jax.jobs.classifier_training import load_classifier
  path = str(tmp_path / "job")
  shutil.copytree(job_template, path)
  _truncate_weights(os.path.join(path, "classifier"))
  with pytest.warns(CheckpointWarning, match=r"classifier at .* is damaged: state/.* does "
                                             r"not match .*restored it from .*classifier_"
                                             r"checkpoints"):
    results = train_and_evaluate(_classifier_job(), path)
  before = load_classifier(os.path.join(job_template, "classifier"))
  after = load_classifier(os.path.join(path, "classifier"))  # rewritten whole
  assert jax.tree.all(jax.tree.map(np.array_equal, before.params, after.params))
  with open(os.path.join(job_template, "metrics.json")) as f:
    assert results["classifier"] == json.load(f)["classifier"]


@pytest.mark.parametrize("checkpoints", ["deleted", "damaged"])
def test_a_damaged_classifier_save_without_a_usable_checkpoint_is_refused(job_template,
                                                                          tmp_path,
                                                                          checkpoints):
  from cfx_jax.integrity import DamagedSaveError
  path = str(tmp_path / "job")
  shutil.copytree(job_template, path)
  _truncate_weights(os.path.join(path, "classifier"))
  where = os.path.join(path, "classifier_checkpoints")
  if checkpoints == "deleted":
    shutil.rmtree(where)
  else:
    for step in os.listdir(where):
      if step.isdigit():
        _truncate_weights(os.path.join(where, step))
  with pytest.warns() if checkpoints == "damaged" else contextlib.nullcontext():
    with pytest.raises(DamagedSaveError, match=r"state/.* does not match .*No usable "
                                               r"checkpoint in .*classifier_checkpoints"):
      train_and_evaluate(_classifier_job(), path)


# One writer per workdir ------------------------------------------------------------

def test_a_second_writer_is_refused_naming_the_holder(workdir, images):
  holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
  try:
    with open(os.path.join(workdir, workdir_lib.LOCK), "w") as f:
      json.dump({"pid": holder.pid, "host": socket.gethostname()}, f)
    with pytest.raises(ValueError, match=f"in use by process {holder.pid} on host "
                                         f"{socket.gethostname()}"):
      _fit(images, workdir)
  finally:
    holder.kill()
    holder.wait()


def test_a_stale_lock_is_taken_over_with_a_warning(workdir, images):
  gone = subprocess.Popen([sys.executable, "-c", "pass"])
  gone.wait()
  with open(os.path.join(workdir, workdir_lib.LOCK), "w") as f:
    json.dump({"pid": gone.pid, "host": socket.gethostname()}, f)
  with pytest.warns(workdir_lib.WorkdirWarning, match=f"process {gone.pid} .* no longer runs"):
    _fit(images, workdir)
  assert not os.path.exists(os.path.join(workdir, workdir_lib.LOCK))  # released


def test_the_lock_is_reentrant_in_one_process(tmp_path):
  with lock.held(str(tmp_path)):
    with lock.held(str(tmp_path)):
      pass
    assert lock.holder(str(tmp_path / workdir_lib.LOCK))["pid"] == os.getpid()
  assert not os.path.exists(tmp_path / workdir_lib.LOCK)


# Settings checked before anything trains ---------------------------------------------

@pytest.mark.parametrize("kwargs, message", [
    (dict(steps=-5), "steps must be >= 1"),
    (dict(config={"steps": 0}), "steps must be a whole number >= 1, got 0"),
    (dict(config={"learning_rate": -1.0}), "learning_rate must be positive and finite"),
    (dict(config={"learning_rate": float("nan")}), "learning_rate must be positive"),
    (dict(config={"keep_checkpoints": 0}), "keep_checkpoints must be a whole number >= 1"),
    (dict(config={"checkpoint_every": 0}), "checkpoint_every must be a whole number >= 1"),
    (dict(config={"log_every": 0}), "log_every must be a whole number >= 1"),
    (dict(batch_size=1024), "batch_size 1024 is larger than the 32 images"),
    (dict(method="latent", config={"batch_size": 64}), "larger than the 32 images"),
])
def test_impossible_settings_are_refused_before_training(images, tmp_path, kwargs, message):
  with pytest.raises(ValueError, match=message):
    cfx_jax.fit_explainer(linear_logits, images, **{"method": "syce", **kwargs},
                          workdir=str(tmp_path / "w"))
  assert not os.path.exists(tmp_path / "w")


@pytest.mark.parametrize("where, setting, value, message", [
    ("classifier", "checkpoint_every", 0, "classifier checkpoint_every must be"),
    ("classifier", "batch_size", 1024, "classifier batch_size 1024 is larger than the 64"),
    ("explainer", "learning_rate", -1.0, "syce learning_rate must be positive"),
    ("explainer", "steps", 0, "syce steps must be a whole number >= 1"),
])
def test_the_train_job_checks_every_setting_before_the_classifier_trains(tmp_path, where,
                                                                         setting, value,
                                                                         message):
  c = _classifier_job()
  c.explainer = cfx_jax.explainer_config("syce")
  c[where][setting] = value
  with pytest.raises(ValueError, match=message):
    train_and_evaluate(c, str(tmp_path))
  assert not os.listdir(tmp_path)


# The classifier an explainer learns from ---------------------------------------------

@pytest.mark.parametrize("broken, shown", [
    (lambda x: jax.lax.stop_gradient(linear_logits(x)), "gradient .* is zero"),
    (lambda x: jnp.round(linear_logits(x) / 50.0) * 50.0 + 3.0, "gradient .* is zero"),
])
def test_a_classifier_without_a_gradient_is_refused_at_fit_start(images, broken, shown):
  with pytest.raises(ValueError, match=shown):
    _fit(images, classifier=broken)


def _nan_near(images):
  """The linear classifier, NaN on images close to (but not one of) `images`: finite on
  the data and on noise, non-finite on what a generator makes of the data."""
  data = jnp.asarray(images)

  def logits(x):
    d = jnp.mean((x[:, None] - data[None]) ** 2, axis=(2, 3, 4)).min(axis=1)
    near = (d > 1e-9) & (d < 0.05)
    return linear_logits(x) + jnp.where(near, jnp.nan, 0.0)[:, None]
  return logits


def test_nonfinite_outputs_at_explain_time_name_the_images(images):
  explainer = _fit(images)
  bad = images.copy()
  bad[3] = 0.5
  clf = cfx_jax.as_classifier(lambda x: linear_logits(x) + jnp.where(
      jnp.all(x == 0.5, axis=(1, 2, 3)), jnp.nan, 0.0)[:, None], IMAGE_SHAPE)
  broken = type(explainer)(explainer.method, explainer.spec, explainer.gen_def,
                           explainer.gen_params, clf, chunk_size=8)
  with pytest.raises(ValueError, match=r"non-finite outputs .* on 1 of 32 images: "
                                       r"indices \[3\]"):
    broken.explain(bad)


@pytest.mark.parametrize("method", ["fido", "disc"])
def test_nonfinite_outputs_name_the_images_for_explainers_used_directly(images, method):
  from cfx_jax.methods.disc.explainer import DiscExplainer
  from cfx_jax.methods.fido.explainer import FidoExplainer
  clf = cfx_jax.as_classifier(lambda x: linear_logits(x) + jnp.where(
      jnp.all(x == 0.5, axis=(1, 2, 3)), jnp.nan, 0.0)[:, None], IMAGE_SHAPE)
  make, config = {
      "fido": (FidoExplainer, {"samples": 2, "progress": False}),
      "disc": (DiscExplainer, {"bn": 0.0, "manifold": 0.0, "fit_steps": 2,
                               "confidence": (0.6,), "inr_frequencies": 8,
                               "inr_width": 16, "progress": False})}[method]
  bad = images[:8].copy()
  bad[[2, 5]] = 0.5
  with pytest.raises(ValueError, match=r"non-finite outputs .* on 2 of 8 images: "
                                       r"indices \[2, 5\]"):
    make(clf, config).explain(bad)


def test_a_nonfinite_loss_says_the_classifier_is_the_cause(images):
  with pytest.raises(NonFiniteError, match="the cause is the classifier, not the learning "
                                           "rate"):
    _fit(images, classifier=_nan_near(images))


def test_a_nonfinite_loss_from_training_suggests_a_lower_learning_rate(images):
  with pytest.raises(NonFiniteError, match="classifier's outputs are finite .* try a "
                                           "lower learning rate"):
    _fit(images, learning_rate=1e30, b1=0.0)


def test_the_fingerprint_holds_real_images(images, template, tmp_path):
  """Two classifiers with the same logits on noise but other ones on the data."""
  meta = persistence.read_meta(os.path.join(template, "explainer"), "explainer.json", "x")
  fp = meta["classifier_fingerprint"]
  assert len(fp["outputs"]) == 8 + 4 and fp["images"]
  data = jnp.asarray(images[:4])

  def other(x):  # the class flipped on the fit's first images only
    on_data = jnp.mean((x[:, None] - data[None]) ** 2, axis=(2, 3, 4)).min(axis=1) < 1e-6
    return linear_logits(x) * jnp.where(on_data, -1.0, 1.0)[:, None]
  with pytest.raises(ValueError, match="made for another classifier"):
    cfx_jax.load_explainer(os.path.join(template, "explainer"), other)
  assert cfx_jax.load_explainer(os.path.join(template, "explainer"), linear_logits)


def test_a_fingerprint_saved_without_images_is_checked_on_noise(classifier):
  from cfx_jax.classifier import check_fingerprint
  old = classifier.fingerprint()  # no probe images: the logits on noise alone
  assert isinstance(old, list) and len(old) == 8
  assert check_fingerprint(old, classifier, "old save") is classifier
  with pytest.raises(ValueError, match="another classifier"):
    check_fingerprint((np.asarray(old) + 1.0).tolist(), classifier, "old save")
