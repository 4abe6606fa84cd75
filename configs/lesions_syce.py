"""Quick start: classifier + SyCE explainer on the lesion set, scored against the masks.

The explainer trains in 8 to 17 minutes on a 2-core CPU (README). Other methods:
--config.explainer.method=cyce|sagen.
"""

from configs import common


def get_config(preset: str = "small"):  # --config configs/lesions_syce.py:paper
  c = common.experiment(common.lesions(), method="syce", preset=preset)
  c.classifier.steps = 800
  c.explainer.steps = 500
  # The flip must also hold for the edit weakened to a random share in [0.5, 1], and the
  # edit's total variation is charged. On the lesion set: oracle agreement on added
  # lesions 0.45 -> 0.94, change outside the lesion halved; on Fashion-MNIST sneaker vs
  # ankle boot both scores fell, so they are not method defaults (README "Counterfactual
  # truth", fourth round). With method=cyce|sagen they apply too: measured there as well,
  # neither meets the targets (README, the SAGen and CyCE tables).
  c.explainer.weights.tv = 3.0
  c.explainer.weights.flip_partial = 0.5
  return c
