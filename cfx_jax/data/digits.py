"""scikit-learn's 8x8 handwritten digits as a small offline image dataset.

The digits ship inside scikit-learn, so experiments (for example a 3-vs-8
classifier) run without any download.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from cfx_jax.data.arguments import check_image_arguments
from cfx_jax.data.resize import bilinear_matrix

_SPLITS = ("train", "test", "all")


def _resolve_classes(classes: Iterable[int] | None) -> tuple[int, ...]:
  if classes is None:
    return tuple(range(10))
  try:
    resolved = tuple(int(c) for c in classes)
  except (TypeError, ValueError) as e:
    raise ValueError(f"classes must be digits 0..9, got {classes!r}") from e
  if not resolved:
    raise ValueError("classes must not be empty")
  bad = [c for c in resolved if not 0 <= c <= 9]
  if bad:
    raise ValueError(f"unknown digit classes {bad}; valid classes are 0..9")
  if len(set(resolved)) != len(resolved):
    raise ValueError(f"classes must be distinct, got {resolved}")
  return resolved


def make_digits(
    *,
    classes: Iterable[int] | None = (3, 8),
    split: str = "train",
    image_size: int = 32,
    channels: int = 1,
    seed: int = 0,
    test_fraction: float = 0.25,
) -> dict[str, np.ndarray]:
  """Loads the digits of `classes`, upsampled to `image_size`, in [-1, 1].

  Labels are remapped to 0..len(classes)-1 in the order of `classes`. The
  train/test split is stratified over all ten digits before the classes are
  selected, so an example's split depends only on (seed, test_fraction).

  Returns:
    {"image": (N, image_size, image_size, channels) float32, "label": (N,)
    int32}.
  """
  # Imported lazily: scikit-learn is slow to import and only needed here.
  from sklearn.datasets import load_digits
  from sklearn.model_selection import train_test_split

  resolved = _resolve_classes(classes)
  check_image_arguments(split, _SPLITS, image_size, channels)
  if not 0.0 < test_fraction < 1.0:
    raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")

  digits = load_digits()
  images = digits.images.astype(np.float64)  # (1797, 8, 8), values 0..16
  targets = digits.target.astype(np.int64)

  if split == "all":
    index = np.arange(len(targets))
  else:
    train_idx, test_idx = train_test_split(
        np.arange(len(targets)),
        test_size=test_fraction,
        stratify=targets,
        random_state=seed,
    )
    index = np.sort(train_idx if split == "train" else test_idx)
  index = index[np.isin(targets[index], resolved)]

  remap = np.full(10, -1, np.int32)
  remap[list(resolved)] = np.arange(len(resolved), dtype=np.int32)
  labels = remap[targets[index]]

  interp = bilinear_matrix(8, int(image_size))
  upsampled = np.einsum("hi,nij,wj->nhw", interp, images[index], interp)
  scaled = (upsampled / 16.0 * 2.0 - 1.0).astype(np.float32)
  scaled = np.clip(scaled, -1.0, 1.0)
  image = np.repeat(scaled[..., None], channels, axis=-1)
  return {"image": image, "label": labels}
