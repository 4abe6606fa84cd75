"""SyCE explainer of a pullover-vs-coat Fashion-MNIST classifier: the task set aside
before the settings were chosen by judges, never tuned on, as a test of the defaults
(docs/selection.md says when it ran)."""

from cfx_jax.configs import common


def get_config(preset: str = "small"):  # --config configs/fashion_pullover_coat.py:paper
  c = common.experiment(common.fashion_mnist((2, 4)), method="syce",
                        preset=preset)  # Pullover, Coat
  c.classifier.steps = 600
  return c
