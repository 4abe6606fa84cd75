"""Procedural "lesion" images whose ground-truth evidence is known exactly.

Every image has a textured background and a few uniformly filled distractor
shapes (squares, bars, discs). Positive images additionally carry one small
target-shaped lesion: a disc whose core and rim have opposite contrast. The
lesion is the only place where such a contrast reversal occurs, so a classifier
has to find its shape; it cannot rely on global brightness because the
lesion's polarity is random and the distractors have the same contrast range.
The returned mask marks exactly the pixels the lesion changed, which lets
attribution and counterfactual methods be scored against the truth.
"""

from __future__ import annotations

import numpy as np

from cfx_jax.data.resize import bilinear_matrix

# Relative sizes, as fractions of the image side (the lesion's is public: the truth
# scores size a lesion-sized spot by it).
LESION_RADIUS = (0.07, 0.15)
_CORE_FRACTION = 0.5  # core radius relative to the lesion radius
_DISC_RADIUS = (0.07, 0.16)
_SQUARE_HALF = (0.07, 0.15)
_BAR_HALF_LENGTH = (0.15, 0.30)
_BAR_HALF_WIDTH = (0.035, 0.06)
# Contrasts are added to the underlying intensity.
_CONTRAST = (0.35, 0.65)
_NUM_DISTRACTORS = (2, 4)
_COARSE = 5  # side of the low-frequency noise grid
_CHUNK = 1024  # images rendered at once (bounds temporary memory)

# Layout of the per-image uniform draws.
_P_LABEL = 0
_P_LEVEL = 1
_P_LF_AMP = 2
_P_NUM_SHAPES = 3
_P_LESION = 4  # cx, cy, radius, contrast, sign
_P_TINT = 9  # 3 gains, 3 offsets
_P_SHAPES = 15  # per slot: type, cx, cy, size_a, size_b, angle, contrast, sign
_SHAPE_FIELDS = 8
_NUM_PARAMS = _P_SHAPES + _NUM_DISTRACTORS[1] * _SHAPE_FIELDS


def _lerp(u: np.ndarray, bounds: tuple[float, float]) -> np.ndarray:
  return bounds[0] + u * (bounds[1] - bounds[0])


def _draw(start: int, stop: int, seed: int, image_size: int, channels: int):
  """Per-image uniform draws; image i only uses the stream seeded by (seed, i).

  One call per image keeps generation fast; the noise fields are centred
  uniforms with unit variance, which look the same as Gaussians here.
  """
  num_coarse = _COARSE * _COARSE
  num_grain = image_size * image_size * channels
  num = stop - start
  draws = np.empty((num, _NUM_PARAMS + num_coarse + num_grain), np.float64)
  for i in range(num):
    draws[i] = np.random.default_rng([seed, start + i]).random(draws.shape[1])
  params = draws[:, :_NUM_PARAMS]
  unit = np.sqrt(12.0)
  coarse = (draws[:, _NUM_PARAMS:_NUM_PARAMS + num_coarse] - 0.5) * unit
  coarse = coarse.reshape(num, _COARSE, _COARSE)
  grain_noise = ((draws[:, _NUM_PARAMS + num_coarse:] - 0.5) * unit).astype(
      np.float32).reshape(num, image_size, image_size, channels)
  return params, coarse, grain_noise


def _render(params, coarse, grain_noise, labels, image_size, channels):
  """Renders one chunk of images from their draws (fully vectorised)."""
  s = float(image_size)
  coords = np.arange(image_size, dtype=np.float64) + 0.5
  yy = coords[None, :, None]
  xx = coords[None, None, :]

  # Background: per-image level plus smooth low-frequency noise.
  interp = bilinear_matrix(_COARSE, image_size)
  smooth = np.einsum("hi,nij,wj->nhw", interp, coarse, interp)
  level = _lerp(params[:, _P_LEVEL], (-0.25, 0.25))
  lf_amp = _lerp(params[:, _P_LF_AMP], (0.06, 0.16))
  image = level[:, None, None] + lf_amp[:, None, None] * smooth

  # Distractors, painted in order (later ones occlude earlier ones).
  num_shapes = _NUM_DISTRACTORS[0] + np.floor(
      params[:, _P_NUM_SHAPES] *
      (_NUM_DISTRACTORS[1] - _NUM_DISTRACTORS[0] + 1)).astype(np.int64)
  base = image.copy()
  for slot in range(_NUM_DISTRACTORS[1]):
    p = params[:, _P_SHAPES + slot * _SHAPE_FIELDS:
               _P_SHAPES + (slot + 1) * _SHAPE_FIELDS]
    kind = np.floor(p[:, 0] * 3).astype(np.int64)  # 0 square, 1 bar, 2 disc
    cx = (p[:, 1] * s)[:, None, None]
    cy = (p[:, 2] * s)[:, None, None]
    angle = (p[:, 5] * np.pi)[:, None, None]
    dx, dy = xx - cx, yy - cy
    u = np.abs(dx * np.cos(angle) + dy * np.sin(angle))
    v = np.abs(-dx * np.sin(angle) + dy * np.cos(angle))
    half_sq = (_lerp(p[:, 3], _SQUARE_HALF) * s)[:, None, None]
    bar_len = (_lerp(p[:, 3], _BAR_HALF_LENGTH) * s)[:, None, None]
    bar_wid = np.maximum(_lerp(p[:, 4], _BAR_HALF_WIDTH) * s, 0.75)
    disc_r = (_lerp(p[:, 3], _DISC_RADIUS) * s)[:, None, None]
    square = (u <= half_sq) & (v <= half_sq)
    bar = (u <= bar_len) & (v <= bar_wid[:, None, None])
    disc = dx * dx + dy * dy <= disc_r * disc_r
    k = kind[:, None, None]
    inside = np.where(k == 0, square, np.where(k == 1, bar, disc))
    inside &= (slot < num_shapes)[:, None, None]
    sign = np.where(p[:, 7] < 0.5, -1.0, 1.0)
    delta = (sign * _lerp(p[:, 6], _CONTRAST))[:, None, None]
    image = np.where(inside, base + delta, image)

  # Lesion: a target (core and rim of opposite contrast) in positives only.
  lp = params[:, _P_LESION:_P_LESION + 5]
  # Pixel floors keep the core and rim non-empty on small images.
  radius = np.maximum(_lerp(lp[:, 2], LESION_RADIUS) * s, 2.0)
  margin = radius + 1.0
  cx = (margin + lp[:, 0] * (s - 2 * margin))[:, None, None]
  cy = (margin + lp[:, 1] * (s - 2 * margin))[:, None, None]
  dist2 = (xx - cx) ** 2 + (yy - cy) ** 2
  r = radius[:, None, None]
  disc = dist2 < r * r
  core = dist2 < np.maximum(_CORE_FRACTION * r, 0.75) ** 2
  positive = (labels == 1)[:, None, None]
  mask = disc & positive
  sign = np.where(lp[:, 4] < 0.5, -1.0, 1.0)
  contrast = (sign * _lerp(lp[:, 3], _CONTRAST))[:, None, None]
  image = image + np.where(mask, np.where(core, -contrast, contrast), 0.0)

  # Colour: per-image tint (RGB only) and fine per-channel grain.
  image = image[..., None]
  if channels == 3:
    gains = _lerp(params[:, _P_TINT:_P_TINT + 3], (0.75, 1.0))
    offsets = _lerp(params[:, _P_TINT + 3:_P_TINT + 6], (-0.12, 0.12))
    image = image * gains[:, None, None, :] + offsets[:, None, None, :]
  image = image + 0.03 * grain_noise
  image = np.clip(image, -1.0, 1.0).astype(np.float32)
  return image, mask.astype(np.float32)


def make_lesions(
    num: int,
    *,
    image_size: int = 32,
    channels: int = 3,
    seed: int = 0,
    positive_fraction: float = 0.5,
    twins: bool = False,
) -> dict[str, np.ndarray]:
  """Generates `num` lesion images with labels and exact lesion masks.

  Example i depends only on (seed, i, image_size, channels,
  positive_fraction), so a smaller `num` yields a prefix of a larger one.

  Returns:
    {"image": (N, H, W, C) float32 in [-1, 1], "label": (N,) int32 (1 = lesion
    present), "mask": (N, H, W) float32 in {0, 1}}. With `twins=True` also
    "twin": every image rendered from the same draws with the other label (the
    lesion removed from a positive, added to a negative). A positive and its twin
    differ exactly on the positive's mask.
  """
  if isinstance(num, bool) or not isinstance(num, (int, np.integer)):
    raise ValueError(f"num must be an integer, got {num!r}")
  if num <= 0:
    raise ValueError(f"num must be positive, got {num}")
  if isinstance(image_size, bool) or not isinstance(
      image_size, (int, np.integer)) or image_size < 16:
    raise ValueError(f"image_size must be an integer >= 16, got {image_size!r}")
  if channels not in (1, 3):
    raise ValueError(f"channels must be 1 or 3, got {channels!r}")
  if not 0.0 <= positive_fraction <= 1.0:
    raise ValueError(
        f"positive_fraction must be in [0, 1], got {positive_fraction!r}")
  if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or (
      seed < 0):
    raise ValueError(f"seed must be a non-negative integer, got {seed!r}")

  num, image_size, seed = int(num), int(image_size), int(seed)
  images = np.empty((num, image_size, image_size, channels), np.float32)
  masks = np.empty((num, image_size, image_size), np.float32)
  labels = np.empty((num,), np.int32)
  if twins:
    twin_images = np.empty_like(images)
  for start in range(0, num, _CHUNK):
    stop = min(start + _CHUNK, num)
    params, coarse, grain_noise = _draw(start, stop, seed, image_size, channels)
    labels[start:stop] = params[:, _P_LABEL] < positive_fraction
    images[start:stop], masks[start:stop] = _render(
        params, coarse, grain_noise, labels[start:stop], image_size, channels)
    if twins:
      twin_images[start:stop], _ = _render(
          params, coarse, grain_noise, 1 - labels[start:stop], image_size, channels)
  out = {"image": images, "label": labels, "mask": masks}
  if twins:
    out["twin"] = twin_images
  return out


def lesion_twins(num: int, *, image_size: int = 32, channels: int = 3,
                 seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """`num` exact counterfactual pairs: (with_lesion, without_lesion, mask).

  The two images of a pair share background, distractors, tint and grain; they differ
  exactly on `mask` (N, H, W), the lesion. A counterfactual that truly removes the
  lesion from `with_lesion` should come close to `without_lesion` there and leave
  everything else as it was.
  """
  d = make_lesions(num, image_size=image_size, channels=channels, seed=seed,
                   positive_fraction=1.0, twins=True)
  return d["image"], d["twin"], d["mask"]
