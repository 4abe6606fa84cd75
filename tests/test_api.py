"""The public API: fit, explain, save/load, resume, and input checks."""

from __future__ import annotations

import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import cfx_jax
from cfx_jax.methods import ModelSpec
from cfx_jax.methods.conditional import gan, get_recipe
from cfx_jax.methods.conditional.explainer import GeneratorExplainer
from cfx_jax.engine.checkpoints import Checkpoints

from conftest import linear_logits, linear_predict, model_config

STEPS = 4
BATCH = 8


def _fit(images, workdir=None, steps=STEPS, classifier=linear_logits, **overrides):
  return cfx_jax.fit_explainer(classifier, images, method="syce", steps=steps,
                               batch_size=BATCH, seed=0, workdir=workdir,
                               config=model_config(**overrides))


def _assert_same_params(a, b, **tol):
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(la) == len(lb) and la
  for x, y in zip(la, lb):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), **tol)


def _other(images):
  """A different classifier with the same output shape."""
  return linear_logits(-images)


@pytest.fixture(scope="module")
def fitted(images, tmp_path_factory):
  """One uninterrupted 4-step run with checkpoints every 2 steps."""
  workdir = str(tmp_path_factory.mktemp("uninterrupted"))
  return _fit(images, workdir), workdir


@pytest.fixture(scope="module")
def explainer(fitted):
  return fitted[0]


@pytest.fixture
def no_training(monkeypatch):
  """Any attempt to run a train step fails the test: checks must come first."""
  def make_train_step(*args, **kwargs):
    def step(*a, **k):
      raise AssertionError("training started before the input was rejected")
    return step
  monkeypatch.setattr(gan, "make_train_step", make_train_step)


# Fitting and explaining -----------------------------------------------------------

def test_explanation_shapes_and_semantics(explainer, images):
  x = images[:5]
  out = explainer.explain(x)
  assert isinstance(out, cfx_jax.Explanation) and len(out) == 5
  assert out.maps.shape == (5, 16, 16) and out.maps.dtype == np.float32
  for a in (out.counterfactual, out.stable):
    assert a.shape == (5, 16, 16, 3) and a.dtype == np.float32
    assert np.all(np.isfinite(a)) and a.min() >= -1.0 and a.max() <= 1.0
  assert out.target.shape == (5,) and out.target.dtype == np.int32
  assert out.probs.shape == (5, 2) and out.cf_probs.shape == (5, 2)
  assert np.all(out.maps >= 0)
  np.testing.assert_allclose(out.probs.sum(-1), 1.0, rtol=1e-5)
  np.testing.assert_allclose(out.probs, jax.nn.softmax(linear_logits(x)), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(out.cf_probs, jax.nn.softmax(linear_logits(out.counterfactual)),
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(out.predicted, linear_predict(x))
  np.testing.assert_array_equal(out.target, 1 - out.predicted)
  np.testing.assert_array_equal(out.flipped, np.argmax(out.cf_probs, -1) == out.target)
  # Residual generator: the map is |input - counterfactual| summed over channels.
  assert explainer.map_reference == "input"
  np.testing.assert_allclose(out.maps, np.abs(x - out.counterfactual).sum(-1),
                             rtol=1e-5, atol=1e-6)


def test_stable_map_reference(explainer, images):
  """SyCE's paper map |stable - counterfactual| on the same generator."""
  e = GeneratorExplainer(explainer.method, explainer.spec, explainer.gen_def,
                         explainer.gen_params, explainer.classifier, map_reference="stable")
  out = e.explain(images[:5])
  np.testing.assert_allclose(out.maps, np.abs(out.stable - out.counterfactual).sum(-1),
                             rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="map_reference"):
    GeneratorExplainer(explainer.method, explainer.spec, explainer.gen_def,
                       explainer.gen_params, explainer.classifier, map_reference="both")


def test_history_and_saved_explainer(fitted):
  explainer, workdir = fitted
  assert [row["step"] for row in explainer.history] == list(range(1, STEPS + 1))
  assert all(np.isfinite(row["g_flip"]) for row in explainer.history)
  assert os.path.exists(os.path.join(workdir, "explainer", "explainer.json"))


def test_explicit_int_target(explainer, images):
  pred = linear_predict(images)
  for c in (0, 1):
    x = images[pred == c][:3]
    out = explainer.explain(x, target=1 - c)
    np.testing.assert_array_equal(out.target, np.full(3, 1 - c, np.int32))
    assert out.target.dtype == np.int32


def test_array_target_equals_default(explainer, images):
  x = images[:6]
  default = explainer.explain(x)
  given = explainer.explain(x, target=1 - linear_predict(x))
  np.testing.assert_array_equal(given.target, default.target)
  np.testing.assert_allclose(given.maps, default.maps, rtol=1e-6, atol=1e-6)


def test_ragged_sizes_do_not_recompile(explainer, images):
  first = explainer.explain(images[:5])
  size = explainer._programs._cache_size()
  out3 = explainer.explain(images[:3])
  out7 = explainer.explain(images[:7])
  assert explainer._programs._cache_size() == size
  # Padding does not leak into the results.
  for a, b in ((out3, first), (out7, first)):
    n = min(len(a), len(b))
    np.testing.assert_allclose(a.maps[:n], b.maps[:n], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(a.counterfactual[:n], b.counterfactual[:n], rtol=1e-5, atol=1e-6)


def _three_class_logits(images):
  """One logit per channel: the channel's mean over the classifier's patch."""
  return 200.0 * jnp.mean(images[:, 4:8, 4:8, :], axis=(1, 2))


@pytest.mark.parametrize("method, k, reference", [
    ("cyce", 2, "input"), ("sagen", 2, "stable"), ("syce", 3, "input")])
def test_every_method_fits_and_explains(images, method, k, reference):
  classifier = linear_logits if k == 2 else _three_class_logits
  e = cfx_jax.fit_explainer(classifier, images, method=method, steps=2, batch_size=4 * k,
                            config=model_config())
  assert e.method.name == method and e.num_classes == k
  assert e.map_reference == reference
  assert all(np.isfinite(row["g_loss"]) for row in e.history)
  x = images[:5]
  out = e.explain(x)
  assert out.maps.shape == (5, 16, 16) and out.cf_probs.shape == (5, k)
  probs = np.asarray(jax.nn.softmax(classifier(x)))
  np.testing.assert_array_equal(out.predicted, probs.argmax(-1))
  # Default target: the most likely class other than the prediction.
  np.testing.assert_array_equal(out.target, np.argsort(probs, axis=-1)[:, -2])
  base = x if reference == "input" else out.stable
  np.testing.assert_allclose(out.maps, np.abs(base - out.counterfactual).sum(-1),
                             rtol=1e-5, atol=1e-6)
  # SyCE beyond two classes trains no stable image, so it returns none.
  assert (out.stable is None) == (method == "syce" and k == 3)
  if out.stable is None:
    assert e.explain_all_targets(x).stable is None
    with pytest.raises(ValueError, match="trains none"):
      type(e)(e.method, e.spec, e.gen_def, e.gen_params, e.classifier,
              map_reference="stable", config=e.config)


# Persistence ----------------------------------------------------------------------

def test_save_load_round_trip(explainer, images, tmp_path):
  path = str(tmp_path / "saved")
  explainer.save(path)
  loaded = cfx_jax.load_explainer(path, linear_logits)
  _assert_same_params(loaded.gen_params, explainer.gen_params, rtol=0, atol=0)
  assert loaded.map_reference == explainer.map_reference
  a, b = explainer.explain(images[:5]), loaded.explain(images[:5])
  for name in ("maps", "counterfactual", "stable", "target", "probs", "cf_probs"):
    np.testing.assert_array_equal(getattr(b, name), getattr(a, name), err_msg=name)


def test_load_with_another_classifier(fitted):
  path = os.path.join(fitted[1], "explainer")
  assert cfx_jax.load_explainer(path, linear_logits).num_classes == 2
  with pytest.raises(ValueError, match="another classifier"):
    cfx_jax.load_explainer(path, _other)


def test_load_missing_path(tmp_path):
  with pytest.raises(FileNotFoundError, match="no saved explainer"):
    cfx_jax.load_explainer(str(tmp_path / "nothing"), linear_logits)


def test_resume_matches_uninterrupted(fitted, images, tmp_path):
  workdir = str(tmp_path)
  half = _fit(images, workdir, steps=2)
  assert Checkpoints(os.path.join(workdir, "checkpoints")).latest_step() == 2
  resumed = _fit(images, workdir, steps=STEPS)
  assert [row["step"] for row in resumed.history] == [3, 4]
  whole = fitted[0]
  _assert_same_params(resumed.gen_params, whole.gen_params, rtol=1e-5, atol=1e-6)
  # The half-way run really stopped earlier.
  assert any(not np.allclose(a, b) for a, b in
             zip(jax.tree.leaves(half.gen_params), jax.tree.leaves(whole.gen_params)))


def test_resume_with_another_classifier(fitted, images, no_training):
  with pytest.raises(ValueError, match="another classifier"):
    _fit(images, fitted[1], steps=STEPS + 2, classifier=_other)


def test_resume_with_another_architecture(fitted, images, no_training):
  cfg = model_config(model={"gen_features": (8, 16, 32), "disc_features": (8, 16)})
  with pytest.raises(ValueError, match=r"model.gen_features: \[8, 16\] -> \[8, 16, 32\]"):
    cfx_jax.fit_explainer(linear_logits, images, steps=STEPS + 2, batch_size=BATCH,
                          workdir=fitted[1], config=cfg)


def test_resume_asking_for_fewer_steps_than_done(fitted, images, no_training):
  with pytest.raises(ValueError, match=f"explainer.steps: {STEPS} -> 2"):
    _fit(images, fitted[1], steps=2)


def test_explain_all_targets_matches_single_target_calls(explainer, images):
  x = images[:6]
  every = explainer.explain_all_targets(x)
  k = explainer.num_classes
  assert every.maps.shape == (6, k) + x.shape[1:3]
  assert every.counterfactual.shape == (6, k) + x.shape[1:]
  predicted = explainer.explain(x).predicted
  for t in range(k):
    others = np.flatnonzero(predicted != t)
    one = explainer.explain(x[others], target=t)
    np.testing.assert_allclose(every.maps[others, t], one.maps, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(every.cf_probs[others, t], one.cf_probs, rtol=1e-5, atol=1e-6)
    own = np.flatnonzero(predicted == t)
    assert np.all(every.maps[own, t] == 0)
    np.testing.assert_array_equal(every.counterfactual[own, t], x[own])


# Input checks ---------------------------------------------------------------------

def _nan_images(x):
  x = x.copy()
  x[3, 2, 2, 1] = np.nan
  return x


def _one_class(images):
  return linear_logits(images) + jnp.array([0.0, 1e3])


FIT_ERRORS = [
    ("rank", lambda x: dict(images=x[0, 0]), ValueError, r"\(N, H, W, C\) or \(H, W, C\)"),
    ("int dtype", lambda x: dict(images=((x + 1) * 127.5).astype(np.int32)), TypeError,
     "need a declared value_range"),
    ("nan", lambda x: dict(images=_nan_images(x)), ValueError, r"non-finite .* 1 image"),
    ("range", lambda x: dict(images=x * 3.0), ValueError, r"must lie in \[-1, 1\]"),
    ("empty", lambda x: dict(images=x[:0]), ValueError, "empty"),
    ("not an array", lambda x: dict(images=3.0), TypeError, "array"),
    ("logits shape", lambda x: dict(classifier=lambda im: jnp.zeros((im.shape[0], 3, 1))),
     ValueError, r"logits of shape \(N, K\)"),
    ("logits batch", lambda x: dict(classifier=lambda im: jnp.zeros((im.shape[0] + 1, 2))),
     ValueError, "logits of shape"),
    ("nonfinite logits", lambda x: dict(classifier=lambda im: linear_logits(im) * jnp.nan),
     ValueError, "non-finite logits"),
    ("not callable", lambda x: dict(classifier=42), TypeError, "callable"),
    ("method", lambda x: dict(method="gradcam"), ValueError, "unknown method 'gradcam'"),
    ("steps", lambda x: dict(steps=0), ValueError, "steps must be >= 1"),
    ("batch multiple", lambda x: dict(batch_size=7), ValueError,
     "batch_size 7 must be a positive multiple of the 2 classes"),
    ("devices", lambda x: dict(images=x[:4], batch_size=4, config=model_config(num_devices=8)),
     ValueError,
     "4 images cannot be spread over 8 devices"),
    ("one class", lambda x: dict(classifier=_one_class), ValueError,
     r"predicts no image as class\(es\) \[0\]"),
    ("config type", lambda x: dict(config=[("steps", 2)]), TypeError, "config must be"),
]


@pytest.mark.parametrize("make, error, match", [e[1:] for e in FIT_ERRORS],
                         ids=[e[0] for e in FIT_ERRORS])
def test_fit_rejects_bad_input(images, no_training, make, error, match):
  kwargs = dict(classifier=linear_logits, images=images, method="syce", steps=2,
                batch_size=BATCH, config=model_config())
  kwargs.update(make(images))
  classifier, x = kwargs.pop("classifier"), kwargs.pop("images")
  with pytest.raises(error, match=match):
    cfx_jax.fit_explainer(classifier, x, **kwargs)


EXPLAIN_ERRORS = [
    ("channels", lambda x, p: dict(images=x[..., :1]), ValueError, "wrong channel count"),
    ("size", lambda x, p: dict(images=x[:, :8, :8]), ValueError, "wrong image size"),
    ("rank", lambda x, p: dict(images=x[0, 0]), ValueError, r"\(N, H, W, C\) or \(H, W, C\)"),
    ("int dtype", lambda x, p: dict(images=x.astype(np.int32)), TypeError, "floating point"),
    ("nan", lambda x, p: dict(images=_nan_images(x)), ValueError, "non-finite"),
    ("range", lambda x, p: dict(images=x - 1.5), ValueError, r"must lie in \[-1, 1\]"),
    ("empty", lambda x, p: dict(images=x[:0]), ValueError, "empty"),
    ("target range", lambda x, p: dict(target=2), ValueError, r"must lie in \[0, 2\)"),
    ("negative target", lambda x, p: dict(target=np.full(len(x), -1)), ValueError,
     r"must lie in \[0, 2\)"),
    ("target is prediction", lambda x, p: dict(target=p), ValueError,
     "equals the classifier's predicted class"),
    ("target shape", lambda x, p: dict(target=np.zeros(len(x) - 1, np.int32)), ValueError,
     r"have shape \(6,\)"),
    ("target dtype", lambda x, p: dict(target=np.zeros(len(x))), TypeError, "integer"),
]


@pytest.mark.parametrize("make, error, match", [e[1:] for e in EXPLAIN_ERRORS],
                         ids=[e[0] for e in EXPLAIN_ERRORS])
def test_explain_rejects_bad_input(explainer, images, make, error, match):
  x = images[:6]
  kwargs = dict(images=x, target=None)
  kwargs.update(make(x, linear_predict(x)))
  with pytest.raises(error, match=match):
    explainer.explain(kwargs["images"], target=kwargs["target"])


# Non-finite training ----------------------------------------------------------------

def test_nonfinite_training_stops_and_keeps_good_checkpoint(images, tmp_path):
  """A learning rate of 1e8 overflows the discriminator within a couple of steps."""
  workdir = str(tmp_path)
  with pytest.raises(FloatingPointError, match="non-finite") as info:
    _fit(images, workdir, steps=6, learning_rate=1e8, checkpoint_every=1)
  assert isinstance(info.value, FloatingPointError)
  bad = int(re.search(r"at step (\d+)", str(info.value)).group(1))
  ckpts = Checkpoints(os.path.join(workdir, "checkpoints"))
  latest = ckpts.latest_step()
  assert latest is not None and 1 <= latest <= bad
  spec = ModelSpec(image_size=16, channels=3, num_classes=2, gen_features=(8, 16),
                   disc_features=(8, 16))
  _, like = gan.init(get_recipe("syce"), spec, seed=0, lr=1e8, b1=0.5)
  state = ckpts.restore(like)
  ckpts.close()
  assert int(state.nonfinite_step) == -1 and int(state.step) == latest
  for leaf in jax.tree.leaves((state.gen, state.disc)):
    assert np.all(np.isfinite(np.asarray(leaf)))
  assert not os.path.exists(os.path.join(workdir, "explainer"))
