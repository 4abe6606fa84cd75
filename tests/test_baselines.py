"""Saliency baselines: shapes, closed forms on linear scores, completeness, input checks."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import IMAGE_SHAPE, PATCH, random_images
from flax import nnx

import cfx_jax
from cfx_jax.baselines import (
  BASELINES,
  explain_baseline,
  integrated_gradients_attributions,
)
from cfx_jax.baselines.base import class_log_odds
from cfx_jax.baselines.gradients import _gradient_maps
from cfx_jax.classifier import from_module
from cfx_jax.models import CNNClassifier

KEY = jax.random.key(0)
# A fixed random linear score: logits (0, w . x + b).
W = np.random.default_rng(7).normal(size=IMAGE_SHAPE).astype(np.float32)


def linear_w(images):
  s = jnp.einsum("nhwc,hwc->n", images, W) + 0.1
  return jnp.stack([jnp.zeros_like(s), s], axis=-1)


_RNG = np.random.default_rng(3)
_DIM = int(np.prod(IMAGE_SHAPE))
MLP_W1 = (_RNG.normal(size=(_DIM, 32)) * 3 / np.sqrt(_DIM)).astype(np.float32)
MLP_W2 = (_RNG.normal(size=(32, 3)) * 2).astype(np.float32)


def mlp_logits(images):
  """Three-class tanh MLP: smooth and far from linear on [-1, 1]."""
  return jnp.tanh(images.reshape(len(images), -1) @ MLP_W1) @ MLP_W2


@pytest.fixture(scope="module")
def cnn():
  return from_module(CNNClassifier(3, 2, features=(4, 8), rngs=nnx.Rngs(0)), IMAGE_SHAPE)


@pytest.fixture(scope="module")
def linear():
  return cfx_jax.as_classifier(linear_w, IMAGE_SHAPE)


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_shapes_and_batch_independence(name, cnn):
  x = random_images(13, seed=1)
  full = explain_baseline(name, cnn, x, key=KEY)
  part = explain_baseline(name, cnn, x[:5], key=KEY)
  assert isinstance(full, cfx_jax.Explanation)
  assert full.maps.shape == (13,) + IMAGE_SHAPE[:2] and full.maps.dtype == np.float32
  assert np.all(full.maps >= 0) and np.all(np.isfinite(full.maps))
  assert full.probs.shape == (13, 2) and full.target.dtype == np.int32
  np.testing.assert_array_equal(full.target, full.predicted)
  assert full.counterfactual is None and full.stable is None and full.cf_probs is None
  scale = float(np.abs(full.maps).max()) + 1e-12
  np.testing.assert_allclose(part.maps, full.maps[:5], rtol=1e-4, atol=1e-5 * scale)


def test_no_recompile_per_batch_size(linear):
  explain_baseline("gradient", linear, random_images(5))
  compiled = _gradient_maps._cache_size()
  for n in (3, 6, 7):
    explain_baseline("gradient", linear, random_images(n))
  assert _gradient_maps._cache_size() == compiled


def test_linear_closed_forms(linear):
  x = random_images(6, seed=2)
  sum_w = np.abs(W).sum(-1)
  sum_xw = np.abs(x * W).sum(-1)
  grad = explain_baseline("gradient", linear, x).maps
  np.testing.assert_allclose(grad, np.broadcast_to(sum_w, grad.shape), rtol=1e-6)
  np.testing.assert_allclose(explain_baseline("gradient_x_input", linear, x).maps, sum_xw,
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(explain_baseline("integrated_gradients", linear, x).maps, sum_xw,
                             rtol=1e-5, atol=1e-6)
  # The gradient of a linear score is constant, so noise changes nothing.
  smooth = explain_baseline("smoothgrad", linear, x, key=KEY, samples=4).maps
  np.testing.assert_allclose(smooth, np.broadcast_to(sum_w, grad.shape), rtol=1e-5)


def test_binary_target_sign_does_not_change_maps(linear):
  x = random_images(4, seed=3)
  a = explain_baseline("gradient_x_input", linear, x, target=0)
  b = explain_baseline("gradient_x_input", linear, x, target=np.ones(4, np.int32))
  np.testing.assert_array_equal(a.target, 0)
  np.testing.assert_array_equal(b.target, 1)
  np.testing.assert_allclose(a.maps, b.maps, rtol=1e-6)


def test_class_log_odds():
  logits = jnp.array([[0.0, 2.5], [1.0, 2.0]])
  s = class_log_odds(logits, jnp.array([1, 0]))
  np.testing.assert_allclose(s, [2.5, -1.0], rtol=1e-6)
  three = jnp.array([[1.0, 2.0, 3.0]])
  expected = 2.0 - np.log(np.exp(1.0) + np.exp(3.0))
  np.testing.assert_allclose(class_log_odds(three, jnp.array([1])), [expected], rtol=1e-6)


@pytest.mark.parametrize("steps", [8, 32])
def test_integrated_gradients_completeness(steps):
  clf = cfx_jax.as_classifier(mlp_logits, IMAGE_SHAPE)
  x = random_images(6, seed=4)
  logits = mlp_logits(x)
  c = jnp.argmax(logits, -1)
  delta = np.asarray(class_log_odds(logits, c) - class_log_odds(mlp_logits(0 * x), c))
  attr = integrated_gradients_attributions(clf, x, steps=steps)
  assert attr.shape == x.shape
  # Midpoint rule: the error falls as curvature / steps^2 for a smooth score; this MLP's
  # log-odds are O(10) and at most ~25 / steps^2 off.
  tol = 50.0 / steps**2 + 1e-4
  assert np.all(np.abs(attr.sum(axis=(1, 2, 3)) - delta) <= tol)


def test_occlusion_finds_the_patch(classifier, images):
  maps = explain_baseline("occlusion", classifier, images).maps
  total = maps.sum(axis=(1, 2))
  assert np.all(total > 0)
  inside = maps[:, PATCH[0], PATCH[1]].sum(axis=(1, 2))
  assert inside.sum() / total.sum() > 0.6 and np.all(inside / total > 0.4)
  # Default window is 2 px: windows that miss the patch change nothing.
  near = maps[:, PATCH[0].start - 1:PATCH[0].stop + 1,
              PATCH[1].start - 1:PATCH[1].stop + 1].sum(axis=(1, 2))
  np.testing.assert_allclose(near, total, rtol=1e-4)
  # One-pixel windows: all mass on the patch.
  pixels = explain_baseline("occlusion", classifier, images[:4], window=1).maps
  outside = pixels.copy()
  outside[:, PATCH[0], PATCH[1]] = 0
  assert np.all(pixels.sum(axis=(1, 2)) > 0)
  assert np.abs(outside).max() <= 1e-5 * pixels.max()


def test_occlusion_options(classifier, images):
  out = explain_baseline("occlusion", classifier, images[:3], window=4, stride=4, fill=-1.0)
  assert out.maps.shape == (3, 16, 16) and np.all(out.maps >= 0)


def test_gradcam_cut_matches_module(cnn):
  x = jnp.asarray(random_images(3, seed=5))
  acts = cnn.feature_maps(cnn.params, x)
  assert acts.shape == (3, 8, 8, 8)
  np.testing.assert_allclose(cnn.head(cnn.params, acts), cnn(x), rtol=1e-5, atol=1e-6)


def test_gradcam_needs_feature_maps(classifier, images):
  with pytest.raises(ValueError, match="feature_maps"):
    explain_baseline("gradcam", classifier, images[:2])


def test_bad_inputs(classifier, images):
  with pytest.raises(ValueError, match=r"unknown baseline 'saliency'.*'gradient'"):
    explain_baseline("saliency", classifier, images)
  with pytest.raises(ValueError, match="image size"):
    explain_baseline("gradient", classifier, images[:, :8])
  with pytest.raises(TypeError, match="need a declared value_range"):
    explain_baseline("gradient", classifier, (images * 127).astype(np.int32))
  with pytest.raises(ValueError, match=r"\[-1, 1\]"):
    explain_baseline("gradient", classifier, images * 3)
  with pytest.raises(ValueError, match="target classes"):
    explain_baseline("gradient", classifier, images, target=2)
  with pytest.raises(ValueError, match="target must be"):
    explain_baseline("gradient", classifier, images, target=np.zeros(3, np.int32))
  with pytest.raises(ValueError, match="PRNG key"):
    explain_baseline("smoothgrad", classifier, images)
  with pytest.raises(TypeError, match="accepts"):
    explain_baseline("gradient", classifier, images, steps=4)
  with pytest.raises(ValueError, match="steps"):
    explain_baseline("integrated_gradients", classifier, images, steps=0)
  with pytest.raises(ValueError, match="chunk_size"):
    explain_baseline("gradient", classifier, images, chunk_size=0)
  with pytest.raises(ValueError, match="window"):
    explain_baseline("occlusion", classifier, images, window=17)
