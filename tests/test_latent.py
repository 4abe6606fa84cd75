"""Latent-space explainer: networks, training, the PN/PS/PNS estimator against closed forms,
the attribute data set, explanations, persistence, input checks and the study job."""

from __future__ import annotations

import json
import logging
import os
import warnings
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import IMAGE_SHAPE, linear_logits, linear_predict
from flax import nnx

import cfx_jax
from cfx_jax.data import load_source, make_attribute_images, make_lesions
from cfx_jax.data.attributes import ATTRIBUTES
from cfx_jax.explanation import Explanation
from cfx_jax.methods.latent import causal
from cfx_jax.methods.latent import fitting as latent_fitting
from cfx_jax.methods.latent import generator as latent_generator
from cfx_jax.methods.latent.causal import necessity_sufficiency
from cfx_jax.methods.latent import LatentExplainer, PretrainedGenerator
from cfx_jax.methods.latent.config import latent_config
from cfx_jax.models.vae import AttributePredictor, ConvShiftPredictor, ConvVAE, ShiftPredictor

TINY = dict(latent_dim=4, vae_features=(8, 16), predictor_features=(8, 16), shift_hidden=(32,),
            vae_steps=80, predictor_steps=40, shift_steps=200, batch_size=32, learning_rate=3e-3,
            progress=False, log_every=20, checkpoint_every=100, chunk_size=64, num_samples=256)


@pytest.fixture(scope="module")
def attribute_data():
  return make_attribute_images(160, seed=0, image_size=16)


@pytest.fixture(scope="module")
def classifier():
  """Binary: the mean of one patch, which the `bright` attribute sets."""
  return cfx_jax.as_classifier(linear_logits, IMAGE_SHAPE)


@pytest.fixture(scope="module")
def fitted(classifier, attribute_data, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("latent"))
  ex = LatentExplainer.fit(classifier, attribute_data["image"], seed=0, config=TINY,
                           workdir=workdir, attributes=attribute_data["attributes"],
                           attribute_names=ATTRIBUTES)
  return ex, workdir


# Networks -------------------------------------------------------------------------------


def test_network_shapes():
  vae = ConvVAE((16, 16, 3), latent_dim=4, features=(8, 16), rngs=nnx.Rngs(0))
  x = jnp.zeros((5, 16, 16, 3))
  mean, logvar = vae.encode(x)
  assert mean.shape == logvar.shape == (5, 4)
  out = vae.decode(jnp.ones((5, 4)) * 3.0)
  assert out.shape == (5, 16, 16, 3) and float(jnp.max(jnp.abs(out))) <= 1.0
  recon, _, _ = vae(x, jax.random.key(0))
  assert recon.shape == x.shape
  assert AttributePredictor(3, 4, features=(8, 16), rngs=nnx.Rngs(0))(x).shape == (5, 4)
  shift = ShiftPredictor(4, 5, hidden=(32,), rngs=nnx.Rngs(0))
  dz = shift(jnp.ones((5, 4)), jnp.zeros((5, 5)))
  assert dz.shape == (5, 4)
  np.testing.assert_allclose(dz, 0.0)  # starts as "no shift"
  with pytest.raises(ValueError, match="divisible by 2\\*\\*2"):
    ConvVAE((18, 18, 3), features=(8, 16), rngs=nnx.Rngs(0))


def test_spatial_latent_is_local():
  """A latent grid codes each neighbourhood on its own: a change in one image corner moves
  the code only at the grid positions whose receptive field holds it, and the decoding
  only near them; the convolutional shift keeps the grid shape and starts at zero."""
  vae = ConvVAE((32, 32, 3), latent_dim=4, features=(8, 16), spatial=True, rngs=nnx.Rngs(0))
  assert vae.latent_shape == (8, 8, 4)
  x = jax.random.uniform(jax.random.key(1), (1, 32, 32, 3), minval=-1, maxval=1)
  corner = x.at[:, :2, :2].set(1.0)
  moved = np.abs(np.asarray(vae.encode(corner)[0] - vae.encode(x)[0])).reshape(8, 8, 4)
  assert moved[:2, :2].max() > 1e-4 and moved[3:].max() == 0 and moved[:, 3:].max() == 0
  z = vae.encode(x)[0]
  dz = jnp.zeros_like(z).reshape(1, 8, 8, 4).at[:, 0, 0].set(1.0).reshape(1, -1)
  changed = np.abs(np.asarray(vae.decode(z + dz) - vae.decode(z)))[0].max(-1)
  assert changed[:4, :4].max() > 1e-4 and changed[16:].max() == 0 and changed[:, 16:].max() == 0
  shift = ConvShiftPredictor((8, 8, 4), 2, hidden=(8,), rngs=nnx.Rngs(0))
  out = shift(z, jnp.ones((1, 2)))
  assert out.shape == z.shape
  np.testing.assert_allclose(out, 0.0)
  with pytest.raises(ValueError, match="latent grid"):
    ConvShiftPredictor((16,), 2, rngs=nnx.Rngs(0))


def test_local_shift_size_is_a_sum_over_grid_positions(attribute_data, classifier):
  from cfx_jax.methods.latent.shift import shift_size
  dz = np.random.default_rng(0).normal(size=(3, 2 * 2 * 4)).astype(np.float32)
  per_position = np.linalg.norm(dz.reshape(3, 4, 4), axis=-1).sum(-1)
  np.testing.assert_allclose(shift_size(dz, (2, 2, 4), local=True), per_position, rtol=1e-5)
  np.testing.assert_allclose(shift_size(dz, (2, 2, 4)), np.linalg.norm(dz, axis=-1), rtol=1e-5)
  # One moved position costs the same either way; the same change spread costs more.
  one = np.zeros((1, 16), np.float32)
  one[0, :4] = 1.0
  assert float(shift_size(one, (2, 2, 4), True)[0]) == pytest.approx(2.0, rel=1e-5)
  with pytest.raises(ValueError, match="shift_local needs a latent grid"):
    LatentExplainer.fit(classifier, attribute_data["image"], config=dict(TINY, shift_local=True))


def test_spatial_latent_fit_save_load(classifier, attribute_data, tmp_path):
  x = attribute_data["image"]
  ex = LatentExplainer.fit(classifier, x, config=dict(TINY, spatial_latent=True, shift_steps=40))
  assert ex.generator.latent_shape == (4, 4, 4) and ex.generator.latent_dim == 64
  assert isinstance(nnx.merge(ex.shift_def, ex.shift_params), ConvShiftPredictor)
  ex.save(str(tmp_path))
  loaded = cfx_jax.load_explainer(str(tmp_path), classifier)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    a, b = ex.explain(x[:6]), loaded.explain(x[:6])
  np.testing.assert_allclose(a.counterfactual, b.counterfactual, atol=1e-6)
  g = ex.generator.as_pretrained()
  assert g.latent_shape == (4, 4, 4) and g.encode(jnp.asarray(x[:2])).shape == (2, 4, 4, 4)


def test_short_vae_training_lowers_the_loss(attribute_data):
  cfg = latent_config(**TINY)
  images = attribute_data["image"][:64]
  graphdef, params, _ = latent_fitting.train_vae(images, cfg)
  fresh = nnx.split(latent_generator.build_vae(latent_generator.architecture(cfg, images.shape[1:]), 0))[1]
  key = jax.random.key(3)
  before = latent_fitting.vae_loss(nnx.merge(graphdef, fresh), images, key, 1.0)[0]
  after = latent_fitting.vae_loss(nnx.merge(graphdef, params), images, key, 1.0)[0]
  assert float(after) < 0.7 * float(before)


# PN, PS, PNS -----------------------------------------------------------------------------


def toy_world(z1, z2, outcome):
  """Attribute A = z1 > 0; the interventions set the sign of z1 (A<-1: |z1|, A<-0: -|z1|)."""
  a = z1 > 0
  return a, outcome(z1, z2), outcome(np.abs(z1), z2), outcome(-np.abs(z1), z2)


AND = lambda z1, z2: (z1 > 0) & (z2 > 0)  # noqa: E731
OR = lambda z1, z2: (z1 > 0) | (z2 > 0)  # noqa: E731
# Y = A and (z2 > 0): Y_{A<-0} = 0 always, so PN = 1; Y_{A<-1} = (z2 > 0), independent of
# A, so PS = P(z2 > 0) = 1/2 and PNS = P(z2 > 0) = 1/2.
# Y = A or (z2 > 0): Y_{A<-1} = 1 always, so PS = 1; Y_{A<-0} = (z2 > 0), so
# PN = P(z2 <= 0) = 1/2 and PNS = P(z2 <= 0) = 1/2.
CLOSED_FORM = [(AND, {"pn": 1.0, "ps": 0.5, "pns": 0.5}),
               (OR, {"pn": 0.5, "ps": 1.0, "pns": 0.5})]


@pytest.mark.parametrize("outcome,expected", CLOSED_FORM)
def test_necessity_sufficiency_exact_on_a_symmetric_grid(outcome, expected):
  # A grid symmetric in both coordinates (no zeros): every quadrant holds exactly a quarter.
  side = np.concatenate([-np.arange(1, 11), np.arange(1, 11)]) / 10.0
  z1, z2 = (g.ravel() for g in np.meshgrid(side, side))
  out = necessity_sufficiency(*toy_world(z1, z2, outcome))
  for key, value in expected.items():
    assert out[key]["estimate"] == value, key
  assert out["num_samples"] == len(z1) and out["p_attribute"] == 0.5
  assert out["pns"]["trials"] == len(z1)


@pytest.mark.parametrize("outcome,expected", CLOSED_FORM)
def test_monte_carlo_intervals_contain_the_closed_form(outcome, expected):
  z = np.random.default_rng(0).standard_normal((4000, 2))
  out = necessity_sufficiency(*toy_world(z[:, 0], z[:, 1], outcome))
  for key, value in expected.items():
    lo, hi = out[key]["ci"]
    assert lo <= value <= hi, (key, out[key])
    assert hi - lo < 0.1


def test_wilson_interval_and_estimator_checks():
  lo, hi = causal.wilson_interval(0, 10)
  assert lo == 0.0 and hi == pytest.approx(1.96 ** 2 / (10 + 1.96 ** 2), abs=1e-3)
  assert causal.wilson_interval(0, 0) == (0.0, 1.0)
  out = necessity_sufficiency([0, 0], [0, 0], [0, 0], [0, 0])
  assert np.isnan(out["pn"]["estimate"]) and out["pn"]["trials"] == 0
  with pytest.raises(ValueError, match="binary"):
    necessity_sufficiency([0, 2], [0, 1], [0, 1], [0, 1])
  with pytest.raises(ValueError, match="length 2"):
    necessity_sufficiency([0, 1], [0, 1, 1], [0, 1], [0, 1])


# Attribute data -------------------------------------------------------------------------


def test_attribute_images_deterministic_and_independent():
  d = make_attribute_images(3000, seed=4, image_size=16)
  assert d["image"].shape == (3000, 16, 16, 3) and d["image"].dtype == np.float32
  assert d["attributes"].shape == (3000, len(ATTRIBUTES)) and d["attributes"].dtype == np.int32
  assert d["image"].min() >= -1.0 and d["image"].max() <= 1.0
  np.testing.assert_array_equal(d["label"], d["attributes"][:, 0])
  small = make_attribute_images(50, seed=4, image_size=16)
  for key in small:
    np.testing.assert_array_equal(small[key], d[key][:50])
  corr = np.corrcoef(d["attributes"].T.astype(float))
  assert np.max(np.abs(corr - np.eye(len(ATTRIBUTES)))) < 0.06
  assert np.all(np.abs(d["attributes"].mean(0) - 0.5) < 0.04)
  # The lesion mask is empty exactly when there is no lesion.
  np.testing.assert_array_equal(d["mask"].reshape(3000, -1).max(1) > 0, d["label"] == 1)


def test_marker_correlation_builds_the_shortcut():
  tied = make_attribute_images(500, seed=1, image_size=16, marker_correlation=1.0)
  np.testing.assert_array_equal(tied["attributes"][:, 1], tied["label"])
  opposed = make_attribute_images(500, seed=1, image_size=16, marker_correlation=0.0)
  np.testing.assert_array_equal(opposed["attributes"][:, 1], 1 - opposed["label"])
  # Only the marker differs between the two sets.
  np.testing.assert_array_equal(tied["label"], opposed["label"])
  with pytest.raises(ValueError, match="marker_correlation"):
    make_attribute_images(10, seed=1, marker_correlation=1.5)
  src = load_source("attributes", "train", num=20, image_size=16, marker_correlation=1.0)
  other = load_source("attributes", "test", num=20, image_size=16)
  assert len(src) == 20 and src[0]["attributes"].shape == (len(ATTRIBUTES),)
  assert not np.array_equal(src.arrays["image"], other.arrays["image"])


# Explainer ------------------------------------------------------------------------------


def test_explain_shapes_and_flips(fitted, attribute_data):
  ex, _ = fitted
  x = attribute_data["image"][:24]
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    out = ex.explain(x)
  assert isinstance(out, Explanation)
  assert out.maps.shape == (24, 16, 16) and out.counterfactual.shape == x.shape
  assert out.probs.shape == out.cf_probs.shape == (24, 2) and np.all(out.maps >= 0)
  np.testing.assert_array_equal(out.target, 1 - linear_predict(x))
  failed = ex.report_failures(out) if (~out.flipped).any() else np.array([], int)
  np.testing.assert_array_equal(failed, np.flatnonzero(~out.flipped))
  assert out.flipped.mean() >= 0.75  # brightness decides this classifier: an easy edit
  assert set(ex.metrics["edits"]) == {"outcome", *ATTRIBUTES}


def test_causal_scores_structure(fitted):
  ex, _ = fitted
  scores = causal.causal_scores(ex, num_samples=64, seed=1)
  assert list(scores) == list(ATTRIBUTES)
  for s in scores.values():
    for key in causal.SCORES:
      assert 0.0 <= s[key]["ci"][0] <= s[key]["ci"][1] <= 1.0
      assert s[key]["successes"] <= s[key]["trials"] <= 64
  table = causal.scores_table(scores)
  assert table.count("\n") == 2 + len(ATTRIBUTES) and "| marker |" in table


def test_save_load_round_trip(fitted, attribute_data, classifier, tmp_path):
  ex, _ = fitted
  ex.save(str(tmp_path))
  with open(tmp_path / "explainer.json") as f:
    meta = json.load(f)
  assert meta["method"] == "latent"
  loaded = cfx_jax.load_explainer(str(tmp_path), classifier)
  assert isinstance(loaded, LatentExplainer)
  x = attribute_data["image"][:8]
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    a, b = ex.explain(x), loaded.explain(x)
  np.testing.assert_allclose(a.counterfactual, b.counterfactual, atol=1e-6)
  assert loaded.attribute_names == ATTRIBUTES
  with pytest.raises(ValueError, match="has its own VAE"):
    cfx_jax.load_explainer(str(tmp_path), classifier, generator=linear_generator())


def test_workdir_shares_the_generator(fitted, attribute_data, classifier, caplog):
  ex, workdir = fitted
  # The same settings again: the generator is reused and the shift restored, not retrained.
  with caplog.at_level(logging.INFO, logger="cfx_jax"):
    again = LatentExplainer.fit(classifier, attribute_data["image"], config=TINY,
                                workdir=workdir, attributes=attribute_data["attributes"],
                                attribute_names=ATTRIBUTES)
  assert "reusing the generator" in caplog.text
  for new, old in ((again.generator.vae_params, ex.generator.vae_params),
                   (again.shift_params, ex.shift_params)):
    for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(old)):
      np.testing.assert_array_equal(a, b)
  with pytest.raises(ValueError, match="architecture"):
    LatentExplainer.fit(classifier, attribute_data["image"], config=dict(TINY, latent_dim=3),
                        workdir=workdir)


def test_bad_inputs_raise_before_training(attribute_data, classifier):
  x, attrs = attribute_data["image"], attribute_data["attributes"]
  three = lambda im: jnp.stack([im.mean((1, 2, 3))] * 3, -1)  # noqa: E731
  with pytest.raises(ValueError, match="binary classifier"):
    LatentExplainer.fit(three, x, config=TINY)
  with pytest.raises(ValueError, match="one row per image"):
    LatentExplainer.fit(classifier, x, config=TINY, attributes=attrs[:10])
  with pytest.raises(ValueError, match="one row per image"):
    LatentExplainer.fit(classifier, x, config=TINY, attributes=attrs[:, 0])
  with pytest.raises(ValueError, match="binary"):
    LatentExplainer.fit(classifier, x, config=TINY, attributes=attrs * 2)
  with pytest.raises(TypeError, match="numeric"):
    LatentExplainer.fit(classifier, x, config=TINY, attributes=attrs.astype(str))
  with pytest.raises(ValueError, match="names"):
    LatentExplainer.fit(classifier, x, config=TINY, attributes=attrs, attribute_names=("a",))
  with pytest.raises(ValueError, match="unknown latent setting"):
    latent_config(nope=1)
  with pytest.raises(ValueError, match="flip_fraction"):
    latent_config(flip_fraction=2.0)


# Pretrained generators ------------------------------------------------------------------


def linear_generator(seed=0, latent_shape=(2, 3), image_shape=IMAGE_SHAPE):
  """Plain functions: a fixed random linear encoder and a tanh decoder, with a latent of
  shape (2, 3); no prior."""
  rng = np.random.default_rng(seed)
  pixels, d = int(np.prod(image_shape)), int(np.prod(latent_shape))
  enc = jnp.asarray(rng.normal(size=(pixels, d)) / np.sqrt(pixels), jnp.float32)
  dec = jnp.asarray(rng.normal(size=(d, pixels)) * 0.5, jnp.float32)

  def encode(x):
    return (x.reshape(x.shape[0], -1) @ enc).reshape((x.shape[0],) + latent_shape)

  def decode(z):
    return jnp.tanh(z.reshape(z.shape[0], -1) @ dec).reshape((z.shape[0],) + image_shape)

  return SimpleNamespace(encode=encode, decode=decode, latent_shape=latent_shape,
                         image_shape=image_shape)


def test_vae_pretrained_on_other_images_is_used_unchanged(classifier, attribute_data,
                                                         tmp_path):
  lesions = make_lesions(64, image_size=16, seed=1)["image"]
  quick = dict(TINY, shift_steps=40)
  vae = latent_fitting.load_or_train_generator(lesions, None, (), latent_config(**quick),
                                                 str(tmp_path / "lesions"))
  assert (tmp_path / "lesions" / "vae_train.jsonl").exists()
  frozen = jax.tree.map(np.array, vae.vae_params)
  workdir = tmp_path / "attributes"
  ex = LatentExplainer.fit(classifier, attribute_data["image"], config=quick,
                           workdir=str(workdir), attributes=attribute_data["attributes"],
                           attribute_names=ATTRIBUTES, generator=vae.as_pretrained())
  for a, b in zip(jax.tree.leaves(frozen), jax.tree.leaves(vae.vae_params)):
    np.testing.assert_array_equal(a, b)
  # The workdir holds the predictor's and the shift's training, and no VAE's.
  assert (workdir / "predictor_train.jsonl").exists()
  assert not (workdir / "vae_train.jsonl").exists() and not (workdir / "generator").exists()
  x = attribute_data["image"][:6]
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    out = ex.explain(x)
  assert out.counterfactual.shape == x.shape and out.maps.shape == (6, 16, 16)
  net = nnx.merge(vae.vae_def, frozen)
  z = net.encode(jnp.asarray(x))[0]
  t = np.zeros((6, len(ATTRIBUTES) + 1), np.float32)
  t[:, -1] = 2.0 * out.target - 1.0
  dz = nnx.merge(ex.shift_def, ex.shift_params)(z, t)
  assert float(jnp.max(jnp.abs(dz))) > 1e-3  # the shift trained
  np.testing.assert_allclose(out.counterfactual, net.decode(z + dz), atol=1e-5)


def test_user_generator_of_plain_functions_end_to_end(attribute_data, tmp_path):
  g = linear_generator()
  x, attrs = attribute_data["image"], attribute_data["attributes"]
  workdir = tmp_path / "fit"
  ex = cfx_jax.fit_explainer(linear_logits, x, method="latent",
                             config=dict(TINY, shift_steps=40),
                             attributes=attrs, workdir=str(workdir), generator=g)
  assert isinstance(ex, LatentExplainer) and ex.generator.latent_dim == 6
  assert not (workdir / "vae_train.jsonl").exists()
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    out = ex.explain(x[:10])
  assert out.counterfactual.shape == (10, 16, 16, 3) and out.maps.shape == (10, 16, 16)
  assert np.all(np.abs(out.counterfactual) <= 1.0)
  # Without a prior, the latents sampled are codes of training images.
  codes = np.asarray(g.encode(jnp.asarray(x))).reshape(len(x), -1)
  z = causal.sample_latents(ex.generator, 32, seed=0)
  assert z.shape == (32, 6)
  assert np.min(np.abs(z[:, None] - codes[None]).max(-1), axis=1).max() < 1e-5
  assert ex.edit(z.reshape(32, 2, 3), np.zeros((32, attrs.shape[1] + 1))).shape == (32, 16, 16, 3)
  scores = causal.causal_scores(ex, num_samples=32, seed=0)
  assert list(scores) == [f"attribute_{i}" for i in range(attrs.shape[1])]
  for s in scores.values():
    assert all(s[k]["trials"] <= 32 for k in causal.SCORES)
  # Saved without the generator: loading needs it again, and refuses another one.
  path = str(workdir / "explainer")
  with pytest.raises(ValueError, match="pretrained generator, which the library does not save"):
    cfx_jax.load_explainer(path, linear_logits)
  with pytest.raises(ValueError, match="decodes differently"):
    cfx_jax.load_explainer(path, linear_logits, generator=linear_generator(seed=1))
  loaded = cfx_jax.load_explainer(path, linear_logits, generator=g)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    again = loaded.explain(x[:10])
  np.testing.assert_allclose(again.counterfactual, out.counterfactual, atol=1e-6)
  np.testing.assert_array_equal(loaded.generator.latents, ex.generator.latents)


def test_bad_pretrained_generators_raise_before_training(attribute_data, classifier,
                                                         monkeypatch):
  from cfx_jax.methods.latent import explainer as latent_explainer

  def no_training(*args, **kwargs):
    raise AssertionError("trained before the generator was checked")

  monkeypatch.setattr(latent_explainer, "train_shift", no_training)
  monkeypatch.setattr(latent_fitting, "train_attribute_predictor", no_training)
  x, attrs = attribute_data["image"], attribute_data["attributes"]
  g = linear_generator()

  def fit(generator):
    LatentExplainer.fit(classifier, x, config=TINY, attributes=attrs, generator=generator)

  with pytest.raises(ValueError, match=r"image_shape is \(32, 32, 3\), the classifier takes "
                     r"images of shape \(16, 16, 3\)"):
    fit(linear_generator(image_shape=(32, 32, 3)))
  with pytest.raises(ValueError, match=r"decode of 2 latents returned \(2, 8, 8, 3\), "
                     r"expected \(2, 16, 16, 3\)"):
    fit(PretrainedGenerator(g.encode, lambda z: jnp.zeros((z.shape[0], 8, 8, 3)), (2, 3),
                            IMAGE_SHAPE))
  with pytest.raises(ValueError, match=r"encode of 2 images returned \(2, 6\), expected "
                     r"\(2, 2, 3\)"):
    fit(PretrainedGenerator(lambda im: g.encode(im).reshape(len(im), -1), g.decode, (2, 3),
                            IMAGE_SHAPE))
  with pytest.raises(TypeError, match=r"lacks \['decode'\]"):
    fit(SimpleNamespace(encode=g.encode, latent_shape=(2, 3), image_shape=IMAGE_SHAPE))
  with pytest.raises(ValueError, match="latent_shape must be a tuple of positive sizes"):
    PretrainedGenerator(g.encode, g.decode, (2, 0), IMAGE_SHAPE)
  with pytest.raises(ValueError, match="only by method='latent'"):
    cfx_jax.fit_explainer(linear_logits, x, method="fido", generator=g)


@pytest.mark.slow
def test_causal_study_job_end_to_end(tmp_path):
  from cfx_jax.configs.attributes_causal import get_config
  from cfx_jax.jobs.causal_study import run_spurious_marker_study

  result = run_spurious_marker_study(get_config("smoke"), str(tmp_path))
  for name in ("causal_scores.md", "causal_scores.json", "causal_scores.png",
               "causal_scores_posterior.png", "latent_edits.png"):
    assert os.path.getsize(tmp_path / name) > 0, name
  assert set(result["scores"]) == {"prior", "posterior"}
  assert set(result["scores"]["prior"]) == {"spurious", "independent"}
  assert set(result["scores"]["prior"]["spurious"]) == set(ATTRIBUTES)
  with open(tmp_path / "causal_scores.json") as f:
    saved = json.load(f)
  assert set(saved["accuracy"]) == {"spurious", "independent"}
  assert "## Classifier `spurious`" in (tmp_path / "causal_scores.md").read_text()
