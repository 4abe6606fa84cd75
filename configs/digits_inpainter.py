"""A generative in-filler for FIDO on the digits (3 vs 8), compared with blur and mean.

    python -m train --config configs/digits_inpainter.py --workdir runs/inpainter_digits
"""

import ml_collections

from cfx_jax.methods.fido.inpainter_train import inpainter_config
from cfx_jax.engine.runtime import runtime_config
from cfx_jax.configs import common


def get_config():
  c = ml_collections.ConfigDict()
  c.dataset = common.digits()
  c.classifier = None
  c.explainer = None
  c.inpainter = inpainter_config()
  i = c.inpainter
  i.steps, i.batch_size, i.learning_rate = 2500, 32, 5e-4
  i.model.features, i.model.disc_features = (16, 32, 64, 64), (16, 32, 64)
  i.log_every, i.checkpoint_every = 100, 500
  c.runtime = runtime_config()
  return c
