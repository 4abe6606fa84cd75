"""End to end: the train job on the lesion set localises the lesion (a short run on 16x16
images, the quick start's config otherwise, except the remover's edited-pixel proximity:
at weight 1 it keeps the in-fill mask shut for the first few hundred steps of so short a
run (flip 0.0 at 120 steps, 0.37 at 300); at 0.2 the mask opens within 240)."""

import json
import os

import pytest

from cfx_jax.configs import lesions_syce
from cfx_jax.jobs.train import train_and_evaluate


@pytest.mark.slow
def test_short_run_localizes_the_lesion(tmp_path):
  c = lesions_syce.get_config()
  c.dataset.num_train, c.dataset.num_test = 2000, 256
  c.dataset.kwargs.image_size = 16
  c.classifier.steps, c.classifier.num_devices, c.classifier.progress = 200, 1, False
  c.explainer.steps, c.explainer.num_devices, c.explainer.progress = 240, 1, False
  c.explainer.batch_size, c.explainer.checkpoint_every = 32, 240
  c.explainer.weights.fill_l0 = 0.2
  c.eval.num_images, c.eval.oracle_steps = 128, 200
  train_and_evaluate(c, str(tmp_path))

  for name in ("report.md", "explanations.png", "metrics.json", "config.json",
               "explainer_metrics.jsonl", "explainer/explainer.json"):
    assert os.path.exists(tmp_path / name), name
  with open(tmp_path / "metrics.json") as f:
    metrics = json.load(f)
  assert metrics["classifier"]["test_accuracy"] > 0.9
  assert metrics["explainer"]["counterfactual"]["flip_rate"] > 0.6  # 240 steps: learning
  assert metrics["explainer"]["localization"]["pixel_auroc"] > 0.8
  assert "pixel_auroc" in (tmp_path / "report.md").read_text()
  truth = metrics["explainer"]["truth"]
  assert truth["oracle_test_accuracy"] > 0.9 and truth["oracle_agreement_on_twins"] > 0.9
  assert truth["twin_images"] > 40 and "twin_removal_median" in (tmp_path / "report.md").read_text()
  assert os.path.exists(tmp_path / "oracle" / "oracle.json")
