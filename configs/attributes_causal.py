"""Spurious-marker study: causal scores of attributes for two lesion classifiers.

    python -m train.causal --config configs/attributes_causal.py --workdir runs/causal_study
    python -m train.causal --config configs/attributes_causal.py:smoke --workdir /tmp/smoke

A classifier trained where a corner marker appears exactly with the lesion, one trained
where it is independent; one VAE explains both (see cfx_jax/jobs/causal_study.py).
About 10 minutes on a 2-core CPU; ":smoke" is a tiny variant that runs in seconds.
"""

import ml_collections

from cfx_jax.methods.latent.config import latent_config
from cfx_jax.jobs.classifier_training import classifier_config
from cfx_jax.engine.runtime import runtime_config


def get_config(variant: str = ""):
  if variant not in ("", "smoke"):
    raise ValueError(f"unknown variant {variant!r} of attributes_causal; use '' or 'smoke'")
  smoke = variant == "smoke"
  c = ml_collections.ConfigDict()
  c.smoke = smoke
  c.data = ml_collections.ConfigDict(dict(image_size=32, channels=3, num_train=6000,
                                          num_test=1000, seed=0))
  c.classifier = classifier_config()
  c.classifier.features = (16, 32, 64)
  c.classifier.steps = 600
  # The flip rate of the counterfactuals is reported, so no warning per failed image.
  c.latent = latent_config(beta=0.5, vae_steps=6000, predictor_steps=600, shift_steps=1500,
                           warn_failures=False)
  c.num_samples = 4096           # latent samples per score estimate
  c.score_seed = 0
  # Latent distributions the scores are estimated over: the VAE's prior N(0, I), and its
  # aggregate posterior on the test images (the latents it decodes realistically).
  c.score_latents = ("prior", "posterior")
  c.num_explained = 256          # test images whose counterfactual flip rate is reported
  c.figure_examples = 2          # test images in the latent-edit figure
  c.seed = 0
  c.runtime = runtime_config()
  if smoke:
    c.data.image_size, c.data.num_train, c.data.num_test = 16, 128, 64
    c.classifier.features, c.classifier.steps = (8, 16), 30
    c.classifier.num_devices, c.classifier.progress, c.classifier.log_every = 1, False, 10
    c.latent = latent_config(latent_dim=4, vae_features=(8, 16), predictor_features=(8, 16),
                             shift_hidden=(32,), vae_steps=30, predictor_steps=20,
                             shift_steps=20, batch_size=32, progress=False, log_every=10,
                             checkpoint_every=20, chunk_size=64, warn_failures=False)
    c.num_samples, c.num_explained, c.figure_examples = 128, 32, 1
  return c
