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
  counterfactual: (N, H, W, C) the class-flipped image.
  stable:         (N, H, W, C) the class-preserving image.
  target:         (N,) int32 class the counterfactual was asked to reach.
  probs:          (N, K) classifier probabilities on the input.
  cf_probs:       (N, K) classifier probabilities on the counterfactual.
  """

  maps: np.ndarray
  counterfactual: np.ndarray
  stable: np.ndarray
  target: np.ndarray
  probs: np.ndarray
  cf_probs: np.ndarray

  def __len__(self) -> int:
    return int(self.maps.shape[0])

  @property
  def predicted(self) -> np.ndarray:
    """Classifier's decision on the input."""
    return np.argmax(self.probs, axis=-1).astype(np.int32)

  @property
  def flipped(self) -> np.ndarray:
    """Whether the counterfactual is classified as its target."""
    return np.argmax(self.cf_probs, axis=-1) == self.target
