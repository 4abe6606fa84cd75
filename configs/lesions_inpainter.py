"""A generative in-filler for FIDO on the lesion set, compared with the blur and mean fills.

    python -m train --config configs/lesions_inpainter.py --workdir runs/inpainter_lesions

No classifier is trained. Sized for a 2-core CPU (about 7 minutes); on an accelerator
raise `inpainter.steps`, `inpainter.batch_size` and `inpainter.model.features`.
"""

import ml_collections

from cfx_jax.methods.fido.inpainter_train import inpainter_config
from cfx_jax.engine.runtime import runtime_config
from cfx_jax.configs import common


def get_config():
  c = ml_collections.ConfigDict()
  c.dataset = common.lesions()
  c.classifier = None
  c.explainer = None
  c.inpainter = inpainter_config()
  i = c.inpainter
  i.steps, i.batch_size, i.learning_rate = 2500, 32, 5e-4
  # A fourth level (4x4 at 32 px) gives the context to bridge FIDO's largest holes.
  i.model.features, i.model.disc_features = (16, 32, 64, 64), (16, 32, 64)
  i.log_every, i.checkpoint_every = 100, 500
  c.runtime = runtime_config()
  return c
