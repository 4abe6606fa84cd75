"""SyCE explainer of a 3-vs-8 digit classifier, as in the paper (no ground-truth masks)."""

from cfx_jax.configs import common


def get_config(preset: str = "small"):  # --config configs/digits_syce.py:paper
  c = common.experiment(common.digits(), method="syce", preset=preset)
  c.classifier.steps = 600
  return c
