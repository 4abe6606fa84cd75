"""Reference CNN on the procedural lesion set (>= 97% test accuracy)."""

from cfx_jax.configs import common


def get_config():
  return common.experiment(common.lesions(), method=None)
