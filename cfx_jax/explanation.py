"""The one result type every explainer returns."""

from __future__ import annotations

import dataclasses
import os

import jax
import numpy as np


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Explanation:
  """Batched counterfactual explanation.

  maps:           (N, H, W) float32, >= 0, larger = more relevant.
  target:         (N,) int32 class the counterfactual was asked to reach; for
                  map-only methods (saliency baselines), the class whose evidence
                  the map shows.
  probs:          (N, K) classifier probabilities on the input.
  counterfactual: (N, H, W, C) the class-flipped image, or None (map-only method).
  stable:         (N, H, W, C) the class-preserving image, or None.
  cf_probs:       (N, K) classifier probabilities on the counterfactual, or None.
  """

  maps: np.ndarray
  target: np.ndarray
  probs: np.ndarray
  counterfactual: np.ndarray | None = None
  stable: np.ndarray | None = None
  cf_probs: np.ndarray | None = None

  def __len__(self) -> int:
    return int(self.maps.shape[0])

  @property
  def predicted(self) -> np.ndarray:
    """Classifier's decision on the input."""
    return np.argmax(self.probs, axis=-1).astype(np.int32)

  @property
  def has_counterfactual(self) -> bool:
    return self.counterfactual is not None

  @property
  def flipped(self) -> np.ndarray:
    """Whether the counterfactual is classified as its target."""
    if self.cf_probs is None:
      raise ValueError("this explanation is a map only; it has no counterfactual")
    return np.argmax(self.cf_probs, axis=-1) == self.target

  def save(self, path) -> str:
    """Write the fields (those that are not None) to an .npz file at exactly `path`."""
    arrays = {f.name: np.asarray(getattr(self, f.name)) for f in dataclasses.fields(self)
              if getattr(self, f.name) is not None}
    folder = os.path.dirname(os.fspath(path))
    if folder:
      os.makedirs(folder, exist_ok=True)
    with open(path, "wb") as f:
      np.savez(f, **arrays)
    return os.fspath(path)

  @classmethod
  def load(cls, path) -> Explanation:
    """The explanation `save` wrote to `path`: the same arrays, dtypes and None fields."""
    names = {f.name for f in dataclasses.fields(cls)}
    with np.load(path, allow_pickle=False) as data:
      arrays = {k: data[k] for k in data.files}
    unknown = sorted(set(arrays) - names)
    missing = sorted({"maps", "target", "probs"} - set(arrays))
    if unknown or missing:
      raise ValueError(f"{path} is not a saved Explanation: unknown fields {unknown}, "
                       f"missing {missing}")
    return cls(**arrays)

  def plot(self, images, path_or_ax, *, num_rows: int = 8, class_names=None,
           value_range=None):
    """Input, counterfactual (when there is one) and the map over the input, one row per
    image; the explanation does not keep its inputs, so `images` are the ones it explains.

    path_or_ax: a file path (writes a PNG there and returns the path), or matplotlib Axes
    to draw on (one Axes: the map of the first image; an array of shape (columns,) or
    (rows, columns): as many images as rows); returns the Axes then. At most `num_rows`
    images are drawn.
    value_range: (lo, hi) of `images` and the counterfactual, as given to `fit_explainer`;
    by default (0, 255) for uint8 images and (-1, 1) otherwise. Images outside it are
    refused, since they would be drawn blank.
    """
    from cfx_jax import report

    return report.plot_explanation(images, self, path_or_ax, num_rows=num_rows,
                                   class_names=class_names, value_range=value_range)
