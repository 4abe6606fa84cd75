"""Scaling out: mesh layouts, several processes, preemption, broken checkpoints."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from jax.sharding import PartitionSpec as P

import cfx_jax
from cfx_jax.methods import ModelSpec
from cfx_jax.engine import runtime
from cfx_jax.methods.conditional import gan, get_recipe
from cfx_jax.engine import mesh as mesh_lib

import tiny_job_config
from conftest import IMAGE_SHAPE, linear_logits, linear_predict, model_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 4
SPEC = ModelSpec(image_size=16, channels=3, num_classes=2, gen_features=(8, 16),
                 disc_features=(8, 16))


def fit_config(num_devices: int) -> dict:
  return model_config(num_devices=num_devices, checkpoint_every=2)


def _leaves(tree):
  return [np.asarray(a) for a in jax.tree.leaves(tree)]


def _assert_close(a, b, **tol):
  assert len(a) == len(b) and a
  for x, y in zip(a, b):
    np.testing.assert_allclose(x, y, **tol)


# Mesh layouts ---------------------------------------------------------------------

def test_fsdp_rule_shards_largest_divisible_dimension():
  mesh = mesh_lib.make_mesh(8, fsdp=2)
  assert mesh.shape == {"data": 4, "fsdp": 2}
  assert mesh_lib.fsdp_sharding(mesh, (3, 3, 16, 32)).spec == P(None, None, None, "fsdp")
  assert mesh_lib.fsdp_sharding(mesh, (3, 3, 7, 5)).spec == P(None, None, None, None)
  assert mesh_lib.fsdp_sharding(mesh, (6, 3)).spec == P("fsdp", None)
  assert mesh_lib.fsdp_sharding(mesh, ()).spec == P()
  with pytest.raises(ValueError, match="fsdp=3 must divide"):
    mesh_lib.make_mesh(8, fsdp=3)


@pytest.mark.parametrize("num_devices,fsdp", [(8, 1), (8, 2)])
def test_layouts_match_single_device(images, num_devices, fsdp):
  """data=8 and data=4 x fsdp=2 give the single-device losses and parameters."""
  clf = cfx_jax.as_classifier(linear_logits, IMAGE_SHAPE)
  method = get_recipe("syce")
  pred = linear_predict(images)
  batch = np.stack([images[pred == c][:8] for c in (0, 1)])

  def run(n, f):
    models, state = gan.init(method, SPEC, seed=0, lr=1e-3, b1=0.5)
    mesh = mesh_lib.make_mesh(n, fsdp=f)
    shard = mesh_lib.state_shardings(mesh, state)
    rep, data = mesh_lib.replicated(mesh), mesh_lib.batch_sharding(mesh, 5, axis=1)
    step = jax.jit(gan.make_train_step(method, models, clf.apply, {}),
                   in_shardings=(shard, rep, data), out_shardings=(shard, rep))
    state = jax.device_put(state, shard)
    losses = []
    with jax.set_mesh(mesh):
      for _ in range(3):
        state, m = step(state, None, jax.device_put(batch, data))
        losses.append([float(m["g_loss"]), float(m["d_loss"])])
    return np.array(losses), _leaves(mesh_lib.to_host(state.gen, mesh))

  base_losses, base_params = run(1, 1)
  losses, params = run(num_devices, fsdp)
  np.testing.assert_allclose(losses, base_losses, rtol=1e-4, atol=1e-5)
  _assert_close(params, base_params, rtol=1e-4, atol=1e-5)


# Several processes -----------------------------------------------------------------

# A CAE small enough to fit in seconds, on every device of the two processes.
CAE_SETTINGS = {"steps": 2, "batch_size": 8, "num_devices": 0, "progress": False,
                "log_every": 1, "checkpoint_every": 2, "chunk_size": 16,
                "model": {"features": (8, 16), "content_channels": 8, "mlp_width": 16,
                          "disc_features": (8, 16), "style_dim": 4}}

def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_agree_and_restore_on_one_device(images, tmp_path):
  workdir = tmp_path / "two"
  workdir.mkdir()
  port = _free_port()
  env = {**os.environ, "PYTHONPATH": ROOT}
  env.pop("XLA_FLAGS", None)
  worker = os.path.join(ROOT, "tests", "two_process_worker.py")
  procs = [subprocess.Popen([sys.executable, worker, str(port), str(i), str(workdir)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True) for i in range(2)]
  outs = [p.communicate(timeout=240)[0] for p in procs]
  for p, out in zip(procs, outs):
    assert p.returncode == 0, out[-3000:]
  both = [np.load(workdir / f"params_{i}.npz") for i in range(2)]
  p0, p1 = ([f[k] for k in sorted(f.files, key=lambda s: int(s.split("_")[1]))] for f in both)
  _assert_close(p0, p1, rtol=0, atol=0)

  # The CAE explainer saved by both processes loads on one.
  cae = cfx_jax.load_explainer(str(workdir / "cae" / "explainer"), linear_logits)
  assert cae.prototypes.shape == (2, CAE_SETTINGS["model"]["style_dim"])

  # One process over the same four-device layout sees the same global batches.
  single = cfx_jax.fit_explainer(linear_logits, images, steps=STEPS, batch_size=8,
                                 config=fit_config(4))
  _assert_close(p0, _leaves(single.gen_params), rtol=1e-4, atol=1e-5)

  # The checkpoint of the 2-process, 4-device run resumes on one device.
  resumed = cfx_jax.fit_explainer(linear_logits, images, steps=STEPS + 2, batch_size=8,
                                  workdir=str(workdir), config=fit_config(1))
  assert [row["step"] for row in resumed.history] == [STEPS + 1, STEPS + 2]


def test_unreachable_coordinator_fails_fast_with_a_clear_error():
  c = runtime.runtime_config()
  c.distributed, c.initialization_timeout = True, 2
  c.coordinator_address, c.num_processes, c.process_id = f"127.0.0.1:{_free_port()}", 2, 1
  start = time.monotonic()
  with pytest.raises(ConnectionError, match="did not answer within 2 s"):
    runtime.setup(c)
  assert time.monotonic() - start < 10


# Preemption and broken checkpoints ---------------------------------------------------

def _train_job(workdir):
  env = {**os.environ, "PYTHONPATH": ROOT}
  env.pop("XLA_FLAGS", None)
  return subprocess.Popen(
      [sys.executable, "-m", "train", "--config", "tests/tiny_job_config.py",
       "--workdir", str(workdir), "--config.eval.oracle_steps=0"],
      cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _steps_logged(path) -> int:
  if not os.path.exists(path):
    return 0
  with open(path) as f:
    rows = [json.loads(line) for line in f if line.strip()]
  return rows[-1]["step"] if rows else 0


def _ids(workdir):
  with open(workdir / "example_ids.jsonl") as f:
    return [(row["step"], row["ids"]) for row in map(json.loads, f)]


def _generator(workdir):
  with ocp.StandardCheckpointer() as ckpt:
    return _leaves(ckpt.restore(os.path.abspath(workdir / "explainer" / "generator")))


@pytest.mark.slow
def test_sigterm_then_restart_equals_uninterrupted(tmp_path):
  whole, cut = tmp_path / "whole", tmp_path / "cut"
  uninterrupted = _train_job(whole)  # runs beside the interrupted one
  p = _train_job(cut)
  metrics = cut / "explainer_metrics.jsonl"
  deadline = time.monotonic() + 240
  while _steps_logged(metrics) < 5 and p.poll() is None and time.monotonic() < deadline:
    time.sleep(0.02)
  p.send_signal(signal.SIGTERM)
  out = p.communicate(timeout=120)[0]
  assert p.returncode == 75, out[-3000:]
  stopped = _steps_logged(metrics)
  steps = tiny_job_config.get_config().explainer.steps
  assert 5 <= stopped < steps, "the job must stop early, after a saved step"
  assert ocp.CheckpointManager(os.path.abspath(cut / "checkpoints")).latest_step() == stopped

  p = _train_job(cut)
  out = p.communicate(timeout=300)[0]
  assert p.returncode == 0, out[-3000:]
  out = uninterrupted.communicate(timeout=300)[0]
  assert uninterrupted.returncode == 0, out[-3000:]

  ids = _ids(cut)
  assert [step for step, _ in ids] == list(range(1, steps + 1)), "no batch repeated or skipped"
  assert ids == _ids(whole)
  _assert_close(_generator(cut), _generator(whole), rtol=1e-6, atol=1e-7)


def _compile_in_a_fresh_process(cwd, setting, env):
  """Set up the runtime with `setting`, as the commands do, and compile a small program."""
  code = ("import jax, jax.numpy as jnp\n"
          "from cfx_jax.engine import runtime\n"
          "c = runtime.runtime_config()\n"
          f"c.compilation_cache_dir = {setting!r}\n"
          "runtime.setup(c)\n"
          "jax.jit(lambda x: jnp.sin(x) @ x.T)(jnp.ones((64, 64))).block_until_ready()\n")
  clean = {k: v for k, v in os.environ.items()
           if k not in ("XLA_FLAGS", "XDG_CACHE_HOME", "JAX_COMPILATION_CACHE_DIR",
                        runtime.CACHE_ENV) and not k.startswith("JAX_PERSISTENT_CACHE_")}
  clean.update(PYTHONPATH=ROOT, HOME=str(cwd / "home"), **env)
  subprocess.run([sys.executable, "-c", code], cwd=cwd, env=clean, check=True, timeout=120)


# No compile-time threshold in the environment: JAX's own (1 s) would skip this program.
@pytest.mark.parametrize("setting, env, folder", [
    (None, {}, "home/.cache/cfx_jax/jax"),
    (None, {"XDG_CACHE_HOME": "xdg"}, "xdg/cfx_jax/jax"),
    (None, {runtime.CACHE_ENV: "from_env"}, "from_env"),
    ("from_config", {runtime.CACHE_ENV: "from_env"}, "from_config"),
    (None, {runtime.CACHE_ENV: ""}, None),
])
def test_compilation_cache_location(tmp_path, setting, env, folder):
  env = {k: str(tmp_path / v) if v else v for k, v in env.items()}
  _compile_in_a_fresh_process(tmp_path, setting, env)
  written = sorted(str(p.parent.relative_to(tmp_path)) for p in tmp_path.rglob("*")
                   if p.is_file())
  if folder is None:
    assert not written
  else:
    assert written and set(written) == {folder}, written


def test_the_suite_keeps_its_cache_out_of_home():
  folder = runtime.compilation_cache_dir()
  assert folder == os.path.abspath(os.environ[runtime.CACHE_ENV])
  assert folder == os.path.abspath(os.environ["JAX_COMPILATION_CACHE_DIR"])  # a temporary one
  assert runtime.compilation_cache_dir("") == ""
