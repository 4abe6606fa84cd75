"""Argument checks shared by the image datasets, so each rejects bad input the same way."""

from __future__ import annotations

import numpy as np


def check_image_arguments(split: str, splits, image_size, channels) -> None:
  """ValueError naming the argument for an unknown split, size or channel count."""
  if split not in splits:
    raise ValueError(f"unknown split {split!r}; expected one of {splits}")
  if isinstance(image_size, bool) or not isinstance(
      image_size, (int, np.integer)) or image_size < 1:
    raise ValueError(f"image_size must be a positive integer, got {image_size!r}")
  if channels not in (1, 3):
    raise ValueError(f"channels must be 1 or 3, got {channels!r}")
