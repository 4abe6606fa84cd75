"""The train job with methods that have their own explainer class (fido, disc, cae, ...)."""

import json
import os

import pytest

from cfx_jax.configs import common
from cfx_jax.jobs.train import train_and_evaluate


def tiny_config(explainer):
  d = common.lesions(num_train=200, num_test=16)
  d.kwargs.image_size = 16
  c = common.experiment(d, method=None)
  c.classifier.steps, c.classifier.num_devices, c.classifier.progress = 10, 1, False
  c.classifier.features = (8, 16)
  c.explainer = explainer
  c.eval.num_images, c.eval.grid_rows, c.eval.oracle_steps = 16, 2, 5
  return c


@pytest.mark.slow
def test_fido_job_writes_the_report_and_reruns_the_same(tmp_path):
  c = tiny_config(common.method_config("fido", steps=2, samples=2, warn_failures=False))
  c.eval.scores = ("counterfactual", "localisation")
  with pytest.raises(ValueError, match="did you mean 'localization'"):
    train_and_evaluate(c, str(tmp_path))
  assert not os.listdir(tmp_path)  # refused before anything was trained or written
  c.eval.scores = ("counterfactual", "truth", "localization")
  first = train_and_evaluate(c, str(tmp_path))
  for name in ("report.md", "explanations.png", "metrics.json", "explainer/explainer.json"):
    assert os.path.exists(tmp_path / name), name
  with open(tmp_path / "explainer" / "explainer.json") as f:
    assert json.load(f)["config"]["steps"] == 2
  cf = first["explainer"]["counterfactual"]
  assert 0.0 <= cf["flip_rate"] <= 1.0 and "preservation_rate" not in cf
  assert "fido" in (tmp_path / "report.md").read_text()

  again = train_and_evaluate(c, str(tmp_path))  # refits from the same settings and seed
  assert again["explainer"] == first["explainer"]

  c.eval.scores = ("localization",)  # the named families only
  only = train_and_evaluate(c, str(tmp_path))["explainer"]
  assert set(only) == {"num_images", "localization"}
  assert only["localization"] == first["explainer"]["localization"]
  with open(tmp_path / "metrics.json") as f:
    assert set(json.load(f)["explainer"]) == {"num_images", "localization"}
  assert "explained 16 held-out images" in (tmp_path / "report.md").read_text()


def test_classifier_predict_proba_is_the_softmax_of_its_logits():
  import numpy as np

  from cfx_jax.classifier import as_classifier
  w = np.linspace(-1, 1, 16 * 16 * 3).reshape(16, 16, 3).astype(np.float32)
  clf = as_classifier(lambda x: (x * w).sum(axis=(1, 2, 3)), (16, 16, 3))
  x = np.random.default_rng(0).uniform(-1, 1, (5, 16, 16, 3)).astype(np.float32)
  probs = clf.predict_proba(x)
  z = (x * w).sum(axis=(1, 2, 3))  # one binary logit: p(class 1) = sigmoid(z)
  np.testing.assert_allclose(probs[:, 1], 1 / (1 + np.exp(-z)), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-6)


@pytest.mark.slow
def test_latent_job_trains_on_the_attribute_labels(tmp_path):
  from cfx_jax.configs import attributes_latent
  c = attributes_latent.get_config()
  c.dataset.num_train, c.dataset.num_test, c.dataset.kwargs.image_size = 300, 16, 16
  c.classifier.steps, c.classifier.progress = 10, False
  s = c.explainer
  s.vae_steps, s.predictor_steps, s.shift_steps, s.progress = 10, 5, 5, False
  c.eval.num_images, c.eval.grid_rows, c.eval.oracle_steps = 16, 2, 0
  result = train_and_evaluate(c, str(tmp_path))
  assert 0.0 <= result["explainer"]["counterfactual"]["flip_rate"] <= 1.0
  # The attribute predictor is trained only when the job passes the dataset's labels.
  assert os.path.exists(tmp_path / "predictor_train.jsonl")
  assert os.path.exists(tmp_path / "explainer" / "explainer.json")
