"""The latent-space explainer on the multi-attribute set, through the ordinary train job.

    python -m train --config configs/attributes_latent.py --workdir runs/attributes_latent

The classifier detects the lesion; the explainer's VAE, attribute predictors and shift
predictor are trained on the training split with its four attribute labels (lesion,
marker, bright, large), and its counterfactuals move the latent code until the
classifier changes its mind. The spurious-marker study is `python -m train.causal`.
"""

from cfx_jax.configs import common
from cfx_jax.jobs.datasets import dataset_config


def get_config():
  d = dataset_config("attributes", image_size=32, channels=3, seed=0)
  d.num_train, d.num_test = 6000, 1000
  c = common.experiment(d, method=None)
  c.classifier.steps = 600
  c.explainer = common.method_config("latent", vae_steps=6000, shift_steps=1500,
                                  warn_failures=False)
  return c
