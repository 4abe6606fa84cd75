"""Test-time corruptions of a query, at three graded severities each.

An explainer meets images that are noisier, blurrier, flatter or more compressed than
the ones it was built on; DISC claims its counterfactuals hold up under such unknown
corruptions. These four, in the spirit of the common-corruption benchmarks, let that be
measured for any method: Gaussian noise, Gaussian blur, reduced contrast, and JPEG-like
quantisation (8x8 block DCT, quantised with the JPEG luminance table at a given quality,
per channel, without chroma subsampling).

Images in [-1, 1], (N, H, W, C); outputs are float32, clipped to [-1, 1] and a
deterministic function of (images, kind, severity, seed).
"""

from __future__ import annotations

import numpy as np

# Severity 1, 2, 3 of each corruption, in the units named.
SEVERITIES = {
    "gaussian_noise": (0.08, 0.16, 0.32),  # noise std, in [-1, 1] units
    "blur": (0.6, 1.0, 1.5),               # Gaussian sigma, pixels
    "contrast": (0.6, 0.4, 0.25),          # factor on the distance to the image's mean
    "jpeg": (50, 20, 8),                   # JPEG quality (100 best)
}
CORRUPTIONS = tuple(SEVERITIES)

# The JPEG standard's example luminance quantisation table (ITU T.81, Annex K).
_LUMINANCE = np.array([
    [16, 11, 10, 16, 24, 40, 51, 61],
    [12, 12, 14, 19, 26, 58, 60, 55],
    [14, 13, 16, 24, 40, 57, 69, 56],
    [14, 17, 22, 29, 51, 87, 80, 62],
    [18, 22, 37, 56, 68, 109, 103, 77],
    [24, 35, 55, 64, 81, 104, 113, 92],
    [49, 64, 78, 87, 103, 121, 120, 101],
    [72, 92, 95, 98, 112, 100, 103, 99]], np.float64)


def corrupt(images, kind: str, severity: int, seed: int = 0) -> np.ndarray:
  """`images` under corruption `kind` (one of CORRUPTIONS) at `severity` 1, 2 or 3."""
  x = np.asarray(images, np.float64)
  if x.ndim != 4:
    raise ValueError(f"images must be (N, H, W, C), got shape {x.shape}")
  if kind not in SEVERITIES:
    raise ValueError(f"unknown corruption {kind!r}; available: {list(CORRUPTIONS)}")
  if severity not in (1, 2, 3):
    raise ValueError(f"severity must be 1, 2 or 3, got {severity!r}")
  level = SEVERITIES[kind][severity - 1]
  if kind == "gaussian_noise":
    out = x + level * np.random.default_rng(seed).standard_normal(x.shape)
  elif kind == "blur":
    out = gaussian_blur(x, level)
  elif kind == "contrast":
    mean = x.mean(axis=(1, 2, 3), keepdims=True)
    out = mean + level * (x - mean)
  else:
    out = jpeg_quantise(x, level)
  return np.clip(out, -1.0, 1.0).astype(np.float32)


def gaussian_blur(images: np.ndarray, sigma: float) -> np.ndarray:
  """Separable Gaussian blur of (N, H, W, C) images over H and W: the kernel and the
  edge reflection of scipy.ndimage.gaussian_filter(truncate=3)."""
  radius = int(3 * sigma + 0.5)
  offsets = np.arange(-radius, radius + 1)
  kernel = np.exp(-0.5 * (offsets / sigma) ** 2)
  kernel /= kernel.sum()
  out = np.asarray(images, np.float64)
  for axis in (1, 2):
    pad = [(0, 0)] * 4
    pad[axis] = (radius, radius)
    padded = np.pad(out, pad, mode="symmetric")
    n = out.shape[axis]
    out = sum(w * np.take(padded, np.arange(i, i + n), axis=axis)
              for i, w in enumerate(kernel))
  return out


def _dct_matrix(n: int = 8) -> np.ndarray:
  """Orthonormal DCT-II matrix: coefficients = D @ block @ D.T."""
  k, i = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
  d = np.sqrt(2.0 / n) * np.cos(np.pi * (2 * i + 1) * k / (2 * n))
  d[0] /= np.sqrt(2.0)
  return d


def quantisation_table(quality: int) -> np.ndarray:
  """The luminance table scaled to `quality` in [1, 100] (the IJG reference scaling)."""
  if not 1 <= quality <= 100:
    raise ValueError(f"JPEG quality must be in [1, 100], got {quality}")
  scale = 5000.0 / quality if quality < 50 else 200.0 - 2.0 * quality
  return np.clip(np.floor((_LUMINANCE * scale + 50.0) / 100.0), 1.0, 255.0)


def jpeg_quantise(images: np.ndarray, quality: int) -> np.ndarray:
  """Each channel's 8x8 blocks (edge-padded to a multiple of 8) through the DCT, rounded
  to multiples of the quality's table, and back; on the 0..255 scale, as JPEG does."""
  x = (np.asarray(images, np.float64) + 1.0) * 127.5 - 128.0
  n, h, w, c = x.shape
  ph, pw = -h % 8, -w % 8
  x = np.pad(x, [(0, 0), (0, ph), (0, pw), (0, 0)], mode="edge")
  hb, wb = x.shape[1] // 8, x.shape[2] // 8
  blocks = x.reshape(n, hb, 8, wb, 8, c).transpose(0, 1, 3, 5, 2, 4)  # (..., 8, 8)
  d, q = _dct_matrix(), quantisation_table(quality)
  coeffs = np.round(d @ blocks @ d.T / q) * q
  blocks = d.T @ coeffs @ d
  x = blocks.transpose(0, 1, 4, 2, 5, 3).reshape(n, hb * 8, wb * 8, c)[:, :h, :w]
  return (np.clip(np.round(x + 128.0), 0.0, 255.0)) / 127.5 - 1.0
