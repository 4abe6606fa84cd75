"""How close counterfactuals are, as a distribution, to real images.

Both scores compare feature sets (N, D) from some embedding: a classifier's
penultimate layer, or the code of the small autoencoder in
`cfx_jax.metrics.realism_autoencoder`. They are distribution-level numbers computed
once per evaluation, so they run in NumPy float64: the Fréchet distance
subtracts traces of large matrices and the KID sums many cubic kernel values,
and both lose their small differences to cancellation in float32.
"""

from __future__ import annotations

import numpy as np


def _features(x, name: str) -> np.ndarray:
  x = np.asarray(x, np.float64)
  if x.ndim != 2 or x.shape[0] < 2:
    raise ValueError(f'{name} must be (N, D) with N >= 2, got {x.shape}')
  return x


def gaussian_stats(features) -> tuple[np.ndarray, np.ndarray]:
  """Mean (D,) and unbiased covariance (D, D) of a feature set."""
  f = _features(features, 'features')
  return f.mean(axis=0), np.atleast_2d(np.cov(f, rowvar=False))


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
  vals, vecs = np.linalg.eigh(matrix)
  return (vecs * np.sqrt(np.clip(vals, 0.0, None))) @ vecs.T


def frechet_distance_from_stats(mu1, sigma1, mu2, sigma2) -> float:
  """||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)).

  tr((S1 S2)^(1/2)) is taken as tr((A S2 A)^(1/2)) with A = S1^(1/2): the
  two matrices are similar, and the second is symmetric positive
  semi-definite, so both roots come from symmetric eigendecompositions with
  negative rounding noise clipped to 0, instead of a general (complex)
  `sqrtm` of the non-symmetric product.
  """
  mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
  s1 = np.asarray(sigma1, np.float64)
  s2 = np.asarray(sigma2, np.float64)
  root1 = _psd_sqrt((s1 + s1.T) / 2)
  inner = root1 @ s2 @ root1
  eig = np.linalg.eigvalsh((inner + inner.T) / 2)
  cross = np.sum(np.sqrt(np.clip(eig, 0.0, None)))
  diff = mu1 - mu2
  value = diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * cross
  return float(max(value, 0.0))


def frechet_distance(real_features, fake_features) -> float:
  """Fréchet distance between Gaussians fitted to two feature sets (FID)."""
  return frechet_distance_from_stats(*gaussian_stats(real_features),
                                     *gaussian_stats(fake_features))


def _unbiased_mmd2(x: np.ndarray, y: np.ndarray) -> float:
  d = x.shape[1]
  m = x.shape[0]
  k_xx = (x @ x.T / d + 1.0) ** 3
  k_yy = (y @ y.T / d + 1.0) ** 3
  k_xy = (x @ y.T / d + 1.0) ** 3
  # Diagonals dropped: the within-set terms are U-statistics.
  within = ((k_xx.sum() - np.trace(k_xx)) + (k_yy.sum() - np.trace(k_yy)))
  return float(within / (m * (m - 1)) - 2.0 * k_xy.mean())


def kernel_inception_distance(real, fake, *, subsets: int = 100,
                              subset_size: int = 1000,
                              seed: int = 0) -> tuple[float, float]:
  """Mean and std over subsets of the unbiased MMD^2 (Bińkowski et al. 2018).

  Kernel k(x, y) = (x.y / d + 1)^3. Each subset draws `subset_size` rows of
  each set without replacement from a generator seeded with `seed`, so the
  result is reproducible. `subset_size` is capped at the smaller set's size
  so small evaluation sets still give an (noisier) estimate. Unbiased, so it
  can be slightly negative when the two sets come from one distribution.
  """
  x = _features(real, 'real')
  y = _features(fake, 'fake')
  if x.shape[1] != y.shape[1]:
    raise ValueError(f'feature sizes differ: {x.shape[1]} vs {y.shape[1]}')
  if subsets < 1:
    raise ValueError(f'subsets must be >= 1, got {subsets}')
  m = min(int(subset_size), x.shape[0], y.shape[0])
  if m < 2:
    raise ValueError(f'subset_size must be >= 2, got {subset_size}')
  rng = np.random.default_rng(seed)
  values = []
  for _ in range(subsets):
    xi = rng.choice(x.shape[0], m, replace=False)
    yi = rng.choice(y.shape[0], m, replace=False)
    values.append(_unbiased_mmd2(x[xi], y[yi]))
  values = np.asarray(values)
  return float(values.mean()), float(values.std())
