"""CAE on the lesion set: class codes swapped between the classifier's decisions.

    python -m train --config configs/lesions_cae.py --workdir runs/lesions_cae

CAE is trained on the training images labelled by the classifier's decisions (it needs
no gradients of the classifier); explanations walk the class code towards the target
class's prototype in steps of 0.2 of the way, up to twice the distance. About 5 minutes
of CAE training on 2000 images on a 2-core CPU; with the full training split each step
costs the same, so the time is set by `steps`. Any setting of `cae_config` can be
overridden, e.g. --config.explainer.settings.steps=3000.
"""

from cfx_jax.configs import common


def get_config():
  c = common.experiment(common.lesions(), method=None)
  c.classifier.steps = 800
  c.explainer = common.method_config("cae", steps=1500, batch_size=32, learning_rate=5e-4,
                                  path_step=0.2, max_fraction=2.0, model={"style_dim": 8})
  return c
