"""FIDO on the lesion set: SDR drop masks, blur in-fill, the paper's optimiser settings.

    python -m train --config configs/lesions_fido.py --workdir runs/lesions_fido
    python -m train --config configs/lesions_fido.py --workdir runs/x --config.explainer.settings.objective=ssr

Nothing is trained for the explainer; each explained image costs its own optimisation
(300 steps x 8 mask samples), so the evaluation uses 64 test images.
"""

from cfx_jax.configs import common


def get_config():
  c = common.experiment(common.lesions(), method=None)
  c.classifier.steps = 800
  c.explainer = common.method_config("fido", objective="sdr", infiller="blur",
                                  warn_failures=False)
  c.eval.num_images = 64
  return c
