"""How well relevance maps point at ground-truth regions.

Every function takes `a_batch` (N, H, W) maps and `s_batch` (N, H, W) binary
masks and returns one score per image, so callers can aggregate (or inspect
failures) however they like. All are pure JAX; the core ones are jitted
because eager dispatch of the sort/search steps dominates on small batches.

Binarisation convention: a map thresholded at percentile `p` keeps the pixels
whose value is strictly greater (`>`) than the per-image `p`-th percentile
(linear interpolation, as `numpy.percentile`). Strict inequality means ties at
the threshold are dropped, so a sparse map with many zeros never selects more
than its non-zero support, and a constant map selects nothing (IoU 0).

Top-k convention (relevance rank accuracy, top-k intersection): pixels tied
with the k-th largest value share the remaining slots equally, i.e. the score
is its expectation over random tie-breaking. This is deterministic, invariant
to pixel order, and gives a constant map exactly the chance level
(mask fraction) instead of rewarding masks that happen to sit first in memory.
On maps without ties it equals the Quantus sort-based definition.
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np


def _flatten(a_batch, s_batch):
  a = jnp.asarray(a_batch, jnp.float32)
  s = jnp.asarray(s_batch) > 0.5
  if a.shape != s.shape:
    raise ValueError(f'map shape {a.shape} != mask shape {s.shape}')
  n = a.shape[0]
  return a.reshape(n, -1), s.reshape(n, -1)


@jax.jit
def pixel_auroc(a_batch, s_batch) -> jax.Array:
  """Per-image ROC AUC of map values as scores for mask pixels.

  Computed as the Mann-Whitney statistic: for each mask pixel, the fraction of
  background pixels ranked below it, with ties worth half. A constant map gives
  exactly 0.5. NaN where the mask is empty or covers the whole image.
  """
  a, s = _flatten(a_batch, s_batch)
  n_pos = jnp.sum(s, axis=1)
  n_neg = s.shape[1] - n_pos

  def centred_credit(values, mask, negatives):
    # Background values sorted, mask pixels pushed past every finite value.
    neg_sorted = jnp.sort(jnp.where(mask, jnp.inf, values))
    below = jnp.searchsorted(neg_sorted, values, side='left')
    at_or_below = jnp.searchsorted(neg_sorted, values, side='right')
    # Twice the Mann-Whitney credit, centred on chance: a tie contributes 0.
    credit = below + at_or_below - negatives
    return jnp.sum(jnp.where(mask, credit, 0).astype(jnp.float32))

  total = jax.vmap(centred_credit)(a, s, n_neg)
  # Centring keeps a constant map at exactly 0.5 whatever the image size.
  pairs = 2.0 * n_pos.astype(jnp.float32) * n_neg.astype(jnp.float32)
  auc = 0.5 + total / jnp.maximum(pairs, 1.0)
  auc = jnp.clip(auc, 0.0, 1.0)
  return jnp.where((n_pos > 0) & (n_neg > 0), auc, jnp.nan)


def _sorted_thresholds(sorted_values, percentiles):
  """Per-image linear-interpolation percentiles from already sorted rows."""
  m = sorted_values.shape[-1]
  q = jnp.clip(jnp.asarray(percentiles, jnp.float32), 0.0, 100.0)
  pos = q * (m - 1) / 100.0
  # Snap rounding noise so e.g. q=40 on 256 pixels lands exactly on order
  # statistic 102 (as NumPy does) rather than just below it, which would
  # select the pixels equal to it.
  nearest = jnp.round(pos)
  tol = jnp.maximum(1e-3, 4.0 * jnp.finfo(jnp.float32).eps * pos)
  pos = jnp.where(jnp.abs(pos - nearest) < tol, nearest, pos)
  lo = jnp.floor(pos).astype(jnp.int32)
  hi = jnp.minimum(lo + 1, m - 1)
  frac = pos - lo
  v_lo = sorted_values[:, lo]
  v_hi = sorted_values[:, hi]
  t = v_lo + frac * (v_hi - v_lo)
  return jnp.clip(t, v_lo, v_hi)  # (N, P)


@jax.jit
def iou_curve(a_batch, s_batch, percentiles=None) -> jax.Array:
  """IoU of the mask with the map binarised at each percentile, (N, P).

  Pixels strictly above the per-image percentile value are selected. At
  percentile 100 nothing is selected, so the IoU is 0. NaN for empty masks.
  Uses sorted counts rather than materialising P binary maps per image.
  """
  if percentiles is None:
    percentiles = jnp.arange(101)
  a, s = _flatten(a_batch, s_batch)
  m = a.shape[1]
  sorted_all = jnp.sort(a, axis=1)
  # Mask values sorted, background pushed below every finite value.
  sorted_pos = jnp.sort(jnp.where(s, a, -jnp.inf), axis=1)
  thresholds = _sorted_thresholds(sorted_all, percentiles)
  n_pos = jnp.sum(s, axis=1)
  n_neg = m - n_pos

  search = jax.vmap(lambda row, t: jnp.searchsorted(row, t, side='right'))
  n_le_all = search(sorted_all, thresholds)
  n_le_pos = search(sorted_pos, thresholds) - n_neg[:, None]
  selected = m - n_le_all
  inter = n_pos[:, None] - n_le_pos
  union = n_pos[:, None] + selected - inter
  iou = inter.astype(jnp.float32) / jnp.maximum(union, 1).astype(jnp.float32)
  return jnp.where(n_pos[:, None] > 0, iou, jnp.nan)


def iou_at_percentile(a_batch, s_batch, percentile: float = 95.0) -> jax.Array:
  """IoU of the mask with the map's pixels strictly above its percentile."""
  percentiles = jnp.reshape(jnp.asarray(percentile, jnp.float32), (1,))
  return iou_curve(a_batch, s_batch, percentiles)[:, 0]


def iou_curve_area(a_batch, s_batch, percentiles=None) -> jax.Array:
  """Normalised area under the IoU curve (mean over percentiles), (N,)."""
  return jnp.mean(iou_curve(a_batch, s_batch, percentiles), axis=1)


@jax.jit
def pointing_game(a_batch, s_batch) -> jax.Array:
  """1 if the map's (first) maximum lies inside the mask, else 0.

  NaN for empty masks.
  """
  a, s = _flatten(a_batch, s_batch)
  idx = jnp.argmax(a, axis=1)
  hit = jnp.take_along_axis(s, idx[:, None], axis=1)[:, 0]
  return jnp.where(jnp.any(s, axis=1), hit.astype(jnp.float32), jnp.nan)


@jax.jit
def normalized_cross_correlation(a_batch, s_batch) -> jax.Array:
  """Pearson correlation between map and mask pixels, per image.

  NaN where the mask is empty or full (no variance to correlate with); 0 for
  a constant map, which carries no localisation information.
  """
  a, s = _flatten(a_batch, s_batch)
  s = s.astype(jnp.float32)
  a = a - jnp.mean(a, axis=1, keepdims=True)
  s = s - jnp.mean(s, axis=1, keepdims=True)
  cov = jnp.sum(a * s, axis=1)
  a_norm = jnp.sqrt(jnp.sum(a * a, axis=1))
  s_norm = jnp.sqrt(jnp.sum(s * s, axis=1))
  ncc = cov / jnp.maximum(a_norm * s_norm, jnp.finfo(jnp.float32).tiny)
  ncc = jnp.where(a_norm > 0, ncc, 0.0)
  return jnp.where(s_norm > 0, ncc, jnp.nan)


@jax.jit
def average_precision(a_batch, s_batch) -> jax.Array:
  """Per-image average precision of map values as scores for mask pixels.

  Step-wise AP as `sklearn.metrics.average_precision_score`: the sum over
  distinct thresholds of (R_n - R_{n-1}) P_n, pixels with equal values forming
  one threshold. That equals the mean, over mask pixels, of the precision of
  the set of pixels at least as relevant as it, which is what is computed here
  with two sorts instead of a per-threshold loop. NaN where the mask is empty.
  """
  a, s = _flatten(a_batch, s_batch)
  m = a.shape[1]
  n_pos = jnp.sum(s, axis=1)

  def summed_precision(values, mask):
    sorted_all = jnp.sort(values)
    # Background pushed below every finite value, so only mask pixels count.
    sorted_pos = jnp.sort(jnp.where(mask, values, -jnp.inf))
    n_at_least = m - jnp.searchsorted(sorted_all, values, side='left')
    tp_at_least = m - jnp.searchsorted(sorted_pos, values, side='left')
    precision = tp_at_least.astype(jnp.float32) / n_at_least
    return jnp.sum(jnp.where(mask, precision, 0.0))

  total = jax.vmap(summed_precision)(a, s)
  ap = total / jnp.maximum(n_pos, 1).astype(jnp.float32)
  return jnp.where(n_pos > 0, jnp.clip(ap, 0.0, 1.0), jnp.nan)


@jax.jit
def relevance_mass_accuracy(a_batch, s_batch) -> jax.Array:
  """Share of the map's total relevance that falls inside the mask.

  As Quantus RelevanceMassAccuracy (without its max-normalisation, which this
  ratio is invariant to). Expects non-negative maps. NaN where the mask is
  empty or the map sums to zero (no relevance to place).
  """
  a, s = _flatten(a_batch, s_batch)
  inside = jnp.sum(jnp.where(s, a, 0.0), axis=1)
  total = jnp.sum(a, axis=1)
  ok = jnp.any(s, axis=1) & (total != 0)
  return jnp.where(ok, inside / jnp.where(total != 0, total, 1.0), jnp.nan)


@jax.jit
def _top_k_hits(a, s, k):
  """Expected number of mask pixels among the k most relevant, (N,).

  `a`, `s` are flattened (N, M); `k` is (N,) integers in [1, M]. Pixels tied
  with the k-th value fill the slots left after the strictly larger ones,
  each with equal probability.
  """
  m = a.shape[1]
  k = jnp.clip(jnp.asarray(k, jnp.int32), 1, m)
  descending = -jnp.sort(-a, axis=1)
  kth = jnp.take_along_axis(descending, (k - 1)[:, None], axis=1)
  above = a > kth
  tied = a == kth
  n_above = jnp.sum(above, axis=1)
  n_tied = jnp.maximum(jnp.sum(tied, axis=1), 1)
  hits_above = jnp.sum(above & s, axis=1).astype(jnp.float32)
  hits_tied = jnp.sum(tied & s, axis=1).astype(jnp.float32)
  share = (k - n_above).astype(jnp.float32) / n_tied.astype(jnp.float32)
  return hits_above + share * hits_tied


@jax.jit
def relevance_rank_accuracy(a_batch, s_batch) -> jax.Array:
  """Fraction of the K most relevant pixels inside the mask, K = mask size.

  As Quantus RelevanceRankAccuracy; ties at the K-th value share credit (see
  the module docstring). 1 for a map equal to the mask, the mask fraction for
  a constant map. NaN where the mask is empty.
  """
  a, s = _flatten(a_batch, s_batch)
  n_pos = jnp.sum(s, axis=1)
  hits = _top_k_hits(a, s, n_pos)
  acc = hits / jnp.maximum(n_pos, 1).astype(jnp.float32)
  return jnp.where(n_pos > 0, acc, jnp.nan)


def _resolve_top_k(k, num_pixels: int) -> int:
  """Pixel count from `k`: an int is a count, a float in (0, 1] a fraction.

  A fraction is rounded to the nearest count, at least 1, so one setting
  carries across image sizes.
  """
  if isinstance(k, (bool, np.bool_)):
    raise TypeError('k must be an int count or a float fraction, got bool')
  if isinstance(k, (int, np.integer)):
    count = int(k)
  else:
    frac = float(k)
    if not 0.0 < frac <= 1.0:
      raise ValueError(f'fractional k must lie in (0, 1], got {frac}')
    count = max(1, round(frac * num_pixels))
  if not 1 <= count <= num_pixels:
    raise ValueError(f'k={count} pixels outside [1, {num_pixels}]')
  return count


def top_k_intersection(a_batch, s_batch,
                       k: int | float = 0.05) -> jax.Array:  # noqa: PYI041
  """Fraction of the k most relevant pixels that lie inside the mask.

  As Quantus TopKIntersection. Quantus defaults to k = 1000 pixels, about 2%
  of a 224x224 image; here `k` may be a fraction of the image (default 5%,
  51 pixels at 32x32, 13 at 16x16) or an int count. A perfect map scores
  min(1, |mask| / k). Ties at the k-th value share credit (module docstring).
  NaN where the mask is empty.
  """
  a, s = _flatten(a_batch, s_batch)
  count = _resolve_top_k(k, a.shape[1])
  hits = _top_k_hits(a, s, jnp.full((a.shape[0],), count, jnp.int32))
  return jnp.where(jnp.any(s, axis=1), hits / count, jnp.nan)


def _nanmean(x) -> float:
  x = np.asarray(x, np.float64)
  with warnings.catch_warnings():
    warnings.simplefilter('ignore', category=RuntimeWarning)
    return float(np.nanmean(x)) if x.size else float('nan')


def localization_report(a_batch, s_batch, *,
                        top_k: int | float = 0.05,  # noqa: PYI041
                        ) -> dict[str, float]:
  """Mean of each localisation score over images with a usable mask.

  `n_images` counts images whose mask is non-empty (those the IoU and pointing
  scores are defined on).
  """
  s = np.asarray(s_batch) > 0.5
  out = {
      'pixel_auroc': _nanmean(pixel_auroc(a_batch, s_batch)),
      'iou_95': _nanmean(iou_at_percentile(a_batch, s_batch, 95.0)),
      'iou_curve_area': _nanmean(iou_curve_area(a_batch, s_batch)),
      'pointing_game': _nanmean(pointing_game(a_batch, s_batch)),
      'ncc': _nanmean(normalized_cross_correlation(a_batch, s_batch)),
      'n_images': int(np.sum(s.reshape(s.shape[0], -1).any(axis=1))),
  }
  out.update({
      'average_precision': _nanmean(average_precision(a_batch, s_batch)),
      'relevance_mass_accuracy': _nanmean(
          relevance_mass_accuracy(a_batch, s_batch)),
      'relevance_rank_accuracy': _nanmean(
          relevance_rank_accuracy(a_batch, s_batch)),
      'top_k_intersection': _nanmean(
          top_k_intersection(a_batch, s_batch, top_k)),
  })
  return out
