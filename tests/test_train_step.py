"""The compiled GAN train step: learning, sharding, non-finite guard, determinism."""

from __future__ import annotations

import jax
import numpy as np
import pytest

import cfx_jax
from cfx_jax.methods import ModelSpec
from cfx_jax.methods.conditional import gan, get_recipe
from cfx_jax.engine import mesh as mesh_lib

from conftest import IMAGE_SHAPE, linear_logits, linear_predict

SPEC = ModelSpec(image_size=16, channels=3, num_classes=2, gen_features=(8, 16),
                 disc_features=(8, 16))
METHOD = get_recipe("syce")
PER_CLASS = 8   # divisible by the 8 devices of the sharded mesh
LR = 1e-3


@pytest.fixture(scope="module")
def batch(images):
  """(2, 8, H, W, C): the first eight images the classifier assigns to each class."""
  pred = linear_predict(images)
  return np.stack([images[pred == c][:PER_CLASS] for c in (0, 1)])


@pytest.fixture(scope="module")
def setup():
  clf = cfx_jax.as_classifier(linear_logits, IMAGE_SHAPE)
  models, state = gan.init(METHOD, SPEC, seed=0, lr=LR, b1=0.5)
  return clf, models, state


def _compile(setup, num_devices):
  clf, models, _ = setup
  mesh = mesh_lib.make_mesh(num_devices)
  rep = mesh_lib.replicated(mesh)
  data = mesh_lib.batch_sharding(mesh, 5, axis=1)
  step = jax.jit(gan.make_train_step(METHOD, models, clf.apply, {}),
                 in_shardings=(rep, rep, data), out_shardings=(rep, rep))
  return mesh, rep, data, step


@pytest.fixture(scope="module")
def one_device(setup):
  return _compile(setup, 1)


@pytest.fixture(scope="module")
def eight_devices(setup):
  return _compile(setup, 8)


def _run(compiled, state, clf_params, images, n):
  """`n` steps on the same batch; returns the state and the metrics of every step."""
  mesh, rep, data, step = compiled
  history = []
  with jax.set_mesh(mesh):
    state = jax.device_put(state, rep)
    x = jax.device_put(np.asarray(images), data)
    for _ in range(n):
      state, metrics = step(state, clf_params, x)
      history.append({k: float(v) for k, v in jax.device_get(metrics).items()})
  return jax.device_get(state), history


def _leaves(tree):
  return [np.asarray(a) for a in jax.tree.leaves(tree)]


def _assert_trees_equal(a, b):
  la, lb = _leaves(a), _leaves(b)
  assert len(la) == len(lb)
  for x, y in zip(la, lb):
    np.testing.assert_array_equal(x, y)


def test_steps_lower_flip_loss_and_stay_finite(setup, one_device, batch):
  clf, _, state = setup
  final, history = _run(one_device, state, clf.params, batch, 16)
  for row in history:
    assert all(np.isfinite(v) for v in row.values()), row
  flips = [row["g_flip"] for row in history]
  # The adversarial game is noisy step to step: compare the start with a late average.
  assert np.mean(flips[-4:]) < 0.5 * flips[0], flips
  assert int(final.step) == 16 and int(final.nonfinite_step) == -1


def test_sharded_step_equals_unsharded(setup, one_device, eight_devices, batch):
  clf, _, state = setup
  s1, h1 = _run(one_device, state, clf.params, batch, 3)
  s8, h8 = _run(eight_devices, state, clf.params, batch, 3)
  assert len(eight_devices[0].devices.flat) == 8
  for r1, r8 in zip(h1, h8):
    assert r1.keys() == r8.keys()
    for k in r1:
      np.testing.assert_allclose(r8[k], r1[k], rtol=1e-4, atol=1e-5, err_msg=k)
  for name in ("gen", "disc"):
    for a, b in zip(_leaves(getattr(s1, name)), _leaves(getattr(s8, name))):
      np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5, err_msg=name)


def test_nonfinite_step_keeps_state(setup, one_device, batch):
  clf, _, state = setup
  good, _ = _run(one_device, state, clf.params, batch, 1)
  bad_batch = batch.copy()
  bad_batch[0, 0, 0, 0, 0] = np.nan
  after, history = _run(one_device, good, clf.params, bad_batch, 1)
  assert not np.isfinite(history[0]["g_loss"]) or not np.isfinite(history[0]["d_loss"])
  assert int(after.nonfinite_step) == 1
  assert int(after.step) == 2
  for name in ("gen", "disc", "gen_opt", "disc_opt"):
    _assert_trees_equal(getattr(after, name), getattr(good, name))
  # Later finite steps leave the last good state alone and keep the first bad index.
  later, history = _run(one_device, after, clf.params, batch, 2)
  assert all(np.isfinite(history[-1][k]) for k in ("d_loss", "g_loss"))
  assert int(later.nonfinite_step) == 1
  assert int(later.step) == 4
  for name in ("gen", "disc", "gen_opt", "disc_opt"):
    _assert_trees_equal(getattr(later, name), getattr(good, name))


def test_nonfinite_first_step_records_zero(setup, one_device, batch):
  clf, _, state = setup
  bad_batch = np.full_like(batch, np.nan)
  after, _ = _run(one_device, state, clf.params, bad_batch, 1)
  assert int(after.nonfinite_step) == 0
  _assert_trees_equal(after.gen, jax.device_get(state.gen))


def test_same_seed_same_params(setup, one_device, batch):
  clf, _, state = setup
  _, again = gan.init(METHOD, SPEC, seed=0, lr=LR, b1=0.5)
  _assert_trees_equal(again, state)
  _, other = gan.init(METHOD, SPEC, seed=1, lr=LR, b1=0.5)
  assert any(not np.array_equal(a, b) for a, b in zip(_leaves(other.gen), _leaves(state.gen)))
  a, _ = _run(one_device, state, clf.params, batch, 2)
  b, _ = _run(one_device, again, clf.params, batch, 2)
  _assert_trees_equal(a, b)
