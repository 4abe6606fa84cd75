"""The caller's images and the library's: value range, size and batch axis.

Networks and optimisers work on float images in [-1, 1] whose height and width are a
multiple of the networks' total stride. The caller's images may be in any value range
(uint8 means (0, 255)) and of any size. `ImageSpace` maps between the two: images are
rescaled and reflect-padded at the bottom and right on the way in, and cropped and
rescaled back on the way out. The classifier always sees the caller's images: the
classifier the methods train against crops and rescales before calling it.
"""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np

from cfx_jax import validation
from cfx_jax.classifier import Classifier, as_classifier, check_value_range
from cfx_jax.explanation import Explanation

DEFAULT_RANGE = (-1.0, 1.0)
UINT8_RANGE = (0.0, 255.0)
RANGE_TOLERANCE = 1e-3  # relative to hi - lo
SPACE_FILE = "image_space.json"


@dataclasses.dataclass(frozen=True)
class ImageSpace:
  value_range: tuple[float, float]
  shape: tuple[int, int, int]   # the caller's (H, W, C)
  padded: tuple[int, int]       # the library's (H, W), multiples of the stride

  @property
  def is_identity(self) -> bool:
    return self.value_range == DEFAULT_RANGE and self.padded == self.shape[:2]

  @property
  def internal_shape(self) -> tuple[int, int, int]:
    return self.padded + self.shape[2:]

  def to_internal(self, images: np.ndarray) -> np.ndarray:
    """Caller's images (N, H, W, C) -> float32 in [-1, 1], padded."""
    lo, hi = self.value_range
    x = (np.asarray(images, np.float32) - lo) * (2.0 / (hi - lo)) - 1.0
    x = np.clip(x, -1.0, 1.0)
    (h, w, _), (ph, pw) = self.shape, self.padded
    if (ph, pw) != (h, w):
      x = np.pad(x, ((0, 0), (0, ph - h), (0, pw - w), (0, 0)), mode="reflect")
    return x

  def to_caller(self, images):
    """Library images (N, H', W', C) -> the caller's size and range (NumPy or traced)."""
    h, w, _ = self.shape
    lo, hi = self.value_range
    return lo + (images[:, :h, :w, :] + 1.0) * (0.5 * (hi - lo))

  def classifier(self, clf: Classifier) -> Classifier:
    """`clf` (on the caller's images) as a classifier of the library's images."""
    if self.is_identity:
      return clf
    to_caller = self.to_caller
    apply, maps, bn = clf.apply, clf.feature_maps, clf.bn_features
    return Classifier(
        lambda p, x: apply(p, to_caller(x)), clf.params, clf.num_classes,
        self.internal_shape,
        feature_maps=None if maps is None else (lambda p, x: maps(p, to_caller(x))),
        head=clf.head,
        bn_features=None if bn is None else (lambda p, x: bn(p, to_caller(x))))

  def explanation(self, out: Explanation) -> Explanation:
    """An explanation of library images, in the caller's size and range."""
    h, w, _ = self.shape

    def back(images):
      return None if images is None else np.asarray(self.to_caller(np.asarray(images)))

    return dataclasses.replace(out, maps=np.asarray(out.maps)[:, :h, :w],
                               counterfactual=back(out.counterfactual),
                               stable=back(out.stable))

  def save(self, path: str, outputs: str) -> None:
    with open(os.path.join(path, SPACE_FILE), "w") as f:
      json.dump({"value_range": list(self.value_range), "shape": list(self.shape),
                 "padded": list(self.padded), "outputs": outputs}, f)


def load(path: str) -> tuple[ImageSpace | None, str]:
  """The image space saved next to an explainer (None if it has none) and its outputs kind."""
  file = os.path.join(path, SPACE_FILE)
  if not os.path.exists(file):
    return None, "logits"
  with open(file) as f:
    d = json.load(f)
  return (ImageSpace(tuple(d["value_range"]), tuple(d["shape"]), tuple(d["padded"])),
          d["outputs"])


def value_range_of(images: np.ndarray, value_range=None) -> tuple[float, float]:
  """The declared range, or the default one for the images' dtype; checks the values.

  Without a declared range, uint8 images are in (0, 255) and float images in
  (-1, 1); float images that all lie in [0, 1] are refused, since a classifier trained
  on [0, 1] input would silently see them as dark images.
  """
  dtype = np.dtype(images.dtype)
  arr = np.asarray(images)
  if value_range is None:
    if dtype == np.uint8:
      value_range = UINT8_RANGE
    elif not np.issubdtype(dtype, np.floating):
      raise TypeError(f"images of dtype {dtype} need a declared value_range=(lo, hi)")
    else:
      value_range = DEFAULT_RANGE
      finite = arr[np.isfinite(arr)]
      if finite.size and finite.min() >= 0.0 and finite.max() <= 1.0:
        raise ValueError("images lie in [0, 1], but value_range defaults to (-1, 1): pass "
                         "value_range=(0, 1) if the classifier takes [0, 1] images, or "
                         "value_range=(-1, 1) to confirm the default")
  elif not (np.issubdtype(dtype, np.floating) or np.issubdtype(dtype, np.integer)):
    raise TypeError(f"images must be numbers, got dtype {dtype}")
  lo, hi = check_value_range(value_range)
  if not np.all(np.isfinite(arr)):
    bad = int(np.sum(~np.all(np.isfinite(arr), axis=(1, 2, 3))))
    raise ValueError(f"images contain non-finite values (NaN or inf) in {bad} image(s)")
  tol = RANGE_TOLERANCE * (hi - lo)
  if arr.min() < lo - tol or arr.max() > hi + tol:
    raise ValueError(f"images must lie in [{lo:g}, {hi:g}] (their value_range), got values in "
                     f"[{float(arr.min()):.3g}, {float(arr.max()):.3g}]")
  return lo, hi


def declared_range(classifier, value_range):
  """`value_range`, or the range a Classifier was built for when none is given."""
  if (value_range is None and isinstance(classifier, Classifier)
      and classifier.value_range != DEFAULT_RANGE):
    return classifier.value_range
  return value_range


def space_for(shape, value_range, multiple: int, *, square: bool = False) -> ImageSpace:
  """The space of caller images of `shape` (H, W, C) for networks that take sides that
  are multiples of `multiple` (and equal, if `square`)."""
  h, w, c = (int(d) for d in shape)
  if min(h, w) < 2:
    raise ValueError(f"images must be at least 2 x 2 pixels, got {h} x {w}")
  ph, pw = (-(-d // multiple) * multiple for d in (h, w))
  if square:
    ph = pw = max(ph, pw)
  return ImageSpace(tuple(float(v) for v in value_range), (h, w, c), (ph, pw))


def bind(classifier, images, *, outputs: str, value_range, variables, multiple: int = 1,
         square: bool = False) -> tuple[ImageSpace, Classifier, np.ndarray]:
  """The space of the caller's `images` for networks of grid (`multiple`, `square`), the
  classifier of the library's images, and those images in [-1, 1] on the grid."""
  x = validation.batched(images)
  if isinstance(classifier, Classifier):
    validation.check_shape(x, classifier.image_shape)
  value_range = value_range_of(x, declared_range(classifier, value_range))
  space = space_for(x.shape[1:], value_range, multiple, square=square)
  clf = as_classifier(classifier, x.shape[1:], outputs=outputs, value_range=value_range,
                      variables=variables)
  return space, space.classifier(clf), validation.check_images(space.to_internal(x))


__all__ = ["ImageSpace", "bind", "declared_range", "load", "space_for", "value_range_of"]
