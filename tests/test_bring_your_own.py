"""A user's own classifier, as it is: callables, NNX and Linen modules, probability
outputs, its own value range and image size."""

from __future__ import annotations

import functools

import flax.linen as linen
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import linear_logits, model_config
from flax import nnx

import cfx_jax

STEPS, BATCH = 2, 16


def fit(classifier, images, **kwargs):
  kwargs.setdefault("config", model_config())
  return cfx_jax.fit_explainer(classifier, images, method="syce", steps=STEPS,
                               batch_size=BATCH, **kwargs)


def test_probability_outputs_are_refused_as_logits_and_accepted_as_declared(images):
  softmax = lambda x: jax.nn.softmax(linear_logits(x), axis=-1)  # noqa: E731
  sigmoid = lambda x: jax.nn.sigmoid(linear_logits(x)[:, 1])  # noqa: E731
  for probs in (softmax, sigmoid):
    with pytest.raises(ValueError, match='outputs="probabilities"'):
      cfx_jax.as_classifier(probs, images.shape[1:])
    with pytest.raises(ValueError, match='outputs="probabilities"'):
      cfx_jax.explain_baseline("gradient", probs, images)
    clf = cfx_jax.as_classifier(probs, images.shape[1:], outputs="probabilities")
    reference = cfx_jax.as_classifier(linear_logits, images.shape[1:])
    np.testing.assert_allclose(clf.predict_proba(images), reference.predict_proba(images),
                               atol=1e-5)
  three = lambda x: jax.nn.softmax(jnp.stack([x[..., 0].mean((1, 2)), x[..., 1].mean((1, 2)),  # noqa: E731
                                              x[..., 2].mean((1, 2))], -1) * 5, axis=-1)
  with pytest.raises(ValueError, match="non-negative rows summing to 1"):
    cfx_jax.as_classifier(three, images.shape[1:])
  with pytest.raises(ValueError, match="outputs must be one of"):
    cfx_jax.as_classifier(linear_logits, images.shape[1:], outputs="softmax")


@pytest.fixture(scope="module")
def reference(images):
  """The plain [-1, 1] logits classifier's explanations of the first eight images."""
  return fit(linear_logits, images).explain(images[:8])


def test_probability_classifier_explains_like_its_logits(images, reference):
  softmax = lambda x: jax.nn.softmax(linear_logits(x), axis=-1)  # noqa: E731
  a = fit(softmax, images, outputs="probabilities").explain(images[:8])
  b = reference
  np.testing.assert_allclose(a.probs, b.probs, atol=1e-5)
  # log-probabilities differ from the logits by a constant per row: float rounding only
  np.testing.assert_allclose(a.counterfactual, b.counterfactual, atol=2e-3)


def test_value_range_reaches_the_classifier_and_comes_back(images, reference):
  """A [0, 1] classifier on [0, 1] images gives the [-1, 1] explainer's results, mapped."""
  def classifier01(x):
    return linear_logits(2.0 * x - 1.0)

  x01 = (images + 1.0) / 2.0
  with pytest.raises(ValueError, match=r"value_range=\(0, 1\)"):
    fit(classifier01, x01)
  out = fit(classifier01, x01, value_range=(0, 1)).explain(x01[:8])
  ref = reference
  np.testing.assert_allclose(out.counterfactual, (ref.counterfactual + 1.0) / 2.0, atol=1e-4)
  np.testing.assert_allclose(out.maps, ref.maps, atol=1e-4)  # maps do not depend on the range
  with pytest.raises(ValueError, match=r"must lie in \[0, 1\]"):
    fit(classifier01, images, value_range=(0, 1))


def test_uint8_images_are_0_to_255(images):
  x8 = np.round((images + 1.0) * 127.5).astype(np.uint8)
  classifier = lambda x: linear_logits(x / 127.5 - 1.0)  # noqa: E731
  explainer = fit(classifier, x8)
  out = explainer.explain(x8[:4])
  assert out.counterfactual.dtype == np.float32
  assert out.counterfactual.min() >= 0.0 and out.counterfactual.max() <= 255.0
  assert out.counterfactual.max() > 2.0  # in (0, 255), not in [-1, 1]
  with pytest.raises(TypeError, match="value_range"):
    fit(classifier, x8.astype(np.int32))


@pytest.mark.parametrize("shape", [(15, 15, 1), (13, 18, 4)])
def test_any_image_size_and_channel_count(shape, tmp_path):
  """Padded for the networks, cropped back; the classifier only sees the caller's size."""
  rng = np.random.default_rng(0)
  x = rng.uniform(-1.0, 1.0, (32,) + shape).astype(np.float32)

  def classifier(images):
    assert images.shape[1:] == shape, images.shape
    s = 200.0 * jnp.mean(images[:, 4:8, 4:8, :], axis=(1, 2, 3)) + 0.05
    return jnp.stack([jnp.zeros_like(s), s], axis=-1)

  explainer = fit(classifier, x, config=model_config(
      model={"gen_features": (8, 16, 16), "disc_features": (8, 16)}))
  out = explainer.explain(x[:4])
  assert out.maps.shape == (4,) + shape[:2]
  assert out.counterfactual.shape == (4,) + shape
  assert explainer.image_shape == shape
  one = explainer.explain(x[0])
  assert len(one) == 1
  np.testing.assert_allclose(one.counterfactual[0], out.counterfactual[0], atol=1e-5)
  explainer.save(str(tmp_path / "ex"))
  loaded = cfx_jax.load_explainer(str(tmp_path / "ex"), classifier)
  np.testing.assert_allclose(loaded.explain(x[:4]).counterfactual, out.counterfactual,
                             atol=1e-5)


class _TrainModeNet(nnx.Module):
  def __init__(self, rngs):
    self.dense = nnx.Linear(16 * 16 * 3, 2, rngs=rngs)
    self.norm = nnx.BatchNorm(2, rngs=rngs)
    self.drop = nnx.Dropout(0.5, rngs=rngs)

  def __call__(self, x):
    return self.drop(self.norm(self.dense(x.reshape(x.shape[0], -1))))


def test_nnx_module_in_train_mode_is_explained_in_eval_mode(images):
  net = _TrainModeNet(nnx.Rngs(0))
  clf = cfx_jax.as_classifier(net, images.shape[1:])
  np.testing.assert_array_equal(clf.logits(images[:4]), clf.logits(images[:4]))  # no dropout
  assert net.norm.use_running_average is False  # the caller's module is left as it was
  with pytest.raises(TypeError, match=r"\.eval\(\)"):
    cfx_jax.as_classifier(lambda x: net(x), images.shape[1:])


class _LinenNet(linen.Module):
  width: int

  @linen.compact
  def __call__(self, x):
    h = linen.relu(linen.Dense(self.width)(x.reshape(x.shape[0], -1)))
    return linen.Dense(2)(h)


def _program_size(clf, x) -> int:
  return len(jax.jit(clf.apply).lower(clf.params, x).as_text())


def test_linen_variables_are_arguments_not_constants(images):
  """The compiled program does not grow with the parameter count (baked: it does)."""
  x = jnp.asarray(images[:2])
  sizes, baked = [], []
  for width in (4, 256):
    model = _LinenNet(width)
    variables = model.init(jax.random.key(0), x)
    clf = cfx_jax.as_classifier(model, images.shape[1:], variables=variables)
    np.testing.assert_allclose(clf.logits(images[:4]), model.apply(variables, images[:4]),
                               atol=1e-5)
    sizes.append(_program_size(clf, x))
    baked.append(_program_size(cfx_jax.as_classifier(
        functools.partial(model.apply, variables), images.shape[1:]), x))
  assert abs(sizes[1] - sizes[0]) < 2_000, sizes
  assert baked[1] - baked[0] > 100_000, baked
  with pytest.raises(ValueError, match="needs its variables"):
    cfx_jax.as_classifier(_LinenNet(4), images.shape[1:])


def test_function_of_variables(images):
  w = jnp.zeros((2,))
  f = lambda v, x: linear_logits(x) + v  # noqa: E731
  clf = cfx_jax.as_classifier(f, images.shape[1:], variables=w)
  np.testing.assert_allclose(clf.logits(images[:4]), linear_logits(images[:4]), atol=1e-6)
