"""DISC: loss terms against NumPy, batch independence, flips and proximity on a trained CNN,
the auxiliary model's uncertainty, input checks, failure reports."""

from __future__ import annotations

import dataclasses
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import IMAGE_SHAPE, linear_logits, random_images
from flax import nnx

import cfx_jax
from cfx_jax.classifier import Classifier, from_module
from cfx_jax.data import make_lesions
from cfx_jax.methods.disc.auxiliary import (
  auxiliary_config,
  kernel_uncertainty,
  load_auxiliary,
  train_auxiliary,
)
from cfx_jax.methods.disc.explainer import DiscExplainer, disc_config
from cfx_jax.methods.disc.optimise import (augment, bn_statistics_loss, conv_same, disc_loss,
                                          l2_norm, total_variation)
from cfx_jax.models import CNNClassifier
from cfx_jax.jobs.classifier_training import classifier_config, train_classifier

# A short schedule that still flips the 16 px lesion CNN.
FAST = {"fit_steps": 100, "steps": 150, "chunk_size": 8}
NUM_EXPLAINED = 16


def quiet_explain(explainer, images, **kw):
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    return explainer.explain(images, **kw)


# NumPy reference of the tiny CNN's BatchNorm inputs -------------------------------------


def np_conv_same(x, w):
  """(N, H, W, Cin) * (3, 3, Cin, Cout), zero padding, stride 1."""
  n, h, wd, _ = x.shape
  padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  out = np.zeros((n, h, wd, w.shape[-1]), np.float64)
  for i in range(3):
    for j in range(3):
      out += np.einsum("nhwc,co->nhwo", padded[:, i:i + h, j:j + wd], w[i, j])
  return out


def np_bn_layers(model, x):
  """Per block: (pre-BN activations, running mean, running var), in float64."""
  layers = []
  x = np.asarray(x, np.float64)
  for i, (conv, norm) in enumerate(zip(model.convs, model.norms)):
    pre = np_conv_same(x, np.asarray(conv.kernel[...], np.float64))
    mean, var = np.asarray(norm.mean[...], np.float64), np.asarray(norm.var[...], np.float64)
    layers.append((pre, mean, var))
    y = (pre - mean) / np.sqrt(var + norm.epsilon) * np.asarray(norm.scale[...]) + np.asarray(
        norm.bias[...])
    x = np.maximum(y, 0.0)
    if i < len(model.convs) - 1:
      n, h, w, c = x.shape
      x = x.reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))
  return layers


@pytest.fixture(scope="module")
def tiny_cnn():
  """A random tiny CNN with non-trivial BatchNorm statistics and affine parameters."""
  model = CNNClassifier(3, 2, features=(4, 6), rngs=nnx.Rngs(0))
  rng = np.random.default_rng(0)
  for norm in model.norms:
    c = norm.mean[...].shape[0]
    norm.mean[...] = jnp.asarray(rng.normal(size=c), jnp.float32)
    norm.var[...] = jnp.asarray(rng.uniform(0.5, 2.0, c), jnp.float32)
    norm.scale[...] = jnp.asarray(rng.uniform(0.5, 1.5, c), jnp.float32)
    norm.bias[...] = jnp.asarray(rng.normal(size=c) * 0.1, jnp.float32)
  return model


def test_bn_hook_matches_numpy_and_keeps_the_classifier(tiny_cnn):
  clf = from_module(tiny_cnn, IMAGE_SHAPE)
  x = random_images(3, seed=1)
  logits, layers = clf.bn_features(clf.params, jnp.asarray(x))
  np.testing.assert_allclose(logits, clf(jnp.asarray(x)), atol=1e-5)
  ref = np_bn_layers(tiny_cnn, x)
  assert len(layers) == len(ref) == 2
  for (f, m, v), (rf, rm, rv) in zip(layers, ref):
    np.testing.assert_allclose(f, rf, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(m, rm, rtol=1e-6)
    np.testing.assert_allclose(v, rv, rtol=1e-6)
  # The hook is an optional extra: positional construction and fingerprints are unchanged.
  plain = Classifier(clf.apply, clf.params, clf.num_classes, clf.image_shape)
  assert plain.bn_features is None and plain.fingerprint() == clf.fingerprint()
  assert cfx_jax.as_classifier(linear_logits, IMAGE_SHAPE).bn_features is None


def test_bn_statistics_loss_matches_numpy(tiny_cnn):
  """Per image: statistics over its spatial positions, first layer weighted x first."""
  clf = from_module(tiny_cnn, IMAGE_SHAPE)
  x = random_images(2, seed=2)
  for i in range(2):
    _, layers = clf.bn_features(clf.params, jnp.asarray(x[i:i + 1]))
    expected = 0.0
    for k, (f, m, v) in enumerate(np_bn_layers(tiny_cnn, x[i:i + 1])):
      f = f[0].reshape(-1, f.shape[-1])
      term = np.sum((f.mean(0) - m) ** 2) + np.sum((f.var(0) - v) ** 2)
      expected += (7.0 if k == 0 else 1.0) * term
    np.testing.assert_allclose(bn_statistics_loss(layers, 7.0), expected, rtol=1e-4)


def test_paper_form_adds_the_weighted_batchnorm_term(tiny_cnn):
  """The paper's form (BN term on) is the default objective plus bn * the statistics
  loss, with its own TV weight; the default leaves the BN term out."""
  clf = from_module(tiny_cnn, IMAGE_SHAPE)
  x = jnp.asarray(random_images(2, seed=3))
  cf, query = x[0], x[1]
  paper = cfx_jax.paper_form("disc")
  paper.manifold = 0.0
  ours = disc_config(manifold=0.0, tv=paper.tv)
  kw = dict(logits_fn=lambda im: clf.apply(clf.params, im),
            bn_fn=lambda im: clf.bn_features(clf.params, im))
  key = jax.random.PRNGKey(0)
  total, terms = disc_loss(cf, query, 1, 0.9, key, cfg=paper, **kw)
  plain, plain_terms = disc_loss(cf, query, 1, 0.9, key, cfg=ours, **kw)
  assert "bn" in terms and "bn" not in plain_terms and disc_config().bn == 0.0
  _, layers = clf.bn_features(clf.params, cf[None])
  np.testing.assert_allclose(total, plain + paper.bn * bn_statistics_loss(layers, paper.bn_first),
                             rtol=1e-5)


def test_tv_l2_and_patch_conv_match_numpy():
  img = random_images(1, seed=3)[0].astype(np.float64)
  tv = (np.sqrt(np.sum((img[1:] - img[:-1]) ** 2))
        + np.sqrt(np.sum((img[:, 1:] - img[:, :-1]) ** 2)))
  np.testing.assert_allclose(total_variation(jnp.asarray(img, jnp.float32)), tv, rtol=1e-5)
  np.testing.assert_allclose(l2_norm(jnp.asarray(img, jnp.float32)),
                             np.sqrt(np.sum(img ** 2)), rtol=1e-5)
  w = np.random.default_rng(4).normal(size=(3, 3, 3, 5))
  np.testing.assert_allclose(conv_same(jnp.asarray(img, jnp.float32), jnp.asarray(w, jnp.float32)),
                             np_conv_same(img[None], w)[0], rtol=1e-4, atol=1e-4)


def test_augment_shifts_and_flips_within_bounds():
  img = random_images(1, seed=5)[0]
  cfg = disc_config(jitter=2, flip=True)
  allowed = [np.roll(im, (dy, dx), axis=(0, 1)) for im in (img, img[:, ::-1])
             for dy in range(-2, 3) for dx in range(-2, 3)]
  seen = set()
  for k in range(12):
    out = np.asarray(augment(jnp.asarray(img), jax.random.key(k), cfg))
    match = [i for i, a in enumerate(allowed) if np.array_equal(out, a)]
    assert match, k
    seen.add(match[0])
  assert len(seen) > 3
  np.testing.assert_array_equal(augment(jnp.asarray(img), jax.random.key(0), disc_config()), img)


# A trained CNN on 16 px lesions, and its auxiliary model ---------------------------------


@pytest.fixture(scope="module")
def lesions():
  return make_lesions(512, image_size=16, seed=0), make_lesions(64, image_size=16, seed=1)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  return tmp_path_factory.mktemp("disc")


@pytest.fixture(scope="module")
def trained(lesions, workdir):
  """(classifier, auxiliary), both saved under `workdir`."""
  train, test = lesions
  c = classifier_config()
  c.features, c.steps, c.batch_size = (8, 16), 60, 32
  c.num_devices, c.progress, c.log_every = 1, False, 60
  clf, metrics = train_classifier(c, train, test, str(workdir))
  assert metrics["test_accuracy"] > 0.75, metrics
  aux, _ = train_auxiliary(auxiliary_config(features=(8, 16), steps=60, batch_size=32),
                           train, None, str(workdir))
  return clf, aux


@pytest.fixture(scope="module")
def explained(trained, lesions):
  clf, aux = trained
  x = lesions[1]["image"][:NUM_EXPLAINED]
  explainer = DiscExplainer(clf, disc_config(**FAST), auxiliary=aux)
  return explainer, x, quiet_explain(explainer, x)


def test_disc_flips_and_stays_close(trained, explained):
  clf, aux = trained
  explainer, x, out = explained
  n = len(x)
  assert out.counterfactual.shape == x.shape and out.maps.shape == x.shape[:3]
  assert out.probs.shape == out.cf_probs.shape == (n, 2)
  np.testing.assert_array_equal(out.target, 1 - clf.predict(x))
  np.testing.assert_allclose(out.maps, np.abs(out.counterfactual - x).sum(-1), atol=1e-6)
  np.testing.assert_allclose(out.cf_probs, jax.nn.softmax(clf.logits(out.counterfactual)),
                             atol=1e-5)
  assert out.flipped.mean() >= 0.9, out.flipped
  assert out.counterfactual.min() >= -1 and out.counterfactual.max() <= 1
  # The same loss without proximity, BatchNorm and manifold terms: a plain inversion.
  free = DiscExplainer(clf, disc_config(**FAST, proximity=0.0, bn=0.0, manifold=0.0))
  loose = quiet_explain(free, x)
  l1 = np.abs(out.counterfactual - x).mean(axis=(1, 2, 3))
  l1_free = np.abs(loose.counterfactual - x).mean(axis=(1, 2, 3))
  assert l1.mean() < 0.5 * l1_free.mean(), (l1.mean(), l1_free.mean())
  # The manifold term keeps the auxiliary model as sure of the counterfactuals as without it.
  assert aux.uncertainty(out.counterfactual).mean() < aux.uncertainty(loose.counterfactual).mean()


def test_batched_equals_one_at_a_time(explained):
  explainer, x, out = explained
  for i in (3, 10):  # 10 sits in the second chunk of 8
    alone = quiet_explain(explainer, x[i:i + 1], ids=[i])
    np.testing.assert_allclose(alone.counterfactual[0], out.counterfactual[i], atol=1e-5)
    np.testing.assert_allclose(alone.maps[0], out.maps[i], atol=1e-5)


def test_auxiliary_uncertainty_higher_off_the_data(trained, lesions, workdir):
  _, aux = trained
  train = lesions[0]["image"][:64]
  noise = np.random.default_rng(0).uniform(-1, 1, train.shape).astype(np.float32)
  on, off = aux.uncertainty(train), aux.uncertainty(noise)
  assert ((on >= 0) & (on <= 1)).all() and ((off >= 0) & (off <= 1)).all()
  assert off.mean() > on.mean() + 0.3, (on.mean(), off.mean())
  assert np.median(off) > np.median(on)
  np.testing.assert_allclose(kernel_uncertainty(jnp.array([[0.2, 0.9], [0.1, 0.0]])), [0.1, 0.9],
                             rtol=1e-6)
  again = load_auxiliary(str(workdir / "auxiliary"))
  np.testing.assert_allclose(again.kernels(noise[:8]), aux.kernels(noise[:8]), atol=1e-6)


# Bad input and failure reports ----------------------------------------------------------


def test_bad_inputs_raise(trained, explained, classifier):
  clf, aux = trained
  explainer, x, _ = explained
  with pytest.raises(ValueError, match="unknown DISC parameterisation"):
    disc_config(parameterisation="gan")
  with pytest.raises(ValueError, match="unknown DISC setting"):
    disc_config(stpes=3)
  with pytest.raises(ValueError, match="confidence"):
    disc_config(confidence=(0.9, 0.6))
  with pytest.raises(ValueError, match="proximity must be non-negative"):
    disc_config(proximity=-1.0)
  with pytest.raises(ValueError, match="BatchNorm.*set bn=0"):
    DiscExplainer(classifier, disc_config(bn=0.01, manifold=0.0))
  with pytest.raises(ValueError, match="auxiliary model.*manifold=0"):
    DiscExplainer(clf, disc_config())
  with pytest.raises(ValueError, match="auxiliary model was built for images"):
    DiscExplainer(clf, disc_config(), auxiliary=dataclasses.replace(aux, image_shape=(8, 8, 3)))
  with pytest.raises(ValueError, match="image_shape is required"):
    DiscExplainer(linear_logits, disc_config(bn=0.0, manifold=0.0))
  with pytest.raises(ValueError, match="image size"):
    explainer.explain(np.zeros((2, 8, 8, 3), np.float32))
  with pytest.raises(ValueError, match=r"\[-1, 1\]"):
    explainer.explain(np.full((2,) + IMAGE_SHAPE, 3.0, np.float32))
  with pytest.raises(TypeError, match="floating point"):
    explainer.explain(np.zeros((2,) + IMAGE_SHAPE, np.uint8))
  with pytest.raises(ValueError, match="target classes must lie in"):
    explainer.explain(x[:2], target=5)
  with pytest.raises(ValueError, match="predicted class"):
    explainer.explain(x[:2], target=clf.predict(x[:2]))
  with pytest.raises(ValueError, match="ids"):
    explainer.explain(x[:2], ids=[0])


def test_failures_are_reported_without_batchnorm(classifier, images):
  """A classifier without BatchNorm works with bn=0; a barely moved, unfitted prior
  (a random image) leaves misses, which are named."""
  explainer = DiscExplainer(classifier, disc_config(
      bn=0.0, manifold=0.0, fit_steps=0, keep_residual=False, steps=3, learning_rate=1e-6,
      chunk_size=32))
  with pytest.warns(UserWarning, match="DISC: .* did not reach the target class: indices") as rec:
    out = explainer.explain(images)
  failed = np.flatnonzero(~out.flipped)
  assert failed.size and f"indices {failed[:20].tolist()}" in str(rec[0].message)
  with pytest.warns(UserWarning):
    assert explainer.report_failures(out).tolist() == failed.tolist()
  target = 1 - classifier.predict(images)
  np.testing.assert_array_equal(out.target, target)


@pytest.mark.slow
def test_fit_explainer_trains_the_auxiliary_model_and_round_trips(trained, lesions, tmp_path):
  import cfx_jax
  clf, _ = trained
  train, test = lesions
  assert "disc" in cfx_jax.trainable_methods()
  explainer = cfx_jax.fit_explainer(clf, train["image"][:128], method="disc", seed=1,
                                    config={**FAST, "warn_failures": False})
  assert explainer.auxiliary is not None and explainer.config.seed == 1
  x = test["image"][:2]
  first = explainer.explain(x)
  explainer.save(str(tmp_path / "disc"))
  loaded = cfx_jax.load_explainer(str(tmp_path / "disc"), clf)
  np.testing.assert_allclose(loaded.explain(x).counterfactual, first.counterfactual,
                             atol=1e-5)
