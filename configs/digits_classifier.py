"""Reference CNN on scikit-learn digits, 3 vs 8 (>= 97% test accuracy)."""

from cfx_jax.configs import common


def get_config():
  c = common.experiment(common.digits(), method=None)
  c.classifier.steps = 600
  return c
