"""The lesion quick start with the explainer's setting chosen by judges, as
`fit_explainer` does without a config (docs/selection.md): five candidates of 300 steps
of 32 images each, judged on held-out images, the chosen setting fitted again for 600
steps; the result scored against the masks, the twins and the evaluation's independent
oracle."""

from cfx_jax.configs import common


def get_config(preset: str = "small"):  # --config configs/lesions_select.py:paper
  c = common.experiment(common.lesions(), method="syce", preset=preset)
  c.classifier.steps = 500
  c.explainer.select.enabled = True
  return c
