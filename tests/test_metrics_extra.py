"""Extra metrics: AP, relevance mass / rank, top-k, insertion / deletion,
Fréchet / kernel distances, the realism autoencoder and parameter
randomisation, on known cases and against NumPy / sklearn / scipy."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from scipy import linalg, stats
from sklearn.metrics import average_precision_score

from cfx_jax import metrics
from cfx_jax.models import CNNClassifier

H = W = 16


def _random_case(seed=0, n=6, levels=None):
  rng = np.random.default_rng(seed)
  if levels is None:
    maps = rng.random((n, H, W)).astype(np.float32)
  else:  # Few distinct values: plenty of ties.
    maps = rng.integers(0, levels, (n, H, W)).astype(np.float32)
  masks = rng.random((n, H, W)) < rng.uniform(0.1, 0.5, (n, 1, 1))
  return maps, masks.astype(np.float32)


def _square_mask():
  mask = np.zeros((H, W), np.float32)
  mask[4:10, 5:12] = 1.0  # 42 of 256 pixels
  return mask


def _known_cases():
  """Perfect, inverted, uniform map and an empty mask, one image each."""
  mask = _square_mask()
  maps = np.stack([mask, 1.0 - mask, np.full_like(mask, 0.3), mask])
  masks = np.stack([mask, mask, mask, np.zeros_like(mask)])
  return maps, masks


FRAC = 42 / 256


# ---------------------------------------------------------------- localisation


def _np_average_precision(a, s):
  """Sum over distinct thresholds t (descending) of (R_t - R_prev) P_t."""
  a, s = a.ravel().astype(np.float64), s.ravel() > 0.5
  if not s.any():
    return np.nan
  ap, prev_recall = 0.0, 0.0
  for t in np.unique(a)[::-1]:
    selected = a >= t
    tp = np.sum(selected & s)
    recall = tp / s.sum()
    ap += (recall - prev_recall) * tp / selected.sum()
    prev_recall = recall
  return ap


@pytest.mark.parametrize('levels', [None, 3, 7])
def test_average_precision_matches_numpy_and_sklearn(levels):
  maps, masks = _random_case(seed=1, levels=levels)
  got = np.asarray(metrics.average_precision(maps, masks))
  ref = [_np_average_precision(a, s) for a, s in zip(maps, masks)]
  skl = [average_precision_score(s.ravel(), a.ravel())
         for a, s in zip(maps, masks)]
  np.testing.assert_allclose(got, ref, atol=1e-5)
  np.testing.assert_allclose(got, skl, atol=1e-5)


def test_known_cases_for_every_localisation_score():
  maps, masks = _known_cases()
  nan = np.nan
  expected = {
      # perfect, inverted, uniform (chance), empty mask
      metrics.average_precision: [1.0, FRAC, FRAC, nan],
      metrics.relevance_mass_accuracy: [1.0, 0.0, FRAC, nan],
      metrics.relevance_rank_accuracy: [1.0, 0.0, FRAC, nan],
      metrics.pixel_auroc: [1.0, 0.0, 0.5, nan],
      lambda a, s: metrics.top_k_intersection(a, s, 10): [1.0, 0.0, FRAC, nan],
      # k = 128 > 42 mask pixels caps the perfect map at 42 / 128.
      lambda a, s: metrics.top_k_intersection(a, s, 0.5): [
          42 / 128, 0.0, FRAC, nan],
  }
  for fn, want in expected.items():
    np.testing.assert_allclose(np.asarray(fn(maps, masks)), want, atol=1e-6)


@pytest.mark.parametrize('scale', [3.0, 4.0])
def test_positive_scaling_invariance(scale):
  maps, masks = _random_case(seed=2, levels=5)
  maps = maps + 1.0  # strictly positive, so the mass ratio is defined
  for fn in (metrics.average_precision, metrics.relevance_rank_accuracy,
             metrics.top_k_intersection, metrics.pixel_auroc,
             metrics.iou_curve, metrics.relevance_mass_accuracy):
    np.testing.assert_allclose(fn(maps, masks), fn(maps * scale, masks),
                               atol=1e-6)


def _np_top_k_sorted(a, s, k):
  """Quantus' definition: first k pixels of a descending argsort."""
  order = np.argsort(-a.ravel(), kind='stable')
  return s.ravel()[order[:k]].mean()


def test_rank_and_top_k_match_sort_definition_without_ties():
  maps, masks = _random_case(seed=3)
  for k in (1, 13, 100):
    want = [_np_top_k_sorted(a, s, k) for a, s in zip(maps, masks)]
    np.testing.assert_allclose(metrics.top_k_intersection(maps, masks, k),
                               want, atol=1e-6)
  want = [_np_top_k_sorted(a, s, int(s.sum())) for a, s in zip(maps, masks)]
  np.testing.assert_allclose(metrics.relevance_rank_accuracy(maps, masks),
                             want, atol=1e-6)


def test_top_k_ties_score_the_expected_random_tie_break():
  maps, masks = _random_case(seed=4, levels=4)
  rng = np.random.default_rng(0)
  k = 40
  draws = []
  for _ in range(400):  # random tie-breaking by a tiny jitter
    jitter = maps + rng.random(maps.shape) * 1e-3
    draws.append([_np_top_k_sorted(a, s, k) for a, s in zip(jitter, masks)])
  got = np.asarray(metrics.top_k_intersection(maps, masks, k))
  np.testing.assert_allclose(got, np.mean(draws, axis=0), atol=0.02)
  # The exact expectation is independent of how pixels are laid out.
  perm = rng.permutation(H * W)
  flat = lambda x: x.reshape(len(x), -1)[:, perm].reshape(x.shape)
  np.testing.assert_allclose(
      metrics.top_k_intersection(flat(maps), flat(masks), k), got, atol=1e-6)


def test_relevance_mass_matches_numpy_and_zero_map_is_nan():
  maps, masks = _random_case(seed=5)
  want = (maps * masks).sum(axis=(1, 2)) / maps.sum(axis=(1, 2))
  np.testing.assert_allclose(metrics.relevance_mass_accuracy(maps, masks),
                             want, atol=1e-6)
  maps[0] = 0.0
  assert np.isnan(metrics.relevance_mass_accuracy(maps, masks)[0])


def test_top_k_argument_forms():
  maps, masks = _random_case(seed=6, n=2)
  frac = metrics.top_k_intersection(maps, masks)  # default 5%: 13 pixels
  np.testing.assert_allclose(frac, metrics.top_k_intersection(maps, masks, 13))
  jitted = jax.jit(metrics.top_k_intersection, static_argnames='k')
  np.testing.assert_allclose(jitted(maps, masks, k=13), frac, atol=1e-6)
  for bad in (0, 257, 1.5, 0.0, True):
    with pytest.raises((ValueError, TypeError)):
      metrics.top_k_intersection(maps, masks, bad)


def test_localization_report_quantus_scores():
  maps, masks = _random_case(seed=7, n=4)
  masks[0] = 0.0
  base = metrics.localization_report(maps, masks)
  rep = metrics.localization_report(maps, masks, top_k=20)
  assert set(rep) == set(base) | {'average_precision',
                                  'relevance_mass_accuracy',
                                  'relevance_rank_accuracy',
                                  'top_k_intersection'}
  want = np.mean([average_precision_score(s.ravel(), a.ravel())
                  for a, s in zip(maps[1:], masks[1:])])
  assert rep['average_precision'] == pytest.approx(want, abs=1e-5)
  assert rep['top_k_intersection'] == pytest.approx(np.mean(
      [_np_top_k_sorted(a, s, 20) for a, s in zip(maps[1:], masks[1:])]))


# ---------------------------------------------------------------- faithfulness

PATCH = (slice(4, 8), slice(4, 8))


def _patch_logits(images):
  """Class 1 evidence is the mean of one 4x4 patch, all channels."""
  z = 10.0 * (jnp.mean(images[:, PATCH[0], PATCH[1], :], axis=(1, 2, 3)) - 0.25)
  return jnp.stack([jnp.zeros_like(z), z], axis=-1)


def _patch_images(n=4, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.uniform(-0.3, 0.3, (n, H, W, 3)).astype(np.float32)
  x[:, PATCH[0], PATCH[1], :] = 0.6
  return x


def _sigmoid(z):
  return 1.0 / (1.0 + np.exp(-z))


def test_insertion_deletion_rewards_the_evidence_patch():
  x = _patch_images()
  y = np.ones(len(x), np.int32)
  patch_map = np.zeros((len(x), H, W), np.float32)
  patch_map[:, PATCH[0], PATCH[1]] = 1.0
  random_map = np.random.default_rng(1).random((len(x), H, W))
  both = metrics.insertion_deletion(
      _patch_logits, np.concatenate([x, x]),
      np.concatenate([patch_map, random_map]), np.concatenate([y, y]),
      steps=16)
  assert both.deletion.shape == both.insertion.shape == (2 * len(x), 17)
  assert both.deletion_auc.shape == (2 * len(x),)
  good, rand = slice(0, len(x)), slice(len(x), None)
  assert np.all(both.deletion_auc[good] < both.deletion_auc[rand])
  assert np.all(both.insertion_auc[good] > both.insertion_auc[rand])
  # Curves start / end on the input and on the baselines.
  p_x = _sigmoid(10.0 * (0.6 - 0.25))
  blurred = metrics.gaussian_blur(np.concatenate([x, x]))
  p_blur = jax.nn.softmax(_patch_logits(blurred))[:, 1]
  np.testing.assert_allclose(both.deletion[:, 0], p_x, atol=1e-5)
  np.testing.assert_allclose(both.insertion[:, -1], p_x, atol=1e-5)
  np.testing.assert_allclose(both.deletion[:, -1], _sigmoid(-2.5), atol=1e-5)
  np.testing.assert_allclose(both.insertion[:, 0], p_blur, atol=1e-5)
  # The patch (16 pixels) is exactly the first of 16 steps of 16 pixels.
  np.testing.assert_allclose(both.deletion[good, 1:], _sigmoid(-2.5),
                             atol=1e-5)
  np.testing.assert_allclose(both.insertion[good, 1:], p_x, atol=1e-5)
  np.testing.assert_allclose(
      both.deletion_auc, np.trapezoid(both.deletion, dx=1 / 16, axis=1),
      atol=1e-6)


def _pixel_logits(row, col):
  def fn(images):
    z = 20.0 * (images[:, row, col, 0] - 0.5)
    return jnp.stack([jnp.zeros_like(z), z], axis=-1)
  return fn


def test_insertion_deletion_breaks_ties_by_pixel_index():
  x = np.ones((1, H, W, 1), np.float32)
  flat = np.zeros((1, H, W), np.float32)
  y = np.ones(1, np.int32)
  first = metrics.insertion_deletion(_pixel_logits(0, 0), x, flat, y, steps=4)
  last = metrics.insertion_deletion(_pixel_logits(H - 1, W - 1), x, flat, y,
                                    steps=4, baseline=0.0)
  high, low = _sigmoid(10.0), _sigmoid(-10.0)
  np.testing.assert_allclose(first.deletion[0], [high] + [low] * 4, atol=1e-6)
  np.testing.assert_allclose(last.deletion[0], [high] * 4 + [low], atol=1e-6)
  np.testing.assert_allclose(last.insertion[0], [low] * 4 + [high], atol=1e-6)


def test_insertion_deletion_baseline_forms():
  x = _patch_images(n=2)
  a = np.random.default_rng(2).random((2, H, W))
  y = np.ones(2, np.int32)
  pair = metrics.insertion_deletion(_patch_logits, x, a, y, steps=4,
                                    baseline=('zeros', np.zeros_like(x)))
  np.testing.assert_allclose(pair.insertion[:, 0], _sigmoid(-2.5), atol=1e-5)
  np.testing.assert_allclose(pair.deletion[:, -1], _sigmoid(-2.5), atol=1e-5)
  grey = metrics.insertion_deletion(_patch_logits, x, a, y, steps=4,
                                    baseline=0.0)
  np.testing.assert_allclose(grey.insertion, pair.insertion, atol=1e-6)
  with pytest.raises(ValueError):
    metrics.insertion_deletion(_patch_logits, x, a, y, baseline='noise')
  with pytest.raises(ValueError):
    metrics.insertion_deletion(_patch_logits, x, a[:, :8], y)


# ---------------------------------------------------------------- realism


def test_frechet_distance_identical_and_diagonal_closed_form():
  rng = np.random.default_rng(0)
  feats = rng.normal(size=(300, 5))
  assert metrics.frechet_distance(feats, feats) == pytest.approx(0.0, abs=1e-8)
  mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, -1.0, 2.0])
  v1, v2 = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
  want = np.sum((mu1 - mu2) ** 2) + np.sum(v1 + v2 - 2 * np.sqrt(v1 * v2))
  got = metrics.frechet_distance_from_stats(mu1, np.diag(v1), mu2, np.diag(v2))
  assert got == pytest.approx(want, rel=1e-10)
  # Sampled Gaussians converge to the closed form.
  a = mu1 + np.sqrt(v1) * rng.normal(size=(40000, 3))
  b = mu2 + np.sqrt(v2) * rng.normal(size=(40000, 3))
  assert metrics.frechet_distance(a, b) == pytest.approx(want, rel=0.03)


def test_frechet_distance_matches_scipy_sqrtm():
  rng = np.random.default_rng(1)
  a = rng.normal(size=(200, 6)) @ rng.normal(size=(6, 6))
  b = rng.normal(size=(150, 6)) @ rng.normal(size=(6, 6)) + 0.5
  mu1, s1 = a.mean(0), np.cov(a, rowvar=False)
  mu2, s2 = b.mean(0), np.cov(b, rowvar=False)
  want = (np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2)
          - 2 * np.trace(linalg.sqrtm(s1 @ s2).real))
  assert metrics.frechet_distance(a, b) == pytest.approx(want, rel=1e-8)


def _mmd2_loops(x, y):
  k = lambda u, v: (u @ v / x.shape[1] + 1.0) ** 3
  m = len(x)
  xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j)
  yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j)
  xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m))
  return xx / (m * (m - 1)) + yy / (m * (m - 1)) - 2 * xy / m**2


def test_kernel_inception_distance():
  rng = np.random.default_rng(2)
  small_x, small_y = rng.normal(size=(7, 4)), rng.normal(size=(7, 4)) + 0.3
  mean, std = metrics.kernel_inception_distance(small_x, small_y, subsets=1,
                                                subset_size=7)
  assert mean == pytest.approx(_mmd2_loops(small_x, small_y), rel=1e-10)
  assert std == 0.0
  real = rng.normal(size=(400, 8))
  same = rng.normal(size=(400, 8))
  shifted = rng.normal(size=(400, 8)) + 0.5
  kw = {'subsets': 10, 'subset_size': 200}
  kid_same, _ = metrics.kernel_inception_distance(real, same, **kw)
  kid_shift, _ = metrics.kernel_inception_distance(real, shifted, **kw)
  assert abs(kid_same) < 0.02 and kid_shift > 10 * max(abs(kid_same), 0.01)
  assert metrics.kernel_inception_distance(real, shifted, **kw) == (
      metrics.kernel_inception_distance(real, shifted, **kw))


# ---------------------------------------------------------------- autoencoder


def test_autoencoder_training_lowers_reconstruction_loss():
  # Colour ramps: structured enough that a short training clearly helps.
  rng = np.random.default_rng(3)
  ramp_y, ramp_x = np.mgrid[0:H, 0:W][..., None] / (H - 1.0)
  c, d, e = rng.uniform(-1, 1, (3, 128, 1, 1, 3))
  images = np.clip(c * ramp_x + d * ramp_y + 0.5 * e, -1, 1).astype(np.float32)
  untrained = metrics.train_autoencoder(images, steps=0, code_dim=8, seed=0)
  trained = metrics.train_autoencoder(images, steps=100, batch_size=32,
                                      code_dim=8, seed=0)
  assert trained.losses.shape == (10,)   # one per logging step (every 10)
  assert trained.losses[-3:].mean() < trained.losses[:3].mean()
  mse = lambda enc: np.mean((enc.reconstruct(images) - images) ** 2)
  assert mse(trained) < 0.6 * mse(untrained)
  codes = trained(images[:10])
  assert codes.shape == (10, 8) and np.all(np.isfinite(codes))
  np.testing.assert_allclose(trained(images[:10]), codes)
  with pytest.raises(ValueError):
    metrics.train_autoencoder(np.zeros((4, 18, 18, 3)), steps=0)


# ---------------------------------------------------------------- sanity


def test_spearman_matches_scipy_with_ties():
  rng = np.random.default_rng(4)
  a = rng.integers(0, 5, (5, 8, 8)).astype(np.float32)
  b = (a + rng.integers(0, 4, a.shape)).astype(np.float32)
  c = rng.random((5, 8, 8)).astype(np.float32)
  for u, v in ((a, b), (a, c), (c, c * 2 + 1)):
    want = [stats.spearmanr(p.ravel(), q.ravel()).statistic
            for p, q in zip(u, v)]
    np.testing.assert_allclose(metrics.spearman_correlation(u, v), want,
                               atol=1e-5)
  a[0] = 3.0
  assert np.isnan(metrics.spearman_correlation(a, b)[0])


def _mlp_params(key, d_in=8 * 8, hidden=16, classes=3):
  k1, k2 = jax.random.split(key)
  return {
      'dense1': {'w': jax.random.normal(k1, (d_in, hidden)) / 8.0,
                 'b': jnp.full((hidden,), 0.1)},
      'dense2': {'w': jax.random.normal(k2, (hidden, classes)) / 4.0,
                 'b': jnp.zeros((classes,))},
  }


def _mlp_logits(params, images):
  h = jax.nn.relu(images.reshape(len(images), -1) @ params['dense1']['w']
                  + params['dense1']['b'])
  return h @ params['dense2']['w'] + params['dense2']['b']


def _gradient_map(params, x, y):
  def score(images):
    return jnp.sum(jnp.take_along_axis(_mlp_logits(params, images),
                                       y[:, None], axis=1))
  return jnp.sum(jnp.abs(jax.grad(score)(x)), axis=-1)


def test_parameter_randomisation_gradient_map():
  params = _mlp_params(jax.random.key(0))
  x = jax.random.uniform(jax.random.key(1), (4, 8, 8, 1), minval=-1.0)
  y = jnp.array([0, 1, 2, 0])
  out = metrics.parameter_randomisation(_gradient_map, params, x, y,
                                        key=jax.random.key(2))
  assert list(out) == ['dense2', 'dense1']
  for name, rho in out.items():
    assert rho.shape == (4,)
    assert np.all(np.asarray(rho) < 0.9), (name, rho)
  up = metrics.parameter_randomisation(_gradient_map, params, x, y,
                                       key=jax.random.key(2),
                                       order='bottom_up')
  assert list(up) == ['dense1', 'dense2']
  # Fully randomised either way: the same draws, so the same maps.
  np.testing.assert_allclose(up['dense2'], out['dense1'], atol=1e-6)
  # A map that ignores the parameters fails the check (correlation 1).
  edges = lambda p, xs, ys: jnp.abs(jnp.diff(xs[..., 0], axis=1, append=0.0))
  const = metrics.parameter_randomisation(edges, params, x, y,
                                          key=jax.random.key(2),
                                          order='independent')
  for rho in const.values():
    np.testing.assert_allclose(rho, 1.0, atol=1e-6)


def test_parameter_randomisation_keeps_batch_statistics():
  model = CNNClassifier(1, 2, features=(4, 8), rngs=nnx.Rngs(0))
  _, state = nnx.split(model)
  assert metrics.layer_groups(state) == [
      'convs/0', 'convs/1', 'head', 'norms/0', 'norms/1']
  seen = []

  def record(params, x, y):
    seen.append(params)
    return x[..., 0]

  x = jnp.ones((2, 8, 8, 1)) * jnp.arange(64.0).reshape(1, 8, 8, 1)
  order = ['convs/0', 'norms/0', 'convs/1', 'norms/1', 'head']
  out = metrics.parameter_randomisation(record, state, x, jnp.zeros(2, int),
                                        key=jax.random.key(0), layers=order,
                                        jit=False)
  assert list(out) == order[::-1]
  final = seen[-1]
  for i in (0, 1):
    for stat in ('mean', 'var'):
      np.testing.assert_array_equal(final['norms'][i][stat].get_value(),
                                    state['norms'][i][stat].get_value())
    assert not np.allclose(final['convs'][i]['kernel'].get_value(),
                           state['convs'][i]['kernel'].get_value())
    # A fresh BatchNorm scale is constant, so its re-draw leaves it as is.
    np.testing.assert_array_equal(final['norms'][i]['scale'].get_value(), 1.0)
  assert not np.allclose(final['head']['kernel'].get_value(),
                         state['head']['kernel'].get_value())
  with pytest.raises(ValueError, match='unknown layers'):
    metrics.parameter_randomisation(record, state, x, jnp.zeros(2, int),
                                    key=jax.random.key(0), layers=['nope'])
