"""Every method on the lesion set, scored against the exact evidence masks.

    python -m train.evaluate --config configs/lesions_leaderboard.py --workdir runs/leaderboard_lesions

Trains the classifier once and each trained explainer for three seeds (finished ones are
reused), then writes leaderboard.md / leaderboard.json and the figures.
"""

from cfx_jax.configs import common


def get_config():
  c = common.leaderboard(common.lesions())
  c.classifier.steps = 800
  return c
