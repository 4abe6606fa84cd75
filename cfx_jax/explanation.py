"""The one result type every explainer returns."""

from __future__ import annotations

import dataclasses

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
