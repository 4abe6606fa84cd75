"""Input checks that fail fast, with messages that name the problem, before compiling."""

from __future__ import annotations

import numpy as np

RANGE_TOLERANCE = 1e-3


def batched(images, *, name: str = "images", single: bool = True):
  """A non-empty array (N, H, W, C); a single image (H, W, C) gets a batch axis, where
  `single` allows one (fitting needs a batch: three axes there are (N, H, W) images)."""
  if not hasattr(images, "shape") or not hasattr(images, "dtype"):
    raise TypeError(f"{name} must be a numpy or JAX array of shape (N, H, W, C), "
                    f"got {type(images).__name__}")
  if images.ndim == 3 and not single:
    raise ValueError(f"{name} must be (N, H, W, C); got {tuple(images.shape)}: for (N, H, W) "
                     f"images add a channel axis with {name}[..., None] (fitting needs a "
                     "batch, not one (H, W, C) image)")
  if images.ndim == 3:
    if looks_channels_first((1,) + tuple(images.shape)):
      raise ValueError(f"{name} of shape {tuple(images.shape)} look channels-first "
                       f"(C, H, W); this library takes (H, W, C) images: transpose with "
                       f"{name}.transpose(1, 2, 0). If they are (N, H, W) images, add a "
                       f"channel axis with {name}[..., None]")
    images = images[None]
  if images.ndim != 4:
    raise ValueError(f"{name} must have shape (N, H, W, C) or (H, W, C), got "
                     f"{tuple(images.shape)}")
  if images.shape[0] == 0:
    raise ValueError(f"{name} is empty (N = 0)")
  if looks_channels_first(images.shape):
    raise ValueError(f"{name} of shape {tuple(images.shape)} look channels-first "
                     f"(N, C, H, W); this library takes (N, H, W, C): transpose with "
                     f"{name}.transpose(0, 2, 3, 1)")
  return images


def looks_channels_first(shape) -> bool:
  """(N, C, H, W) with 1, 3 or 4 channels and sides of 8 or more: read as (N, H, W, C),
  such images would be a few pixels high with many channels."""
  return shape[1] in (1, 3, 4) and min(shape[2], shape[3]) >= 8


def check_images(images, image_shape=None, *, name: str = "images") -> np.ndarray:
  """Images must be a non-empty float array (N, H, W, C), finite, in [-1, 1]; a single
  image (H, W, C) gets a batch axis."""
  images = batched(images, name=name)
  if not np.issubdtype(np.dtype(images.dtype), np.floating):
    raise TypeError(f"{name} must be floating point in [-1, 1], got dtype {images.dtype}; "
                    "pass value_range=(0, 255) to fit_explainer for uint8 images")
  check_shape(images, image_shape, name=name)
  arr = np.asarray(images, np.float32)
  if not np.all(np.isfinite(arr)):
    bad = int(np.sum(~np.all(np.isfinite(arr), axis=(1, 2, 3))))
    raise ValueError(f"{name} contain non-finite values (NaN or inf) in {bad} image(s)")
  lo, hi = float(arr.min()), float(arr.max())
  if lo < -1 - RANGE_TOLERANCE or hi > 1 + RANGE_TOLERANCE:
    raise ValueError(f"{name} must lie in [-1, 1], got values in [{lo:.3g}, {hi:.3g}]")
  return np.clip(arr, -1.0, 1.0)


def check_shape(images, image_shape, *, name: str = "images") -> None:
  """(N, H, W, C) images must have the (H, W, C) they were fitted on."""
  if image_shape is not None and tuple(images.shape[1:]) != tuple(image_shape):
    h, w, c = image_shape
    got_h, got_w, got_c = images.shape[1:]
    what = "channel count" if (got_h, got_w) == (h, w) else "image size"
    hint = ""
    if (got_w, got_c) == (h, w) and c == 1:
      hint = f"; (N, H, W) images without a channel axis? Add one with {name}[..., None]"
    raise ValueError(f"{name} have shape (H, W, C) = {tuple(images.shape[1:])}, expected "
                     f"{tuple(image_shape)} (wrong {what}){hint}")


def check_target(target, n: int, num_classes: int, predicted: np.ndarray) -> np.ndarray:
  """An int or (N,) ints in [0, K), each different from the classifier's decision."""
  t = np.asarray(target)
  if not np.issubdtype(t.dtype, np.integer):
    raise TypeError(f"target must be integer class indices, got dtype {t.dtype}")
  if t.ndim == 0:
    t = np.full((n,), int(t))
  if t.shape != (n,):
    raise ValueError(f"target must be an int or have shape ({n},), got {t.shape}")
  if t.min() < 0 or t.max() >= num_classes:
    raise ValueError(f"target classes must lie in [0, {num_classes}), got values in "
                     f"[{t.min()}, {t.max()}]")
  same = np.flatnonzero(t == predicted)
  if same.size:
    raise ValueError(f"target equals the classifier's predicted class for {same.size} "
                     f"image(s) (first indices {same[:5].tolist()}): a counterfactual must "
                     "reach another class")
  return t.astype(np.int32)


# Settings that count something: each must be a whole number >= 1 (None: the default).
COUNTS = ("steps", "batch_size", "log_every", "checkpoint_every", "keep_checkpoints",
          "chunk_size", "disc_steps", "vae_steps", "predictor_steps", "shift_steps",
          "judge_steps", "batch_per_class", "code_dim", "samples", "seeds")
# Step sizes: positive and finite (None: the default).
RATES = ("learning_rate", "fit_learning_rate", "disc_lr_scale")
NON_NEGATIVE = ("weight_decay",)


def flat(settings, prefix: str = "") -> dict:
  """{"model": {"residual": True}} -> {"model.residual": True}, of a dict or ConfigDict."""
  if hasattr(settings, "to_dict"):
    settings = settings.to_dict()
  out = {}
  for key, value in (settings or {}).items():
    if hasattr(value, "to_dict") or isinstance(value, dict):
      out.update(flat(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = value
  return out


def check_settings(settings, *, what: str, num_images: int | None = None) -> None:
  """The one check of run settings, before anything trains: counts are whole numbers
  >= 1, rates positive and finite, and `batch_size` no larger than the `num_images`
  it draws from (a larger batch would repeat images in every step; say so rather than
  train on it)."""
  for name, value in flat(settings).items():
    leaf = name.rsplit(".", 1)[-1]
    if value is None or leaf not in COUNTS + RATES + NON_NEGATIVE:
      continue
    if leaf in COUNTS:
      if (isinstance(value, bool) or not isinstance(value, (int, np.integer))
          or value < 1):
        raise ValueError(f"{what} {name} must be a whole number >= 1, got {value!r}")
      if name == "batch_size" and num_images is not None and value > num_images:
        raise ValueError(f"{what} batch_size {value} is larger than the {num_images} "
                         f"images it draws from; use at most {num_images}")
      continue
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
      raise ValueError(f"{what} {name} must be a number, got {value!r}")
    if not np.isfinite(value) or value < 0 or (leaf in RATES and value == 0):
      need = "non-negative" if leaf in NON_NEGATIVE else "positive"
      raise ValueError(f"{what} {name} must be {need} and finite, got {value!r}")
