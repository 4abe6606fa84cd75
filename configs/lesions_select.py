"""The lesion quick start with the explainer's setting chosen by judges, as
`fit_explainer` does without a config (docs/selection.md): nothing tuned for the
lesions; the result scored against the masks, the twins and the evaluation's
independent oracle."""

from cfx_jax.configs import common


def get_config(preset: str = "small"):  # --config configs/lesions_select.py:paper
  c = common.experiment(common.lesions(), method="syce", preset=preset)
  c.classifier.steps = 800
  return c
