"""Quick start: classifier + SyCE explainer on the lesion set, scored against the masks.

The explainer trains in 8 to 17 minutes on a 2-core CPU (README). Other methods:
--config.explainer.method=cyce|sagen.
"""

from configs import common


def get_config(preset: str = "small"):  # --config configs/lesions_syce.py:paper
  c = common.experiment(common.lesions(), method="syce", preset=preset)
  c.classifier.steps = 800
  c.explainer.steps = 500
  return c
