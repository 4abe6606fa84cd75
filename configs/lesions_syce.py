"""Quick start: classifier + SyCE explainer on the lesion set, scored against the masks.

The explainer trains in about 9 minutes on a 2-core CPU. Other methods:
--config.explainer.method=cyce|sagen.
"""

from configs import common


def get_config(preset: str = "small"):  # --config configs/lesions_syce.py:paper
  c = common.experiment(common.lesions(), method="syce", preset=preset)
  c.classifier.steps = 800
  c.explainer.steps = 500
  return c
