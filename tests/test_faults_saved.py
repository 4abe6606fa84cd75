"""Faults in saved explainers and train checkpoints: each one is refused with the damaged
file's name or skipped for the previous good checkpoint, never loaded silently wrong."""

from __future__ import annotations

import gc
import json
import os
import shutil
import sys
import time
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import cfx_jax
from cfx_jax import image_space, integrity, persistence
from cfx_jax.api import InCallerSpace
from cfx_jax.engine import loop as loop_lib
from cfx_jax.engine.checkpoints import Checkpoints, CheckpointWarning
from cfx_jax.engine.mesh import make_mesh
from conftest import linear_logits, model_config

BACKUP = "Refit it or restore it from a backup"
TINY = {"fido": {"samples": 2, "warn_failures": False, "progress": False},
        "disc": {"bn": 0.0, "manifold": 0.0, "fit_steps": 2, "confidence": (0.6,),
                 "inr_frequencies": 8, "inr_width": 16, "warn_failures": False,
                 "progress": False}}


def _caller_logits(images):
  """The linear classifier, on images in [0, 1]."""
  return linear_logits(images * 2.0 - 1.0)


@pytest.fixture(scope="module")
def explainer(images):
  """A SyCE explainer of [0, 1] images: weights, explainer.json, image_space.json."""
  return cfx_jax.fit_explainer(_caller_logits, (images + 1.0) / 2.0, method="syce",
                               steps=2, batch_size=8, value_range=(0.0, 1.0),
                               config=model_config())


@pytest.fixture(scope="module")
def template(explainer, tmp_path_factory):
  path = str(tmp_path_factory.mktemp("template") / "saved")
  explainer.save(path)
  return path


@pytest.fixture
def saved(template, tmp_path):
  """A fresh copy of the saved explainer, to damage."""
  path = str(tmp_path / "saved")
  shutil.copytree(template, path)
  return path


def _load(path):
  return cfx_jax.load_explainer(path, _caller_logits)


def _files(path):
  return sorted(os.path.relpath(os.path.join(d, f), path)
                for d, _, names in os.walk(path) for f in names)


def _weights_file(path):
  """The largest file of the generator's weights."""
  files = [f for f in _files(path) if f.startswith("generator" + os.sep)]
  return max(files, key=lambda f: os.path.getsize(os.path.join(path, f)))


def _flip(file, at=None):
  with open(file, "r+b") as f:
    data = bytearray(f.read())
    i = len(data) // 2 if at is None else at
    data[i] ^= 0x01
    f.seek(0)
    f.write(data)


def test_an_intact_save_lists_every_file_and_loads(saved, explainer, images):
  with open(os.path.join(saved, integrity.MANIFEST)) as f:
    listed = sorted(json.load(f)["files"])
  assert listed == [f for f in _files(saved) if f != integrity.MANIFEST]
  assert {"explainer.json", image_space.SPACE_FILE} <= set(listed)
  loaded = _load(saved)
  x = (images[:2] + 1.0) / 2.0
  np.testing.assert_allclose(loaded.explain(x).counterfactual,
                             explainer.explain(x).counterfactual, atol=1e-6)


@pytest.mark.parametrize("kind", ["weights", "explainer.json", "image_space.json"])
def test_a_flipped_byte_is_refused_naming_the_file(saved, kind):
  name = _weights_file(saved) if kind == "weights" else kind
  _flip(os.path.join(saved, name))
  with pytest.raises(integrity.DamagedSaveError) as info:
    _load(saved)
  message = str(info.value)
  assert f"{name} does not match its content hash" in message and BACKUP in message
  assert ("JSON was changed after saving" in message) == name.endswith(".json")


def test_a_flipped_byte_in_the_manifest_is_refused(saved):
  manifest = os.path.join(saved, integrity.MANIFEST)
  with open(manifest) as f:
    text = f.read()
  _flip(manifest, at=text.index('"files"') + 20)  # inside a file's hash
  with pytest.raises(integrity.DamagedSaveError, match="manifest.json is damaged"):
    _load(saved)


def test_an_edited_spec_is_refused_as_an_edited_json(saved):
  """spec.residual changes what the generator computes, not its weights' shapes."""
  file = os.path.join(saved, "explainer.json")
  with open(file) as f:
    meta = json.load(f)
  meta["spec"]["residual"] = not meta["spec"]["residual"]
  with open(file, "w") as f:
    json.dump(meta, f, indent=2)
  with pytest.raises(integrity.DamagedSaveError,
                     match="explainer.json does not match .*JSON was changed after saving"):
    _load(saved)


def test_a_resealed_json_that_changes_the_network_is_refused(saved):
  """Past the manifest too, the weights must fit the network the JSON describes."""
  file = os.path.join(saved, "explainer.json")
  with open(file) as f:
    meta = json.load(f)
  meta["spec"]["gen_features"] = [8, 32]
  with open(file, "w") as f:
    json.dump(meta, f, indent=2)
  integrity.write_manifest(saved)
  with pytest.raises(ValueError, match="do not fit the network its JSON describes"):
    _load(saved)


def test_a_truncated_weights_file_is_refused(saved):
  name = _weights_file(saved)
  with open(os.path.join(saved, name), "r+b") as f:
    f.truncate(os.path.getsize(f.name) // 2)
  with pytest.raises(integrity.DamagedSaveError, match=f"{name} does not match"):
    _load(saved)


@pytest.mark.parametrize("kind", ["weights", "explainer.json", "image_space.json",
                                  "manifest.json"])
def test_a_deleted_file_is_refused_naming_it(saved, kind):
  name = _weights_file(saved) if kind == "weights" else kind
  os.remove(os.path.join(saved, name))
  with pytest.raises(integrity.DamagedSaveError, match=f"{name} is missing.*{BACKUP}"):
    _load(saved)


def test_an_added_file_is_refused(saved):
  with open(os.path.join(saved, "generator", "extra"), "w") as f:
    f.write("x")
  with pytest.raises(integrity.DamagedSaveError, match="extra was not written by the save"):
    _load(saved)


def _raise_partway(*args, **kwargs):
  raise OSError("disk full")


@pytest.mark.parametrize("where", ["weights", "image space"])
def test_a_save_killed_midway_leaves_the_old_one_whole(saved, explainer, monkeypatch,
                                                       where):
  before = {f: integrity.file_hash(os.path.join(saved, f)) for f in _files(saved)}
  if where == "weights":
    monkeypatch.setattr(persistence.ocp.StandardCheckpointer, "save", _raise_partway)
  else:
    monkeypatch.setattr(image_space.ImageSpace, "save", _raise_partway)
  with pytest.raises(OSError, match="disk full"):
    explainer.save(saved)
  monkeypatch.undo()
  assert {f: integrity.file_hash(os.path.join(saved, f)) for f in _files(saved)} == before
  assert os.listdir(os.path.dirname(saved)) == ["saved"], "no staging folder left behind"
  assert isinstance(_load(saved), InCallerSpace)


def test_a_save_killed_hard_is_cleaned_up_by_the_next(saved, explainer):
  """A process killed outright leaves its staging folder; the next save replaces it."""
  staging = os.path.join(os.path.dirname(saved), ".saved.saving")
  os.makedirs(os.path.join(staging, "generator"))
  with open(os.path.join(staging, "explainer.json"), "w") as f:
    f.write("{")
  _load(saved)
  explainer.save(saved)
  assert os.listdir(os.path.dirname(saved)) == ["saved"]
  _load(saved)


def test_a_save_killed_between_the_renames_names_the_old_folder(saved):
  os.rename(saved, os.path.join(os.path.dirname(saved), ".saved.old"))
  with pytest.raises(FileNotFoundError, match=r"\.saved\.old: rename it back"):
    _load(saved)


def test_a_save_over_an_older_one_leaves_only_the_new_files(saved, explainer):
  """The older save has an image space; the new one (the bare generator) has none."""
  explainer.inner.save(saved)
  assert image_space.SPACE_FILE not in _files(saved)
  loaded = cfx_jax.load_explainer(saved, linear_logits)
  assert not isinstance(loaded, InCallerSpace)


@pytest.mark.parametrize("method", sorted(TINY))
def test_every_method_seals_its_save(method, images, tmp_path):
  """Methods without weights still seal their settings: an edit is refused."""
  ex = cfx_jax.fit_explainer(linear_logits, images, method=method, config=TINY[method])
  path = str(tmp_path / method)
  ex.save(path)
  cfx_jax.load_explainer(path, linear_logits)
  file = os.path.join(path, "explainer.json")
  with open(file) as f:
    meta = json.load(f)
  meta["config"]["steps"] = 1
  with open(file, "w") as f:
    json.dump(meta, f)
  with pytest.raises(integrity.DamagedSaveError, match="JSON was changed after saving"):
    cfx_jax.load_explainer(path, linear_logits)


# Train checkpoints, on a quadratic ----------------------------------------------------


def _quadratic(workdir, steps):
  """Four steps checkpoint at 2 and 4."""
  def step(state, target):
    w = state["w"] - 0.2 * (state["w"] - target)
    return {"w": w, "step": state["step"] + 1}, {"loss": jnp.sum((w - target) ** 2)}

  state = {"w": jnp.zeros(3), "step": jnp.zeros((), jnp.int32)}
  cfg = loop_lib.LoopConfig("quadratic", steps, log_every=1, checkpoint_every=2,
                            progress=False)
  return loop_lib.train_loop(state, jax.jit(step), lambda i: jnp.full(3, float(i % 3)),
                             cfg, mesh=make_mesh(1), workdir=workdir,
                             meta={"config": {"model": {"width": 3}}})[0]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
  return np.asarray(_quadratic(None, 6)["w"])


def _step_dir(workdir, step):
  return os.path.join(workdir, "quadratic_checkpoints", str(step))


def _state_files(workdir, step):
  root = os.path.join(_step_dir(workdir, step), "state")
  return [os.path.join(d, f) for d, _, names in os.walk(root) for f in names
          if os.sep + "d" + os.sep in os.path.join(d, f)]


def test_checkpoints_are_sealed_once_written(tmp_path):
  _quadratic(str(tmp_path), 4)
  for step in (2, 4):
    assert integrity.problems(_step_dir(str(tmp_path), step)) == []


def test_a_flipped_newest_checkpoint_falls_back_to_the_previous(tmp_path, straight):
  """A flipped byte in the state's data restored "successfully" before manifests."""
  workdir = str(tmp_path)
  _quadratic(workdir, 4)
  for file in _state_files(workdir, 4):
    _flip(file)
  with pytest.warns(CheckpointWarning,
                    match=r"checkpoint 4 .* is damaged \(state.*does not match.*previous"):
    resumed = _quadratic(workdir, 6)
  np.testing.assert_allclose(np.asarray(resumed["w"]), straight, rtol=1e-6)
  assert integrity.problems(_step_dir(workdir, 4)) == [], "step 4 written again"


def test_a_nonfinite_newest_checkpoint_falls_back_to_the_previous(tmp_path, straight):
  workdir = str(tmp_path)
  _quadratic(workdir, 4)
  ckpts = Checkpoints(os.path.join(workdir, "quadratic_checkpoints"))
  meta = ckpts.read_meta(4)
  ckpts.manager.delete(4)
  ckpts.save(4, {"w": jnp.array([0.0, jnp.nan, 1.0]), "step": jnp.array(4, jnp.int32)},
             meta)
  ckpts.close()  # sealed: its bytes are as written, its values are not usable
  assert integrity.problems(_step_dir(workdir, 4)) == []
  with pytest.warns(CheckpointWarning, match="checkpoint 4 .* holds non-finite values"):
    resumed = _quadratic(workdir, 6)
  np.testing.assert_allclose(np.asarray(resumed["w"]), straight, rtol=1e-6)


def test_a_failed_restore_is_one_warning_not_screens_of_tracebacks(tmp_path, monkeypatch):
  """An unsealed newest checkpoint (run killed before the seal) with truncated data:
  orbax fails partway, and its other reads land in a closed event loop."""
  directory = str(tmp_path / "many_checkpoints")
  state = {f"w{i}": jnp.full(256, float(i)) for i in range(64)}
  ckpts = Checkpoints(directory)
  for step in (2, 4):
    ckpts.save(step, state, {"step": step})
  ckpts.close()
  os.remove(os.path.join(directory, "4", integrity.MANIFEST))
  for d, _, names in os.walk(os.path.join(directory, "4", "state")):
    for name in names:
      if os.sep + "d" in d:
        with open(os.path.join(d, name), "r+b") as f:
          f.truncate(os.path.getsize(f.name) // 3)
  late = []
  monkeypatch.setattr(sys, "unraisablehook", lambda u: late.append(repr(u.exc_value)))
  ckpts = Checkpoints(directory)
  with pytest.warns(CheckpointWarning) as record:
    _, meta, step = ckpts.restore_latest_good(state)
  ckpts.close()
  time.sleep(0.5)
  gc.collect()
  messages = [str(w.message) for w in record]
  assert step == 2 and meta == {"step": 2}
  assert any("checkpoint 4" in m and "no manifest.json" in m for m in messages)
  assert any("checkpoint 4" in m and "failed to restore" in m for m in messages)
  # The late errors come from tensorstore's threads, in any number (often none): the
  # hook left in place drops exactly them.
  for error in (RuntimeError("Event loop is closed"), RuntimeError("another")):
    sys.unraisablehook(types.SimpleNamespace(exc_value=error, object=None))
  assert not [m for m in late if "Event loop is closed" in m]
  assert late == ["RuntimeError('another')"]
