"""SyCE on the sneaker-vs-ankle-boot Fashion-MNIST classifier with the explainer's setting
chosen by judges, as `fit_explainer` does without a config (docs/selection.md); the
result scored by the evaluation's independent oracle."""

from cfx_jax.configs import common


def get_config(preset: str = "small"):  # --config configs/fashion_sneaker_boot_select.py:paper
  c = common.experiment(common.fashion_mnist((7, 9)), method="syce",
                        preset=preset)  # Sneaker, Ankle boot
  c.classifier.steps = 600
  c.explainer.select.enabled = True
  return c
