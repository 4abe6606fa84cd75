"""FIDO: gradients, behaviour on the one-patch classifier, batch independence, in-fillers."""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import BIAS, IMAGE_SHAPE, PATCH, WEIGHT, linear_logits, random_images

from cfx_jax.methods.fido import infillers
from cfx_jax.methods.fido.explainer import (
  FidoExplainer,
  fido_config,
  fido_loss,
  log_odds,
  optimise_masks,
  upsample,
)

FAST = {"steps": 80, "learning_rate": 0.2, "warmup": 10, "infiller": "mean"}


def on_off(maps):
  """Mean map value on the evidence patch and off it, per image."""
  on = maps[:, PATCH[0], PATCH[1]].mean(axis=(1, 2))
  rest = np.ones(maps.shape[1:], bool)
  rest[PATCH] = False
  return on, maps[:, rest].mean(axis=1)


def quiet_explain(explainer, images, **kw):
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    return explainer.explain(images, **kw)


# Objective -----------------------------------------------------------------------------


@pytest.mark.parametrize("objective,infiller,tv", [("ssr", "blur", 0.3), ("sdr", "noise", 0.0)])
def test_loss_gradient_matches_finite_differences(objective, infiller, tv):
  with jax.enable_x64(True):
    rng = np.random.default_rng(0)
    w = jnp.asarray(rng.normal(size=(8 * 8 * 3, 3)) / 10.0)
    x = jnp.asarray(rng.uniform(-1, 1, (8, 8, 3)))
    theta = jnp.asarray(rng.normal(size=(4, 4)))
    cfg = fido_config(objective=objective, infiller=infiller, tv=tv, samples=4, warmup=4,
                      temperature=0.1)

    def score_fn(images, c):
      return log_odds(images.reshape(len(images), -1) @ w, c)

    def f(t):
      return fido_loss(t, x, 2, jax.random.key(3), 1, score_fn=score_fn,
                       infill=infillers.get_infiller(infiller), cfg=cfg)

    f = jax.jit(f)
    assert f(theta).dtype == jnp.float64
    grad = np.asarray(jax.grad(f)(theta))
    eps = 1e-6
    fd = np.zeros_like(grad)
    for i in np.ndindex(theta.shape):
      e = jnp.zeros_like(theta).at[i].set(eps)
      fd[i] = (f(theta + e) - f(theta - e)) / (2 * eps)
    np.testing.assert_allclose(grad, fd, rtol=1e-5, atol=1e-8)
    assert np.abs(grad).max() > 1e-4


def test_log_odds_is_the_binary_logit():
  logits = jnp.array([[0.0, 2.5], [1.0, -1.0]])
  np.testing.assert_allclose(log_odds(logits, jnp.array([1, 1])), [2.5, -2.0], rtol=1e-6)
  k3 = jnp.array([[1.0, 2.0, 3.0]])
  expected = 3.0 - np.log(np.exp(1.0) + np.exp(2.0))
  np.testing.assert_allclose(log_odds(k3, jnp.array([2])), [expected], rtol=1e-6)


# Behaviour on the one-patch classifier -------------------------------------------------


def patch_margins(x, predicted):
  """Per image: how much in-filling the patch with the image mean moves the score."""
  fill = x.mean(axis=(1, 2, 3))
  patch = x[:, PATCH[0], PATCH[1]].mean(axis=(1, 2, 3))
  sign = 2 * predicted - 1
  keep_gain = WEIGHT * (patch - fill) * sign      # > 0: the patch supports the decision
  after_fill = (WEIGHT * fill + BIAS) * sign      # < 0: filling the patch flips it
  return keep_gain, after_fill


def test_sdr_drops_the_patch_and_flips(classifier, images):
  explainer = FidoExplainer(classifier, fido_config(objective="sdr", **FAST))
  with pytest.warns(UserWarning, match="did not reach the target class: indices") as rec:
    out = explainer.explain(images)
  predicted = classifier.predict(images)
  keep_gain, after_fill = patch_margins(images, predicted)
  assert out.maps.shape == images.shape[:3] and out.counterfactual.shape == images.shape
  np.testing.assert_array_equal(out.target, 1 - predicted)
  on, off = on_off(out.maps)
  clear = keep_gain > 5
  assert clear.sum() >= 16
  assert np.all(on[clear] > off[clear] + 0.2), (on[clear], off[clear])
  # Wherever the mean fill of the patch can flip the decision, the counterfactual flips.
  reachable = after_fill < -2
  assert reachable.sum() >= 8
  assert out.flipped[reachable].all(), np.flatnonzero(reachable & ~out.flipped)
  # Outside the dropped region (below the lowest threshold tried) it is the input.
  kept = out.maps <= min(explainer.config.thresholds)
  np.testing.assert_allclose(out.counterfactual[kept], images[kept])
  # The images that did not flip are named, not silently returned.
  failed = np.flatnonzero(~out.flipped)
  assert failed.size and f"indices {failed[:20].tolist()}" in str(rec[0].message)
  with pytest.warns(UserWarning):
    assert explainer.report_failures(out).tolist() == failed.tolist()


def test_ssr_keeps_the_patch(classifier, images):
  explainer = FidoExplainer(classifier, fido_config(objective="ssr", **FAST))
  out = quiet_explain(explainer, images)
  predicted = classifier.predict(images)
  keep_gain, _ = patch_margins(images, predicted)
  np.testing.assert_array_equal(out.target, predicted)
  on, off = on_off(out.maps)
  clear = keep_gain > 5
  assert np.all(on[clear] > off[clear] + 0.2), (on[clear], off[clear])
  # The region alone keeps the class; the thresholded mask is the mode, not the optimum
  # in expectation, so a rare borderline image may still miss.
  assert out.flipped[clear].mean() >= 0.9


def test_explicit_sdr_target_multiclass():
  import cfx_jax
  rng = np.random.default_rng(1)
  w = jnp.asarray(rng.normal(size=(16 * 16 * 3, 3)).astype(np.float32) / 4.0)
  clf = cfx_jax.as_classifier(lambda im: im.reshape(len(im), -1) @ w, IMAGE_SHAPE)
  x = random_images(6, seed=5)
  predicted = clf.predict(x)
  target = (predicted + 1) % 3
  explainer = FidoExplainer(clf, fido_config(objective="sdr", **{**FAST, "infiller": "noise"}))
  out = quiet_explain(explainer, x, target=target)
  np.testing.assert_array_equal(out.target, target)
  assert out.probs.shape == out.cf_probs.shape == (6, 3)
  assert out.flipped.mean() >= 0.5
  default = quiet_explain(explainer, x)
  assert np.all(default.target != predicted)


# Batch independence --------------------------------------------------------------------


@pytest.fixture(scope="module")
def noise_explainer(classifier):
  """One explainer (one compiled program per chunk size) shared by the batch tests."""
  return FidoExplainer(classifier, fido_config(**{**FAST, "steps": 20, "infiller": "noise",
                                                  "chunk_size": 8}))


def test_batched_equals_one_at_a_time(noise_explainer):
  x = random_images(4, seed=3)
  together = quiet_explain(noise_explainer, x)
  alone = [quiet_explain(noise_explainer, x[i:i + 1], ids=[i]) for i in range(4)]
  np.testing.assert_allclose(together.maps, np.concatenate([a.maps for a in alone]),
                             atol=1e-5)
  np.testing.assert_allclose(together.counterfactual,
                             np.concatenate([a.counterfactual for a in alone]), atol=1e-5)


@pytest.mark.parametrize("targeted", [False, True])
def test_host_dispatched_steps_equal_the_compiled_loop(classifier, targeted):
  """loop "host" (a compiled step per step, the CPU's default) and loop "scan" (one
  compiled loop) run the same optimisation: the same maps and counterfactuals."""
  x = random_images(5, seed=6)
  target = (1 - classifier.predict(x)) if targeted else None
  out = {loop: quiet_explain(FidoExplainer(classifier, fido_config(
      **{**FAST, "steps": 12, "infiller": "noise", "loop": loop})), x, target=target)
      for loop in ("host", "scan")}
  np.testing.assert_allclose(out["host"].maps, out["scan"].maps, atol=1e-5)
  np.testing.assert_allclose(out["host"].counterfactual, out["scan"].counterfactual, atol=1e-5)
  np.testing.assert_array_equal(out["host"].target, out["scan"].target)


def test_optimise_masks_batch_and_chunk_independent(classifier, noise_explainer):
  x = random_images(12, seed=4)
  cfg = noise_explainer.config
  c = jnp.asarray(classifier.predict(x))
  run = jax.jit(lambda xx, cc, ii: optimise_masks(
      lambda im, k: log_odds(linear_logits(im), k), "noise", xx, cc,
      jax.random.key(cfg.seed), cfg, ids=ii))
  theta, trace = run(x, c, jnp.arange(12))
  assert theta.shape == (12, 4, 4) and trace.shape == (12, 20)
  # A different batch shape (one image) with the image's own id: the same optimisation.
  np.testing.assert_allclose(theta[5], run(x[5:6], c[5:6], jnp.array([5]))[0][0], atol=1e-5)
  # Chunks of 8 (ids 8..11 in the second) match the single 12-image call.
  maps = quiet_explain(noise_explainer, x).maps
  np.testing.assert_allclose(maps, upsample(jax.nn.sigmoid(theta), 16, 16), atol=1e-5)


def test_counterfactual_is_the_first_threshold_whose_infill_flips(classifier):
  """From one set of drop logits: the search's counterfactual equals the single-threshold
  counterfactual (the paper's form) at the first threshold, in the order given, that
  reaches the target, or at the last where none does."""
  x = random_images(24, seed=8)
  c = jnp.asarray(classifier.predict(x))
  # Drop logits that rank the patch first, at a spread of probabilities per image.
  ramp = np.linspace(-3.0, 3.0, 24, dtype=np.float32)[:, None, None]
  grid = np.full((24, 4, 4), -4.0, np.float32) + (np.arange(16).reshape(4, 4) / 8.0)
  theta = jnp.asarray(grid + ramp)
  thresholds = (0.9, 0.7, 0.5, 0.3, 0.1)

  def finish(**settings):
    e = FidoExplainer(classifier, fido_config(**{**FAST, **settings}))
    probs = jax.nn.softmax(classifier.logits(x), axis=-1)
    return e._finish(classifier.params, jax.random.key(0), jnp.asarray(x), c,
                     jnp.arange(24), probs, theta, targeted=False)

  searched = finish(thresholds=thresholds)
  single = [finish(thresholds=(), threshold=t) for t in thresholds]
  flipped = np.stack([np.asarray(o.flipped) for o in single])          # (T, N)
  assert flipped.any(axis=0).any() and not flipped.all()  # the search has work to do
  first = np.where(flipped.any(axis=0), flipped.argmax(axis=0), len(thresholds) - 1)
  for i, t in enumerate(first):
    np.testing.assert_allclose(searched.counterfactual[i], single[t].counterfactual[i],
                               atol=1e-6)
    np.testing.assert_allclose(searched.cf_probs[i], single[t].cf_probs[i], atol=1e-6)
  np.testing.assert_array_equal(searched.flipped, flipped.any(axis=0))
  np.testing.assert_allclose(searched.maps, single[0].maps)
  with pytest.raises(ValueError, match="thresholds must lie in"):
    fido_config(thresholds=(0.5, 1.0))


# In-fillers ----------------------------------------------------------------------------


def tv(x):
  return float(np.abs(np.diff(x, axis=1)).mean() + np.abs(np.diff(x, axis=2)).mean())


@pytest.mark.parametrize("name", sorted(infillers.INFILLERS))
def test_infiller_shape_and_range(name):
  x = jnp.asarray(random_images(3, seed=2))
  keep = jnp.ones(x.shape[:3] + (1,))
  fills = np.asarray(infillers.get_infiller(name)(x, keep, jax.random.key(0)))
  assert fills.shape == x.shape and np.isfinite(fills).all()
  assert fills.min() >= -1.0 and fills.max() <= 1.0
  if name in ("blur", "local_mean"):
    assert tv(fills) < 0.5 * tv(np.asarray(x))
  if name == "mean":
    np.testing.assert_allclose(fills, np.broadcast_to(x.mean(axis=(1, 2), keepdims=True),
                                                      x.shape), atol=1e-6)
  if name == "noise":
    again = infillers.get_infiller(name)(x, keep, jax.random.key(1))
    assert not np.allclose(fills, again)


def test_blur_sigma_scales_with_size():
  assert infillers.blur_sigma(224, 224) == pytest.approx(10.0)
  assert infillers.blur_sigma(32, 64) == pytest.approx(10.0 * 32 / 224)
  flat = jnp.full((1, 32, 32, 3), 0.3)
  np.testing.assert_allclose(infillers.blur_fill(flat), flat, atol=1e-6)
  np.testing.assert_allclose(infillers.local_mean_fill(flat), flat, atol=1e-6)


def test_custom_mask_conditioned_infiller(classifier):
  seen = {}

  def inpaint(images, keep_mask, key):
    seen["mask"] = keep_mask.shape
    return jnp.zeros_like(images) * keep_mask

  filler = infillers.get_infiller(inpaint)
  assert filler.uses_mask and filler.uses_key
  x = random_images(2, seed=6)
  out = quiet_explain(FidoExplainer(classifier, fido_config(steps=3), infiller=inpaint), x)
  assert seen["mask"][-1] == 1 and out.maps.shape == (2, 16, 16)
  const = infillers.dataset_mean_infiller([0.1, 0.2, 0.3])
  np.testing.assert_allclose(const(jnp.zeros((1, 2, 2, 3)), None, None)[0, 0, 0], [0.1, 0.2, 0.3])


# Bad input -----------------------------------------------------------------------------


def test_bad_inputs_raise(classifier, images):
  explainer = FidoExplainer(classifier, fido_config(steps=2))
  with pytest.raises(ValueError, match="unknown FIDO objective"):
    fido_config(objective="both")
  with pytest.raises(ValueError, match="unknown in-filler 'inpaint'.*blur"):
    fido_config(infiller="inpaint")
  with pytest.raises(ValueError, match="unknown in-filler"):
    FidoExplainer(classifier, infiller="nope")
  with pytest.raises(ValueError, match="unknown FIDO setting"):
    fido_config(stpes=3)
  with pytest.raises(ValueError, match="temperature"):
    fido_config(temperature=0.0)
  with pytest.raises(ValueError, match="unknown loop 'python'"):
    fido_config(loop="python")
  with pytest.raises(ValueError, match="image size"):
    explainer.explain(np.zeros((2, 8, 8, 3), np.float32))
  with pytest.raises(ValueError, match=r"\[-1, 1\]"):
    explainer.explain(np.full((2,) + IMAGE_SHAPE, 3.0, np.float32))
  with pytest.raises(ValueError, match="target classes must lie in"):
    explainer.explain(images[:2], target=5)
  predicted = classifier.predict(images[:2])
  with pytest.raises(ValueError, match="predicted class"):
    explainer.explain(images[:2], target=predicted)
  with pytest.raises(ValueError, match="ids"):
    explainer.explain(images[:2], ids=[0])
  with pytest.raises(ValueError, match="image_shape is required"):
    FidoExplainer(linear_logits)


def test_fit_explainer_binds_fido_and_save_load_round_trip(tmp_path, classifier, images):
  import cfx_jax
  assert "fido" in cfx_jax.trainable_methods()
  explainer = cfx_jax.fit_explainer(classifier, images[:8], method="fido", seed=3,
                                    config={"steps": 3, "samples": 2,
                                            "warn_failures": False})
  assert explainer.config.seed == 3 and explainer.config.steps == 3
  first = explainer.explain(images[:4])
  explainer.save(str(tmp_path / "fido"))
  loaded = cfx_jax.load_explainer(str(tmp_path / "fido"), classifier)
  np.testing.assert_allclose(loaded.explain(images[:4]).maps, first.maps, atol=1e-6)
  with pytest.raises(ValueError, match="available"):
    cfx_jax.fit_explainer(classifier, images[:8], method="nope")
