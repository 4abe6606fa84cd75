"""CAE: loss terms against NumPy, network shapes, training, the explanation path and its
first flip, prototypes, persistence, input checks, failure reports, the code-space figure
and resuming an interrupted training run."""

from __future__ import annotations

import json
import os
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import cfx_jax
from cfx_jax.methods.cae.explainer import (
  CaeExplainer,
  cae_config,
  chosen_point,
  class_prototypes,
  first_flip,
  pca_2d,
  training_config,
)
from cfx_jax.models.cae import (
  CaeDecoder,
  build_autoencoder,
  fold,
  unfold,
  CaeDiscriminator,
  CaeEncoder,
  adain,
  build_networks,
  instance_norm,
)
from cfx_jax.methods.cae import train as cae_train

SIZE = 16
SHAPE = (SIZE, SIZE, 3)
# Brightness decides the class: a code that AdaIN turns into a per-channel shift can
# carry it, so a short run learns a class code that flips the classifier.
GAIN = 20.0


def tiny(**overrides) -> dict:
  """Tiny networks on one device, quiet; keyword overrides on top."""
  cfg = {"steps": 60, "batch_size": 16, "learning_rate": 2e-3, "num_devices": 1,
         "progress": False, "log_every": 10, "checkpoint_every": 30, "chunk_size": 16,
         "model": {"features": (8, 16), "content_channels": 8, "mlp_width": 16,
                   "disc_features": (8, 16), "style_dim": 4}}
  cfg.update(overrides)
  return cfg


def brightness_images(n: int, seed: int) -> np.ndarray:
  """Smooth random textures with a per-image brightness offset, in [-1, 1]."""
  rng = np.random.default_rng(seed)
  coarse = rng.normal(size=(n, 4, 4, 3))
  texture = np.repeat(np.repeat(coarse, 4, axis=1), 4, axis=2) * 0.25
  texture += rng.normal(size=(n,) + SHAPE) * 0.05
  offset = rng.uniform(-0.5, 0.5, (n, 1, 1, 1))
  return np.clip(texture + offset, -1.0, 1.0).astype(np.float32)


def brightness_logits(images):
  s = GAIN * jnp.mean(images, axis=(1, 2, 3))
  return jnp.stack([jnp.zeros_like(s), s], axis=-1)


def quiet(fn, *args, **kw):
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    return fn(*args, **kw)


def leaves(tree):
  return [np.asarray(a) for a in jax.tree.leaves(tree)]


@pytest.fixture(scope="module")
def clf():
  return cfx_jax.as_classifier(brightness_logits, SHAPE)


@pytest.fixture(scope="module")
def train_images():
  return brightness_images(256, seed=0)


@pytest.fixture(scope="module")
def test_images():
  return brightness_images(24, seed=1)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  return tmp_path_factory.mktemp("cae")


@pytest.fixture(scope="module")
def untrained(clf, train_images):
  return cae_train.train_cae(train_images, clf.predict(train_images),
                            training_config(cae_config(**tiny(steps=0))))


@pytest.fixture(scope="module")
def fitted(clf, train_images, workdir):
  return CaeExplainer.fit(clf, train_images, seed=0, config=tiny(), workdir=str(workdir))


# Loss terms against NumPy ---------------------------------------------------------------


def toy_networks(xp, rng):
  """encode / decode / disc written once for NumPy and once for jax.numpy."""
  a = rng.normal(size=(3, 4))
  b = rng.normal(size=(4, 3)) * 0.5
  wr = rng.normal(size=(8 * 8 * 3,)) * 0.05
  wc = rng.normal(size=(8 * 8 * 3, 2)) * 0.05

  def encode(x):
    return xp.mean(x, axis=(1, 2)) @ a, 0.5 * x[:, ::2, ::2, :]

  def decode(s, c):
    up = xp.repeat(xp.repeat(c, 2, axis=1), 2, axis=2)
    return xp.tanh(2.0 * up + (s @ b)[:, None, None, :])

  def disc(x):
    f = x.reshape(x.shape[0], -1)
    return f @ wr, f @ wc

  return encode, decode, disc


def np_softplus(z):
  return np.logaddexp(0.0, z)


def np_cross_entropy(logits, labels):
  lse = np.log(np.sum(np.exp(logits - logits.max(-1, keepdims=True)), -1)) + logits.max(-1)
  return np.mean(lse - logits[np.arange(len(labels)), labels])


def test_swap_partners_pair_every_image_with_another_class():
  np.testing.assert_array_equal(cae_train.swap_partners(2, 3, 1), [3, 4, 5, 0, 1, 2])
  np.testing.assert_array_equal(cae_train.swap_partners(3, 2, 2), [4, 5, 0, 1, 2, 3])
  for k, shift in ((2, 1), (3, 1), (3, 2), (4, 3)):
    partner = np.asarray(cae_train.swap_partners(k, 5, shift))
    labels = np.repeat(np.arange(k), 5)
    assert (labels[partner] != labels).all()
    assert sorted(partner.tolist()) == list(range(5 * k))  # every image donates once


def test_loss_terms_match_numpy():
  rng = np.random.default_rng(0)
  x = rng.uniform(-1, 1, (6, 8, 8, 3)).astype(np.float32)
  labels = np.repeat(np.arange(2), 3).astype(np.int32)
  partner = np.asarray(cae_train.swap_partners(2, 3, 1))
  np_enc, np_dec, np_disc = toy_networks(np, np.random.default_rng(1))
  j_enc, j_dec, j_disc = toy_networks(jnp, np.random.default_rng(1))
  terms, swapped = cae_train.generator_terms(j_enc, j_dec, j_disc, jnp.asarray(x),
                                            jnp.asarray(labels), jnp.asarray(partner))
  x64 = x.astype(np.float64)
  s, c = np_enc(x64)
  rec = np_dec(s, c)
  ref_swapped = np_dec(s[partner], c)
  s_sw, c_sw = np_enc(ref_swapped)
  back = np_dec(s, c_sw)
  rf, cls = np_disc(ref_swapped)
  expected = {
      "recon": np.mean(np.abs(rec - x64)),
      "code": np.mean(np.abs(s_sw - s[partner])) + np.mean(np.abs(c_sw - c)),
      "cycle": np.mean(np.abs(back - x64)),
      "cls": np_cross_entropy(cls, labels[partner]),
      "adv": np.mean(np_softplus(-rf)),
  }
  np.testing.assert_allclose(swapped, ref_swapped, rtol=1e-4, atol=1e-5)
  for name, value in expected.items():
    np.testing.assert_allclose(terms[name], value, rtol=1e-4, err_msg=name)
  w = {"recon": 10.0, "code": 1.0, "cycle": 1.0, "cls": 10.0, "adv": 1.0, "disc_cls": 2.0}
  np.testing.assert_allclose(cae_train.generator_total(terms, w),
                             sum(w[k] * v for k, v in expected.items()), rtol=1e-4)

  fake = ref_swapped[::-1].copy()
  d = cae_train.discriminator_terms(j_disc, jnp.asarray(x), jnp.asarray(labels),
                                   jnp.asarray(fake, jnp.float32))
  real_rf, real_cls = np_disc(x64)
  fake_rf, _ = np_disc(fake)
  np.testing.assert_allclose(d["adv"], np.mean(np_softplus(-real_rf))
                             + np.mean(np_softplus(fake_rf)), rtol=1e-4)
  np.testing.assert_allclose(d["cls"], np_cross_entropy(real_cls, labels), rtol=1e-4)
  np.testing.assert_allclose(cae_train.discriminator_total(d, w), d["adv"] + 2.0 * d["cls"],
                             rtol=1e-6)


def test_code_targets_are_held_fixed():
  """The code term moves the re-encoding, not the codes it is compared with."""
  s_target = jnp.array([[1.0, -2.0]])
  grad = jax.grad(lambda t: cae_train.code_loss(jnp.zeros((1, 2)), jnp.zeros((1, 2, 2, 1)),
                                               t, jnp.ones((1, 2, 2, 1))))(s_target)
  np.testing.assert_array_equal(grad, 0.0)


# Networks -------------------------------------------------------------------------------


def test_network_shapes_and_adain(untrained, test_images):
  """Shapes by abstract evaluation (initialising new shapes eagerly is slow on CPU)."""
  def shapes(x, y):
    rngs = nnx.Rngs(0)
    enc = CaeEncoder(3, features=(8, 16, 32), style_dim=5, content_channels=6, rngs=rngs)
    s, c = enc(x)
    dec = CaeDecoder(3, features=(8, 16, 32), style_dim=5, content_channels=6, rngs=rngs)
    disc = CaeDiscriminator(3, SIZE, 4, features=(8, 16), rngs=rngs)
    auto, d = build_networks(y.shape[1:], 3, cae_config(model={"features": (4, 8)}).model,
                             rngs)
    return s, c, dec(s, c), disc(x), auto(y), d(y)

  s, c, out, (real_fake, classes), other, (other_rf, other_classes) = jax.eval_shape(
      shapes, jax.ShapeDtypeStruct((2,) + SHAPE, jnp.float32),
      jax.ShapeDtypeStruct((1, 8, 12, 1), jnp.float32))
  assert s.shape == (2, 5) and c.shape == (2, 4, 4, 6)
  assert out.shape == (2, SIZE, SIZE, 3)
  assert real_fake.shape == (2,) and classes.shape == (2, 4)
  assert other.shape == (1, 8, 12, 1) and other_rf.shape == (1,)
  assert other_classes.shape == (1, 3)
  with pytest.raises(ValueError, match="divisible by 4"):
    build_networks((18, 18, 3), 2, cae_config().model, nnx.Rngs(0))
  # The untrained decoder: an image in (-1, 1) whose modulation starts at zero, so it
  # ignores the class code until training shapes it.
  codes, content = untrained.encode(test_images[:4])
  net = untrained.network
  rec = net.decode(jnp.asarray(codes), jnp.asarray(content))
  assert rec.shape == (4,) + SHAPE and float(jnp.max(jnp.abs(rec))) < 1.0
  np.testing.assert_allclose(net.decode(jnp.asarray(codes) + 3.0, jnp.asarray(content)), rec,
                             atol=1e-6)

  h = np.random.default_rng(0).normal(size=(2, 3, 3, 4)) * 2 + 1
  mean = h.mean(axis=(1, 2), keepdims=True)
  ref = (h - mean) / np.sqrt(h.var(axis=(1, 2), keepdims=True) + 1e-5)
  np.testing.assert_allclose(instance_norm(jnp.asarray(h, jnp.float32)), ref, atol=1e-5)
  scale, shift = np.full((2, 4), 0.5), np.arange(8.0).reshape(2, 4)
  np.testing.assert_allclose(
      adain(jnp.asarray(h, jnp.float32), jnp.asarray(scale), jnp.asarray(shift)),
      1.5 * ref + shift[:, None, None, :], atol=1e-5)


def test_skip_path_carries_full_resolution_features_in_the_individual_code():
  """fold/unfold are inverse blocks-to-channels; with a skip path the individual code
  holds the encoder's first features, projected and folded, and the decoder uses them."""
  x = np.random.default_rng(0).normal(size=(2, 8, 12, 5)).astype(np.float32)
  folded = fold(jnp.asarray(x), 4)
  assert folded.shape == (2, 2, 3, 80)
  np.testing.assert_array_equal(np.asarray(folded[0, 1, 2]).reshape(4, 4, 5), x[0, 4:8, 8:12])
  np.testing.assert_array_equal(unfold(folded, 4), x)

  model = cae_config(model={"features": (4, 8, 8), "skip": 2, "content_channels": 3}).model
  auto = build_autoencoder(SHAPE, model, nnx.Rngs(0))
  images = jnp.asarray(brightness_images(2, seed=5))
  s, c = auto.encode(images)
  assert c.shape == (2, 4, 4, 3 + 16 * 2)
  first = jax.nn.leaky_relu(auto.encoder.trunk[0](images), 0.2)
  np.testing.assert_allclose(c[..., 3:], fold(auto.encoder.skip(first), 4), atol=1e-5)
  without = c.at[..., 3:].set(0.0)
  assert float(jnp.mean(jnp.abs(auto.decode(s, c) - auto.decode(s, without)))) > 1e-3
  plain = build_autoencoder(SHAPE, cae_config(model={"features": (4, 8, 8), "skip": 0,
                                                     "content_channels": 3}).model,
                            nnx.Rngs(0))
  assert plain.encode(images)[1].shape == (2, 4, 4, 3)
  with pytest.raises(ValueError, match="model.skip must be non-negative"):
    cae_config(model={"skip": -1})


# Training -------------------------------------------------------------------------------


def test_training_lowers_the_losses(fitted, untrained, test_images, workdir):
  history = fitted.model.history
  assert [r["step"] for r in history] == [10, 20, 30, 40, 50, 60]
  assert all(np.isfinite(r[k]) for r in history for k in ("g_loss", "d_loss"))
  assert history[-1]["g_recon"] < 0.7 * history[0]["g_recon"], history
  assert history[-1]["g_loss"] < history[0]["g_loss"], history
  before = np.abs(untrained.reconstruct(test_images) - test_images).mean()
  after = np.abs(fitted.model.reconstruct(test_images) - test_images).mean()
  assert after < 0.6 * before, (before, after)
  with open(os.path.join(workdir, "cae_train.jsonl")) as f:
    assert [json.loads(line)["step"] for line in f] == [10, 20, 30, 40, 50, 60]


def test_prototypes_are_the_class_means_of_the_classifiers_decisions(fitted, clf,
                                                                       train_images):
  codes = fitted.codes(train_images)
  assert codes.shape == (len(train_images), 4)
  decided = clf.predict(train_images)
  for k in range(2):
    np.testing.assert_allclose(fitted.prototypes[k], codes[decided == k].mean(0), atol=1e-5)
  np.testing.assert_allclose(class_prototypes(np.eye(3), np.array([0, 1, 0]), 2),
                             [[0.5, 0, 0.5], [0, 1, 0]])


# The path -------------------------------------------------------------------------------


def test_first_flip_and_chosen_point():
  probs = np.zeros((3, 4, 2), np.float32)
  probs[..., 0] = 1.0
  probs[0, 2:] = [0.2, 0.8]     # flips at point 2 (and stays)
  probs[1, 1] = [0.4, 0.6]      # flips at point 1, falls back later
  probs[1, 3] = [0.1, 0.9]
  flip = first_flip(jnp.asarray(probs), jnp.array([1, 1, 1]))
  np.testing.assert_array_equal(flip, [2, 1, -1])
  np.testing.assert_array_equal(chosen_point(flip, 4), [2, 1, 3])


def test_path_stops_at_the_first_flip(fitted, clf, test_images):
  x = test_images
  path = fitted.explain_path(x)
  out = quiet(fitted.explain, x)
  n, p = len(x), len(path.fractions)
  np.testing.assert_allclose(path.fractions, np.arange(1, 11) * 0.2, rtol=1e-6)
  assert path.images.shape == (n, p) + SHAPE and path.probs.shape == (n, p, 2)
  np.testing.assert_array_equal(out.target, 1 - clf.predict(x))
  np.testing.assert_array_equal(path.target, out.target)
  for i in range(n):
    decided = clf.predict(path.images[i])
    hits = np.flatnonzero(decided == out.target[i])
    assert path.flip[i] == (hits[0] if hits.size else -1)
    chosen = path.flip[i] if path.flip[i] >= 0 else p - 1
    np.testing.assert_allclose(out.counterfactual[i], path.images[i, chosen], atol=1e-6)
  np.testing.assert_array_equal(out.flipped, path.flip >= 0)
  assert out.flipped.mean() >= 0.5, path.flip
  flipped = np.flatnonzero(out.flipped)
  np.testing.assert_array_equal(clf.predict(out.counterfactual[flipped]), out.target[flipped])
  np.testing.assert_allclose(out.maps, np.abs(out.counterfactual - x).mean(-1), atol=1e-6)
  np.testing.assert_allclose(out.cf_probs, jax.nn.softmax(clf.logits(out.counterfactual)),
                             atol=1e-5)
  # Fraction 1 decodes the target's prototype with the image's own individual code; with
  # the residual, plus what the decoder misses of the image.
  _, c = fitted.model.encode(x)
  at_one = np.asarray(fitted.model.network.decode(
      jnp.asarray(fitted.prototypes[out.target]), jnp.asarray(c)))
  assert not fitted.config.keep_residual
  np.testing.assert_allclose(path.images[:, 4], at_one, atol=1e-5)
  residual = x - fitted.model.reconstruct(x)
  kept = fitted.with_path_settings(keep_residual=True).explain_path(x)
  np.testing.assert_allclose(kept.images[:, 4], np.clip(at_one + residual, -1, 1), atol=1e-5)
  assert np.all(np.isnan(path.flip_fraction) == (path.flip < 0))


def test_failures_are_reported(fitted, clf, test_images):
  """Prototypes swapped: every path heads for the image's own class and never flips."""
  wrong = CaeExplainer(clf, fitted.config, model=fitted.model,
                       prototypes=fitted.prototypes[::-1])
  with pytest.warns(UserWarning, match="CAE: .* did not reach the target class .*indices"):
    out = wrong.explain(test_images)
  failed = np.flatnonzero(~out.flipped)
  assert failed.size > len(test_images) // 2
  with pytest.warns(UserWarning, match=f"indices {failed[:20].tolist()}".replace("[", r"\[")):
    assert wrong.report_failures(out).tolist() == failed.tolist()


# Persistence, figure, bad input ----------------------------------------------------------


def test_save_load_round_trip(fitted, clf, test_images, tmp_path):
  path = str(tmp_path / "cae")
  fitted.save(path)
  with open(os.path.join(path, "explainer.json")) as f:
    meta = json.load(f)
  assert meta["method"] == "cae" and meta["image_shape"] == list(SHAPE)
  loaded = CaeExplainer.from_meta(meta, clf, path)
  first, again = quiet(fitted.explain, test_images), quiet(loaded.explain, test_images)
  np.testing.assert_array_equal(again.counterfactual, first.counterfactual)
  np.testing.assert_array_equal(again.maps, first.maps)
  np.testing.assert_array_equal(loaded.prototypes, fitted.prototypes)
  viaapi = cfx_jax.load_explainer(path, clf)
  np.testing.assert_array_equal(quiet(viaapi.explain, test_images).maps, first.maps)
  # A config saved before the skip path existed names no `skip`: it is read as the
  # decoder without one (here the saved networks have one, so they do not fit it).
  assert fitted.config.model.skip > 0
  del meta["config"]["model"]["skip"]
  with pytest.raises(ValueError, match="do not fit the network .*skip"):
    CaeExplainer.from_meta(meta, clf, path)


def test_report_writes_the_code_space_figure(fitted, test_images, tmp_path):
  out = fitted.report(str(tmp_path), test_images, (test_images.mean((1, 2, 3)) > 0))
  assert out == str(tmp_path / "cae_code_space.png") and os.path.getsize(out) > 1000
  codes = np.random.default_rng(0).normal(size=(50, 3)) * [3.0, 1.0, 0.1]
  mean, comps, ratios = pca_2d(codes)
  np.testing.assert_allclose(mean, codes.mean(0), atol=1e-12)
  np.testing.assert_allclose(comps @ comps.T, np.eye(2), atol=1e-10)
  assert abs(comps[0, 0]) > 0.95 and ratios[0] > ratios[1] > 0
  _, comps1, ratios1 = pca_2d(codes[:, :1])
  assert comps1.shape == (2, 1) and ratios1[1] == 0


def test_bad_inputs_raise(fitted, clf, train_images, test_images):
  with pytest.raises(ValueError, match="unknown CAE setting"):
    cae_config(stpes=3)
  with pytest.raises(ValueError, match="unknown CAE model setting"):
    cae_config(model={"widths": (8,)})
  with pytest.raises(ValueError, match="path_step must be positive"):
    cae_config(path_step=0.0)
  with pytest.raises(ValueError, match="max_fraction"):
    cae_config(path_step=0.5, max_fraction=0.2)
  with pytest.raises(ValueError, match="weight cls must be non-negative"):
    cae_config(weights={"cls": -1.0})
  with pytest.raises(ValueError, match="image size"):
    fitted.explain(np.zeros((2, 8, 8, 3), np.float32))
  with pytest.raises(ValueError, match=r"\[-1, 1\]"):
    fitted.explain(np.full((2,) + SHAPE, 3.0, np.float32))
  with pytest.raises(ValueError, match="predicted class"):
    fitted.explain(test_images[:2], target=clf.predict(test_images[:2]))
  with pytest.raises(ValueError, match="target classes must lie in"):
    fitted.explain_path(test_images[:2], target=4)
  with pytest.raises(ValueError, match="prototypes must have shape"):
    CaeExplainer(clf, fitted.config, model=fitted.model, prototypes=np.zeros((2, 7)))
  with pytest.raises(ValueError, match="would need CAE trained again"):
    fitted.with_path_settings(steps=5)
  cfg = training_config(cae_config(**tiny()))
  labels = clf.predict(train_images)
  with pytest.raises(ValueError, match="labels must have shape"):
    cae_train.train_cae(train_images, labels[:-1], cfg)
  with pytest.raises(ValueError, match=r"no image has label\(s\) \[1\]"):
    cae_train.train_cae(train_images, np.zeros(len(train_images), np.int32), cfg,
                       num_classes=2)
  with pytest.raises(ValueError, match="multiple of the 3 classes"):
    cae_train.train_cae(train_images, np.arange(len(train_images)) % 3, cfg)
  dark = cfx_jax.as_classifier(lambda im: brightness_logits(im) - jnp.array([0.0, 1e3]), SHAPE)
  with pytest.raises(ValueError, match="must predict every class"):
    CaeExplainer.fit(dark, train_images, config=tiny())


# Resume ---------------------------------------------------------------------------------


def test_resume_refuses_another_model_or_labels(clf, train_images, tmp_path):
  # Resuming itself is tested for every model in test_engine.py.
  a = str(tmp_path / "a")
  labels = clf.predict(train_images)

  def cfg(steps, **kw):
    return training_config(cae_config(**tiny(steps=steps, checkpoint_every=2, log_every=1,
                                              **kw)))

  cae_train.train_cae(train_images, labels, cfg(2), a)
  with pytest.raises(ValueError, match="model"):
    cae_train.train_cae(train_images, labels, cfg(6, model={**tiny()["model"],
                                                           "style_dim": 3}), a)
  with pytest.raises(ValueError, match="other labels"):
    cae_train.train_cae(train_images, 1 - labels, cfg(6), a)


def test_sharded_step_matches_one_device(clf, train_images):
  """The batch split over two devices (params replicated) trains like one device."""
  labels = clf.predict(train_images)
  runs = [cae_train.train_cae(train_images, labels, training_config(cae_config(
      **tiny(steps=2, num_devices=d)))) for d in (1, 2)]
  for x, y in zip(leaves(runs[0].params), leaves(runs[1].params), strict=True):
    np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5)
  assert runs[1].history[-1]["step"] == 2
  with pytest.raises(ValueError, match=r"per batch \(6\) must be divisible by the 4 devices"):
    cae_train.train_cae(train_images, labels, training_config(cae_config(
        **tiny(steps=2, batch_size=12, num_devices=4))))

