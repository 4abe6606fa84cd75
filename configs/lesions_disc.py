"""DISC on the lesion set: deep-inversion counterfactuals from the classifier alone.

    python -m train --config configs/lesions_disc.py --workdir runs/lesions_disc

Fitting trains only the auxiliary uncertainty model (the manifold term); each explained
image costs its own optimisation, so the evaluation uses 64 test images.
"""

from cfx_jax.configs import common


def get_config():
  c = common.experiment(common.lesions(), method=None)
  c.classifier.steps = 800
  c.explainer = common.method_config("disc", warn_failures=False)
  c.eval.num_images = 64
  return c
