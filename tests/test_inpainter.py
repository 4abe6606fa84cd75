"""The learned FIDO in-filler: masks, losses, training, resume, persistence, use in FIDO."""

from __future__ import annotations

import json
import os
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import random_images
from flax import nnx

from cfx_jax.data import make_lesions
from cfx_jax.methods.fido import infillers
from cfx_jax.methods.fido.explainer import FidoExplainer, fido_config, upsample
from cfx_jax.methods.fido.infillers import as_infiller, register_inpainter
from cfx_jax.models.inpainter import build_net
from cfx_jax.jobs import inpainter_stage as stage
from cfx_jax.methods.fido import inpainter_train as loop

SIZE = 16
SHAPE = (SIZE, SIZE, 3)


def tiny_config(**overrides):
  """Tiny networks on one device. The residual form starts as the mean-colour fill, which
  30 steps of a tiny net barely improve; the plain form starts from noise, so a short
  run shows the step learning."""
  c = loop.inpainter_config()
  c.steps, c.batch_size, c.learning_rate = 30, 16, 2e-3
  c.num_devices, c.progress, c.log_every, c.checkpoint_every = 1, False, 5, 10
  c.model.features, c.model.disc_features = (8, 16), (8, 16)
  c.model.residual = False
  c.chunk_size = 64
  c.update(overrides)
  return c


@pytest.fixture(scope="module")
def data():
  return make_lesions(256, image_size=SIZE, seed=0)["image"]


@pytest.fixture(scope="module")
def held_out():
  return make_lesions(64, image_size=SIZE, seed=7)["image"]


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("inpainter"))
  return loop.train_inpainter(data, tiny_config(), workdir), workdir


def _leaves(tree):
  return [np.asarray(a) for a in jax.tree.leaves(tree)]


# Masks and shapes -----------------------------------------------------------------------


def test_masks_cover_every_kind_and_match_fido_sampling():
  spec = loop.mask_spec(tiny_config().masks, SIZE)
  assert spec.grid_sides == (4, 2) and spec.kinds == ("grid4", "grid2", "rect")
  keep, kind = jax.jit(loop.sample_masks, static_argnums=(1, 2, 3))(
      jax.random.key(0), 64, SHAPE, spec)
  keep, kind = np.asarray(keep), np.asarray(kind)
  assert keep.shape == (64, SIZE, SIZE, 1) and kind.shape == (64,)
  assert keep.min() >= 0.0 and keep.max() <= 1.0
  assert set(kind.tolist()) == {0, 1, 2}
  rect = keep[kind == 2]
  assert set(np.unique(rect).tolist()) <= {0.0, 1.0} and (rect == 0).any(axis=(1, 2, 3)).all()
  # A grid mask is FIDO's concrete sample of a constant drop logit, upsampled bilinearly.
  key = jax.random.key(3)
  got = jax.jit(loop.grid_masks, static_argnums=range(1, 7))(
      key, 2, SIZE, SIZE, 4, (0.3, 0.3), 0.1)
  noise = np.asarray(jax.random.logistic(jax.random.split(key)[1], (2, 4, 4)))
  drop = 1.0 / (1.0 + np.exp(-(np.log(0.3 / 0.7) + noise) / 0.1))
  want = 1.0 - upsample(jnp.asarray(drop, jnp.float32), SIZE, SIZE)[..., None]
  np.testing.assert_allclose(got, want, atol=1e-5)


def test_untrained_residual_net_is_the_visible_mean_fill(held_out):
  model = {**tiny_config().model.to_dict(), "residual": True}
  graphdef, params = nnx.split(build_net(SHAPE, model, nnx.Rngs(0)))
  x = held_out[:4]
  keep = np.random.default_rng(0).uniform(0, 1, (4, SIZE, SIZE, 1)).astype(np.float32)
  hard = (keep > 0.5).astype(np.float32)
  mean = (x * hard).sum(axis=(1, 2), keepdims=True) / hard.sum(axis=(1, 2), keepdims=True)
  out = np.asarray(jax.jit(lambda p, im, k: nnx.merge(graphdef, p)(im, k))(params, x, keep))
  assert out.shape == x.shape
  np.testing.assert_allclose(out, hard * x + (1 - hard) * mean, atol=1e-6)


def test_network_shapes_and_composite_keeps_kept_pixels(trained, held_out):
  inp, _ = trained
  x = held_out[:8]
  keep, _, _ = stage.held_out_masks(inp, 8, seed=0)
  binary = (keep > 0.5).astype(np.float32)
  fills = inp.fills(x, binary)
  assert fills.shape == x.shape and np.isfinite(fills).all()
  out = inp.inpaint(x, binary)
  kept = np.broadcast_to(binary == 1.0, x.shape)
  np.testing.assert_array_equal(out[kept], x[kept])
  np.testing.assert_array_equal(out[~kept], fills[~kept])
  # Mostly dropped pixels are hidden from the network, however little of them is dropped.
  soft = np.where(binary == 0.0, 0.45, 0.95).astype(np.float32)
  changed = np.where(binary == 0.0, -x, x)
  np.testing.assert_array_equal(inp.fills(changed, soft), inp.fills(x, soft))
  # The FIDO in-filler returns the network's fill (FIDO composites it itself).
  fn = as_infiller(inp)
  assert fn.uses_mask and not fn.uses_key
  np.testing.assert_allclose(fn(jnp.asarray(x), jnp.asarray(binary), jax.random.key(0)),
                             fills, atol=1e-5)


# Losses against NumPy --------------------------------------------------------------------


def _softplus(z):
  return np.logaddexp(0.0, z)


def test_loss_terms_match_numpy():
  rng = np.random.default_rng(0)
  x = rng.uniform(-1, 1, (4,) + SHAPE).astype(np.float32)
  fills = rng.uniform(-1, 1, x.shape).astype(np.float32)
  keep = rng.uniform(0, 1, (4, SIZE, SIZE, 1)).astype(np.float32)
  a = rng.normal(size=SHAPE[:2] + (4,)).astype(np.float32) / 20.0
  b = 0.3
  w = {"recon": 1.5, "adv": 0.2, "gp": 3.0}

  def disc_fn(images, k):
    pair = jnp.concatenate([images, k], axis=-1)
    return jnp.sum(pair * a, axis=(1, 2, 3)) + b

  drop = 1.0 - keep
  l1 = np.sum(drop * np.abs(fills - x)) / (3 * np.sum(drop))
  np.testing.assert_allclose(loop.dropped_l1(fills, x, keep), l1, rtol=1e-5)

  fakes = keep * x + (1 - keep) * fills

  def logit(im):
    return np.sum(np.concatenate([im, keep], -1) * a, axis=(1, 2, 3)) + b

  real_np = np.mean(_softplus(-logit(x)))
  fake_np = np.mean(_softplus(logit(fakes)))
  # A linear critic's gradient is a[..., :3] at every interpolate.
  gp_np = (np.sqrt(np.sum(a[..., :3] ** 2)) - 1.0) ** 2
  d_loss, d = loop.discriminator_loss(disc_fn, x, fakes, keep, jax.random.key(0), w)
  np.testing.assert_allclose(d["d_real"], real_np, rtol=1e-5)
  np.testing.assert_allclose(d["d_fake"], fake_np, rtol=1e-5)
  np.testing.assert_allclose(d["d_gp"], gp_np, rtol=1e-4)
  np.testing.assert_allclose(d_loss, real_np + fake_np + 3.0 * gp_np, rtol=1e-4)

  # The mask-aware reference fill of the evaluation: the mean of the kept pixels.
  hard = (keep > 0.5).astype(np.float32)
  np.testing.assert_allclose(
      stage.kept_mean_fill(x, hard)[:, 0, 0],
      (x * hard).sum(axis=(1, 2)) / hard.sum(axis=(1, 2)), rtol=1e-5)

  g_loss, g = loop.generator_loss(disc_fn, fills, x, keep, w)
  adv_np = np.mean(_softplus(-logit(fakes)))
  np.testing.assert_allclose(g["g_recon"], l1, rtol=1e-5)
  np.testing.assert_allclose(g["g_adv"], adv_np, rtol=1e-5)
  np.testing.assert_allclose(g_loss, 1.5 * l1 + 0.2 * adv_np, rtol=1e-5)


# Training -------------------------------------------------------------------------------


def test_short_training_lowers_reconstruction_loss(trained, data, held_out):
  inp, workdir = trained
  untrained = loop.train_inpainter(data, tiny_config(steps=0))
  before, _ = stage.evaluate_inpainter(untrained, held_out, seed=5, baselines=())
  after, _ = stage.evaluate_inpainter(inp, held_out, seed=5, baselines=())
  assert after["l1_dropped"]["inpainter"] < 0.9 * before["l1_dropped"]["inpainter"]
  assert [r["step"] for r in inp.history] == [5, 10, 15, 20, 25, 30]
  assert all(np.isfinite(r[k]) for r in inp.history for k in ("d_loss", "g_loss"))
  with open(os.path.join(workdir, "inpainter_train.jsonl")) as f:
    assert [json.loads(line)["step"] for line in f] == [5, 10, 15, 20, 25, 30]


def test_resume_refuses_another_model(data, tmp_path):
  # Resuming itself is tested for every model in test_engine.py.
  a = str(tmp_path / "a")
  loop.train_inpainter(data, tiny_config(steps=2, checkpoint_every=2, log_every=1), a)
  with pytest.raises(ValueError, match="model"):
    bigger = tiny_config(steps=5)
    bigger.model.features = (8, 32)
    loop.train_inpainter(data, bigger, a)


def test_save_load_round_trip(trained, held_out, tmp_path):
  inp, workdir = trained
  loaded = loop.load_inpainter(os.path.join(workdir, "inpainter"))
  assert loaded.image_shape == SHAPE
  for x, y in zip(_leaves(inp.params), _leaves(loaded.params), strict=True):
    np.testing.assert_array_equal(x, y)
  keep, _, _ = stage.held_out_masks(inp, 8, seed=2)
  np.testing.assert_array_equal(loaded.fills(held_out[:8], keep), inp.fills(held_out[:8], keep))
  loop.save_inpainter(str(tmp_path / "copy"), loaded)
  again = loop.load_inpainter(str(tmp_path / "copy"))
  np.testing.assert_array_equal(again.fills(held_out[:8], keep), inp.fills(held_out[:8], keep))


def test_evaluation_and_figure(trained, held_out, tmp_path):
  inp, _ = trained
  metrics, samples = stage.evaluate_inpainter(inp, held_out[:16], seed=1, baselines=("blur",))
  assert set(metrics["l1_dropped"]) == {"inpainter", "blur"}
  assert set(metrics["l1_dropped_by_mask"]) <= {"grid4", "grid2", "rect"}
  assert all(np.isfinite(v) for v in metrics["l1_dropped"].values())
  path = stage.save_inpainting_figure(str(tmp_path / "fig.png"), samples, rows=2)
  assert os.path.getsize(path) > 0


# FIDO -----------------------------------------------------------------------------------


def test_fido_runs_with_the_learned_infiller(trained, classifier):
  inp, _ = trained
  x = random_images(4, seed=3)
  try:
    registered = register_inpainter(inp, "test_inpainter")  # before the config names it
    # One threshold (the paper's form): the in-filled region is exactly `threshold`'s.
    cfg = fido_config(steps=4, samples=2, warmup=2, chunk_size=8, infiller="test_inpainter",
                      thresholds=())
    assert infillers.get_infiller("test_inpainter") is registered and registered.uses_mask
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")
      out = FidoExplainer(classifier, cfg).explain(x)
  finally:
    infillers.INFILLERS.pop("test_inpainter", None)
  assert out.maps.shape == (4, SIZE, SIZE) and np.isfinite(out.maps).all()
  assert np.isfinite(out.counterfactual).all()
  # Pixels FIDO keeps are the original ones; the dropped ones come from the in-painter.
  keep = (out.maps <= cfg.threshold)[..., None]
  np.testing.assert_allclose(np.where(keep, out.counterfactual, x), x, atol=1e-6)
  dropped = ~np.broadcast_to(keep, x.shape)
  if dropped.any():
    fills = inp.fills(x, keep.astype(np.float32))
    np.testing.assert_allclose(out.counterfactual[dropped], fills[dropped], atol=1e-5)
