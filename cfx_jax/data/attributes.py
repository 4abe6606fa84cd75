"""Procedural skin-like images with several independent binary attributes.

Every image has a smooth background and one plain, light "mole" (a benign disc); each
binary attribute changes one visible factor:

  lesion  a small, dark, soft-edged disc is present (the label: what a classifier should
          find). Deliberately subtle: low contrast and a few pixels across.
  marker  a conspicuous white square in the top-left corner, like the rulers and ink
          marks of dermoscopy images - a classic spurious correlate.
  bright  the background is light rather than dark.
  large   the benign mole is large rather than small (a shape factor unrelated to the
          label).

With `marker_correlation=None` all four are independent fair coins. With a value p the
marker agrees with the lesion with probability p (p=1: marker iff lesion), which builds
training sets where the marker is a perfect (or partial) shortcut to the label; a CNN
trained on p=1 learns the conspicuous marker rather than the subtle lesion. The mask
marks exactly the pixels the lesion changed.
"""

from __future__ import annotations

import numpy as np

from cfx_jax.data.resize import bilinear_matrix

ATTRIBUTES = ("lesion", "marker", "bright", "large")

# Sizes as fractions of the image side.
_LESION_RADIUS = (0.11, 0.14)
_MOLE_RADIUS = {0: (0.07, 0.09), 1: (0.16, 0.19)}  # small / large
_MARKER_SIDE = 0.16
_MARKER_OFFSET = 0.06
# Centres: the layout is roughly aligned, like the faces of an attribute data set - the
# mole left of and above the centre, the lesion right of and below it, each jittered.
_MOLE_CENTRE = (0.33, 0.38)
_LESION_CENTRE = (0.66, 0.64)
_JITTER = 0.07
# Intensities in [-1, 1].
_LEVEL = {0: -0.35, 1: 0.3}  # background level when dark / bright
_LEVEL_JITTER = 0.08
_LESION_CONTRAST = (0.4, 0.5)  # darkening at the lesion centre, fading to 0 at its rim
_MOLE_CONTRAST = (0.25, 0.35)  # lightening of the mole
_MARKER_VALUE = 0.95
_SMOOTH_AMPLITUDE = 0.03
_GRAIN = 0.02
_MOLE_EDGE = 1.5  # pixels over which the mole's edge fades
_COARSE = 4  # side of the low-frequency noise grid

# Layout of the per-image uniform draws.
_P_LESION, _P_MARKER, _P_BRIGHT, _P_LARGE = 0, 1, 2, 3
_P_LEVEL = 4
_P_LESION_SHAPE = 5  # cx, cy, radius, contrast
_P_MOLE_SHAPE = 9  # cx, cy, radius, contrast
_P_TINT = 13  # 3 channel offsets
_NUM_PARAMS = 16


def _lerp(u, bounds):
  return bounds[0] + u * (bounds[1] - bounds[0])


def _jittered(u, centre):
  return centre + _JITTER * (2 * u - 1)


def _check_int(name: str, value, minimum: int) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
    raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
  return int(value)


def _distance(xx, yy, cx, cy):
  return np.sqrt((xx - cx[:, None, None]) ** 2 + (yy - cy[:, None, None]) ** 2)


def make_attribute_images(num: int, *, seed: int, image_size: int = 32, channels: int = 3,
                          marker_correlation: float | None = None) -> dict[str, np.ndarray]:
  """`num` images with their binary attributes (columns in the order of `ATTRIBUTES`).

  Deterministic in (num, seed, image_size, channels, marker_correlation), and a smaller
  `num` yields a prefix of a larger one. Fully vectorised.

  Returns:
    {"image": (N, H, W, C) float32 in [-1, 1], "label": (N,) int32 (1 = lesion),
     "attributes": (N, 4) int32 in {0, 1}, "mask": (N, H, W) float32 lesion pixels}.
  """
  num = _check_int("num", num, 1)
  image_size = _check_int("image_size", image_size, 16)
  seed = _check_int("seed", seed, 0)
  if channels not in (1, 3):
    raise ValueError(f"channels must be 1 or 3, got {channels!r}")
  if marker_correlation is not None and not 0.0 <= float(marker_correlation) <= 1.0:
    raise ValueError(f"marker_correlation must be None or lie in [0, 1], got "
                     f"{marker_correlation!r}")

  # One stream per kind of draw, so that a smaller `num` reads a prefix of each.
  params_seed, coarse_seed, grain_seed = np.random.SeedSequence([seed, 7]).spawn(3)
  u = np.random.default_rng(params_seed).random((num, _NUM_PARAMS))
  coarse = np.random.default_rng(coarse_seed).standard_normal((num, _COARSE, _COARSE))
  grain = np.random.default_rng(grain_seed).standard_normal(
      (num, image_size, image_size, channels))

  lesion = u[:, _P_LESION] < 0.5
  if marker_correlation is None:
    marker = u[:, _P_MARKER] < 0.5
  else:
    marker = np.where(u[:, _P_MARKER] < float(marker_correlation), lesion, ~lesion)
  bright = u[:, _P_BRIGHT] < 0.5
  large = u[:, _P_LARGE] < 0.5

  s = float(image_size)
  coords = np.arange(image_size, dtype=np.float64) + 0.5
  yy, xx = coords[None, :, None], coords[None, None, :]

  interp = bilinear_matrix(_COARSE, image_size)
  smooth = np.einsum("hi,nij,wj->nhw", interp, coarse, interp)
  level = np.where(bright, _LEVEL[1], _LEVEL[0]) + _LEVEL_JITTER * (2 * u[:, _P_LEVEL] - 1)
  image = level[:, None, None] + _SMOOTH_AMPLITUDE * smooth

  m = u[:, _P_MOLE_SHAPE:_P_MOLE_SHAPE + 4]
  mole_radius = np.where(large, _lerp(m[:, 2], _MOLE_RADIUS[1]),
                         _lerp(m[:, 2], _MOLE_RADIUS[0])) * s
  dist = _distance(xx, yy, _jittered(m[:, 0], _MOLE_CENTRE[0]) * s,
                   _jittered(m[:, 1], _MOLE_CENTRE[1]) * s)
  mole = np.clip((np.maximum(mole_radius, 1.0)[:, None, None] - dist) / _MOLE_EDGE + 0.5, 0, 1)
  image = image + mole * _lerp(m[:, 3], _MOLE_CONTRAST)[:, None, None]

  p = u[:, _P_LESION_SHAPE:_P_LESION_SHAPE + 4]
  # A soft dome, darkest at the centre: smooth enough for a small generator to render.
  dist = _distance(xx, yy, _jittered(p[:, 0], _LESION_CENTRE[0]) * s,
                   _jittered(p[:, 1], _LESION_CENTRE[1]) * s)
  radius = np.maximum(_lerp(p[:, 2], _LESION_RADIUS) * s, 1.5)[:, None, None]
  disc = np.clip(1.0 - np.square(dist / radius), 0.0, 1.0) * lesion[:, None, None]
  image = image - disc * _lerp(p[:, 3], _LESION_CONTRAST)[:, None, None]
  mask = (disc > 0).astype(np.float32)

  image = image[..., None]
  if channels == 3:
    # Skin-like tint: red above green above blue, with a little variation per image.
    tint = np.array([0.08, -0.02, -0.1]) + 0.04 * (2 * u[:, _P_TINT:_P_TINT + 3] - 1)
    image = image + tint[:, None, None, :]
  image = image + _GRAIN * grain

  side = max(2, round(_MARKER_SIDE * s))
  offset = max(1, round(_MARKER_OFFSET * s))
  square = np.zeros((image_size, image_size), bool)
  square[offset:offset + side, offset:offset + side] = True
  image = np.where((marker[:, None, None] & square)[..., None], _MARKER_VALUE, image)

  attributes = np.stack([lesion, marker, bright, large], axis=1).astype(np.int32)
  return {"image": np.clip(image, -1.0, 1.0).astype(np.float32),
          "label": lesion.astype(np.int32), "attributes": attributes, "mask": mask}
