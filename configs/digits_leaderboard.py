"""Every method on scikit-learn's digits, 3 against 8 (no masks: no localization scores).

    python -m train.evaluate --config configs/digits_leaderboard.py --workdir runs/leaderboard_digits
"""

from cfx_jax.configs import common


def get_config():
  c = common.leaderboard(common.digits())
  c.classifier.steps = 600
  for name in ("syce", "cyce", "sagen"):
    c.trained.settings[name].steps = 400
  return c
