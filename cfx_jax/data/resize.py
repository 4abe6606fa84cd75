"""Separable bilinear resizing by matrix products (NumPy, no extra dependency)."""

from __future__ import annotations

import numpy as np


def bilinear_matrix(n_in: int, n_out: int) -> np.ndarray:
  """Bilinear weights (n_out, n_in) with half-pixel centres and edge clamping."""
  pos = (np.arange(n_out) + 0.5) * n_in / n_out - 0.5
  pos = np.clip(pos, 0.0, n_in - 1.0)
  lo = np.floor(pos).astype(np.int64)
  hi = np.minimum(lo + 1, n_in - 1)
  frac = pos - lo
  mat = np.zeros((n_out, n_in), np.float64)
  mat[np.arange(n_out), lo] += 1.0 - frac
  mat[np.arange(n_out), hi] += frac
  return mat
