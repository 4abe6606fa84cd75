"""Localisation metrics against NumPy/sklearn references and known cases."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from cfx_jax import metrics


def _random_case(seed=0, n=6, h=16, w=16, levels=None):
  rng = np.random.default_rng(seed)
  if levels is None:
    maps = rng.random((n, h, w)).astype(np.float32)
  else:  # Few distinct values: plenty of ties.
    maps = rng.integers(0, levels, (n, h, w)).astype(np.float32)
  masks = (rng.random((n, h, w)) < rng.uniform(0.1, 0.5, (n, 1, 1)))
  return maps, masks.astype(np.float32)


def _square_mask(n=1, h=16, w=16):
  mask = np.zeros((n, h, w), np.float32)
  mask[:, 4:10, 5:12] = 1.0
  return mask


def _np_iou(maps, masks, q):
  out = []
  for a, s in zip(maps, masks):
    s = s > 0.5
    if not s.any():
      out.append(np.nan)
      continue
    pred = a > np.percentile(a, q)
    union = np.logical_or(pred, s).sum()
    out.append(np.logical_and(pred, s).sum() / union)
  return np.array(out)


@pytest.mark.parametrize('levels', [None, 3, 7])
def test_pixel_auroc_matches_sklearn(levels):
  maps, masks = _random_case(seed=1, levels=levels)
  got = np.asarray(metrics.pixel_auroc(maps, masks))
  want = [roc_auc_score(s.ravel(), a.ravel()) for a, s in zip(maps, masks)]
  np.testing.assert_allclose(got, want, atol=1e-5)


def test_pixel_auroc_known_cases():
  mask = _square_mask(3)
  maps = np.stack([mask[0], 1.0 - mask[0], np.full_like(mask[0], 0.3)])
  np.testing.assert_allclose(metrics.pixel_auroc(maps, mask), [1.0, 0.0, 0.5])


def test_pixel_auroc_degenerate_masks_are_nan():
  maps = np.random.default_rng(0).random((3, 8, 8)).astype(np.float32)
  masks = np.stack([np.zeros((8, 8)), np.ones((8, 8)), _square_mask(1, 8, 8)[0]])
  got = np.asarray(metrics.pixel_auroc(maps, masks))
  assert np.isnan(got[0]) and np.isnan(got[1]) and np.isfinite(got[2])


def test_invariance_to_positive_affine_maps():
  maps, masks = _random_case(seed=2)
  shifted = maps * 2.0 + 1.0
  for fn in (metrics.pixel_auroc, metrics.iou_at_percentile,
             metrics.pointing_game, metrics.iou_curve_area,
             metrics.normalized_cross_correlation):
    np.testing.assert_allclose(fn(maps, masks), fn(shifted, masks), atol=1e-5,
                               err_msg=fn.__name__)


@pytest.mark.parametrize('q', [50.0, 90.0, 95.0])
def test_iou_at_percentile_matches_numpy(q):
  maps, masks = _random_case(seed=3)
  masks[0] = 0.0
  got = np.asarray(metrics.iou_at_percentile(maps, masks, q))
  np.testing.assert_allclose(got, _np_iou(maps, masks, q), atol=1e-6)


def test_iou_with_ties_uses_strict_threshold():
  # 90% zeros: the 95th percentile lands inside the non-zero support, and
  # the 50th percentile is 0, so only the non-zero pixels are selected.
  maps, masks = _random_case(seed=4)
  maps = np.where(maps > 0.9, maps, 0.0).astype(np.float32)
  for q in (50.0, 95.0):
    np.testing.assert_allclose(metrics.iou_at_percentile(maps, masks, q),
                               _np_iou(maps, masks, q), atol=1e-6)


def test_iou_perfect_map():
  mask = _square_mask(1)
  frac = mask.mean()  # 42 / 256 pixels, so any q below 1 - frac is perfect.
  q = 100.0 * (1.0 - frac) - 1.0
  np.testing.assert_allclose(metrics.iou_at_percentile(mask, mask, q), [1.0])


def test_iou_curve_shape_and_extremes():
  maps, masks = _random_case(seed=5)
  curve = np.asarray(metrics.iou_curve(maps, masks))
  assert curve.shape == (maps.shape[0], 101)
  np.testing.assert_allclose(curve, np.stack(
      [_np_iou(maps, masks, q) for q in range(101)], axis=1), atol=1e-6)
  # Continuous values: at 0 all but the minimum pixel are kept, at 100 none.
  n_pix = maps[0].size
  for i, s in enumerate(masks):
    keep_all = s.sum() / n_pix
    assert abs(curve[i, 0] - keep_all) <= 1.0 / n_pix + 1e-6
  np.testing.assert_array_equal(curve[:, -1], 0.0)
  area = np.asarray(metrics.iou_curve_area(maps, masks))
  np.testing.assert_allclose(area, curve.mean(axis=1), atol=1e-6)


def test_iou_custom_percentiles_and_empty_mask():
  maps, masks = _random_case(seed=6, n=3)
  masks[1] = 0.0
  curve = np.asarray(metrics.iou_curve(maps, masks, jnp.array([10.0, 60.0])))
  assert curve.shape == (3, 2)
  assert np.isnan(curve[1]).all() and np.isfinite(curve[[0, 2]]).all()
  assert np.isnan(metrics.iou_curve_area(maps, masks)[1])


def test_constant_map_selects_nothing():
  mask = _square_mask(1)
  const = np.full_like(mask, 0.7)
  assert float(metrics.iou_at_percentile(const, mask)[0]) == 0.0


def test_pointing_game_known_cases():
  mask = _square_mask(4)
  maps = np.zeros_like(mask)
  maps[0, 6, 7] = 1.0  # inside
  maps[1, 0, 0] = 1.0  # outside
  maps[2, 0, 0] = maps[2, 6, 7] = 1.0  # tie: first argmax (outside) wins
  maps[3, 6, 7] = 1.0
  mask[3] = 0.0  # empty mask
  got = np.asarray(metrics.pointing_game(maps, mask))
  np.testing.assert_array_equal(got[:3], [1.0, 0.0, 0.0])
  assert np.isnan(got[3])


def test_ncc_matches_numpy():
  maps, masks = _random_case(seed=7)
  want = [np.corrcoef(a.ravel(), s.ravel())[0, 1] for a, s in zip(maps, masks)]
  got = metrics.normalized_cross_correlation(maps, masks)
  np.testing.assert_allclose(got, want, atol=1e-5)


def test_ncc_edge_cases():
  mask = _square_mask(3)
  maps = np.stack([mask[0], np.full_like(mask[0], 2.0), mask[0]])
  mask[2] = 0.0
  got = np.asarray(metrics.normalized_cross_correlation(maps, mask))
  np.testing.assert_allclose(got[:2], [1.0, 0.0], atol=1e-6)
  assert np.isnan(got[2])


def test_metrics_are_jittable():
  maps, masks = _random_case(seed=8)
  np.testing.assert_allclose(jax.jit(metrics.pixel_auroc)(maps, masks),
                             metrics.pixel_auroc(maps, masks), atol=1e-6)
  iou = jax.jit(metrics.iou_at_percentile)(maps, masks, 95.0)
  np.testing.assert_allclose(iou, _np_iou(maps, masks, 95.0), atol=1e-6)
  for fn in (metrics.iou_curve, metrics.pointing_game,
             metrics.normalized_cross_correlation):
    np.testing.assert_allclose(jax.jit(fn)(maps, masks), fn(maps, masks),
                               atol=1e-6)


def test_localization_report():
  maps, masks = _random_case(seed=9, n=5)
  masks[0] = 0.0
  rep = metrics.localization_report(maps, masks)
  assert set(rep) == {'pixel_auroc', 'iou_95', 'iou_curve_area',
                      'pointing_game', 'ncc', 'n_images', 'average_precision',
                      'relevance_mass_accuracy', 'relevance_rank_accuracy',
                      'top_k_intersection'}
  assert rep['n_images'] == 4
  want = np.mean([roc_auc_score(s.ravel(), a.ravel())
                  for a, s in zip(maps[1:], masks[1:])])
  assert rep['pixel_auroc'] == pytest.approx(want, abs=1e-5)
  assert rep['iou_95'] == pytest.approx(
      np.nanmean(_np_iou(maps, masks, 95.0)), abs=1e-6)
  assert all(isinstance(v, float) for k, v in rep.items() if k != 'n_images')


def test_localization_report_all_empty_masks():
  maps, masks = _random_case(seed=10, n=2)
  rep = metrics.localization_report(maps, np.zeros_like(masks))
  assert rep['n_images'] == 0 and np.isnan(rep['pixel_auroc'])


def test_flip_and_preservation_rate():
  probs = np.array([[0.9, 0.1, 0.0], [0.2, 0.7, 0.1], [0.1, 0.1, 0.8],
                    [0.5, 0.3, 0.2]], np.float32)
  assert float(metrics.flip_rate(probs, np.array([0, 1, 0, 1]))) == 0.5
  assert float(metrics.flip_rate(probs, np.array([0, 1, 2, 0]))) == 1.0
  assert float(metrics.preservation_rate(probs, np.array([0, 2, 2, 0]))) == 0.75


def test_proximity_and_sparsity():
  x = np.zeros((2, 4, 4, 3), np.float32)
  cf = x.copy()
  cf[0, 0, 0, :] = 0.8  # one pixel, all channels
  cf[0, 1, 1, 2] = -0.4  # one pixel, one channel
  cf[1] = 0.05  # everything, below threshold
  l1 = np.asarray(metrics.proximity_l1(x, cf))
  l2 = np.asarray(metrics.proximity_l2(x, cf))
  np.testing.assert_allclose(l1, [(3 * 0.8 + 0.4) / 48, 0.05], rtol=1e-6)
  np.testing.assert_allclose(
      l2, [np.sqrt((3 * 0.64 + 0.16) / 48), 0.05], rtol=1e-6)
  np.testing.assert_allclose(metrics.sparsity(x, cf), [2 / 16, 0.0])
  np.testing.assert_allclose(metrics.sparsity(x, cf, threshold=0.5),
                             [1 / 16, 0.0])
  np.testing.assert_allclose(metrics.sparsity(x, cf, threshold=0.01),
                             [2 / 16, 1.0])


def test_counterfactual_report():
  from cfx_jax.explanation import Explanation

  x = np.zeros((2, 4, 4, 1), np.float32)
  cf = x + 0.5
  e = Explanation(maps=np.zeros((2, 4, 4), np.float32), counterfactual=cf,
                  stable=x.copy(), target=np.array([1, 0], np.int32),
                  probs=np.array([[0.9, 0.1], [0.2, 0.8]], np.float32),
                  cf_probs=np.array([[0.3, 0.7], [0.6, 0.4]], np.float32))
  rep = metrics.counterfactual_report(x, e, stable_probs=e.probs)
  assert rep['flip_rate'] == 1.0 and rep['preservation_rate'] == 1.0
  assert rep['proximity_l1'] == pytest.approx(0.5)
  assert rep['sparsity'] == 1.0 and rep['stable_l1'] == 0.0
  assert 'preservation_rate' not in metrics.counterfactual_report(x, e)
