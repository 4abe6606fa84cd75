"""The leaderboard job end to end on a tiny problem, and its statistics."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
from scipy import stats

from cfx_jax import integrity
from cfx_jax.jobs import evaluators, leaderboard
from cfx_jax.configs import common


def tiny_config():
  d = common.lesions(num_train=400, num_test=48)
  d.kwargs.image_size = 16
  c = common.leaderboard(d)
  c.classifier.steps, c.classifier.num_devices, c.classifier.progress = 30, 1, False
  c.classifier.features = (8, 16)
  c.trained.methods, c.trained.seeds = ("cyce", "fido"), (0, 1)
  c.trained.settings = {
      "cyce": {"steps": 2, "batch_size": 8, "num_devices": 1, "progress": False,
               "checkpoint_every": 2,
               "model": {"gen_features": (8, 16), "disc_features": (8, 16)}},
      "fido": {"steps": 2, "samples": 2, "warn_failures": False}}
  c.trained.optimiser_images = 16
  c.baselines.methods = ("gradient", "random")
  c.eval.num_images, c.eval.sanity_images, c.eval.faithfulness_steps = 32, 8, 4
  c.eval.autoencoder_steps, c.eval.grid_rows, c.eval.oracle_steps = 5, 2, 5
  return c


@pytest.mark.slow
def test_leaderboard_job_writes_every_method(tmp_path):
  result = leaderboard.run_leaderboard(tiny_config(), str(tmp_path))
  assert set(result["methods"]) == {"cyce", "fido", "gradient", "random"}
  cyce = result["methods"]["cyce"]["scores"]
  assert cyce["pixel_auroc"]["n"] == 2              # one sample per seed
  seed_means = result["methods"]["cyce"]["seed_means"]["pixel_auroc"]
  assert len(seed_means) == 2 and np.mean(seed_means) == pytest.approx(
      cyce["pixel_auroc"]["mean"])
  for truth in ("twin_removal", "change_outside", "added_concentration", "oracle_agreement",
                "fid_oracle"):
    assert cyce[truth]["n"] == 2, truth
  assert "twin_removal" not in result["methods"]["gradient"]["scores"]
  assert result["methods"]["fido"]["num_images"] == 16
  assert "fid_classifier" in cyce and "preservation_rate" in cyce
  grad = result["methods"]["gradient"]["scores"]
  assert grad["pixel_auroc"]["n"] > 2               # one sample per image with a mask
  assert "flip_rate" not in grad and "randomisation_correlation" in grad
  text = (tmp_path / "leaderboard.md").read_text()
  for name in ("cyce", "fido", "gradient", "random", "pixel_auroc ↑", "deletion_auc ↓"):
    assert name in text
  assert json.loads((tmp_path / "leaderboard.json").read_text())["dataset"] == "lesions"
  assert (tmp_path / "leaderboard_maps.png").stat().st_size > 5000
  assert (tmp_path / "leaderboard_iou.png").exists()
  assert (tmp_path / "leaderboard_counterfactuals.png").exists()
  # A second run reuses the classifier, the trained explainers and the scores; a
  # method whose saved explainer changed is scored again, one merely touched is not.
  saved = tmp_path / "explainers" / "cyce_seed0" / "explainer" / "explainer.json"
  scored = {p.name: p.stat().st_mtime for p in (tmp_path / "scores").iterdir()}
  assert {"cyce.json", "fido.npz", "gradient.json", "random.npz"} <= set(scored)
  changed = tmp_path / "explainers" / "fido_seed1" / "explainer"
  with open(changed / "explainer.json", "a") as f:
    f.write("\n")
  integrity.write_manifest(str(changed))  # a change sealed as a save seals it
  os.utime(saved)
  mtime = saved.stat().st_mtime
  again = leaderboard.run_leaderboard(tiny_config(), str(tmp_path))
  assert saved.stat().st_mtime == mtime
  rescored = {p.name: p.stat().st_mtime for p in (tmp_path / "scores").iterdir()}
  assert rescored["cyce.json"] == scored["cyce.json"]
  assert rescored["gradient.npz"] == scored["gradient.npz"]
  assert rescored["fido.json"] > scored["fido.json"]
  assert again["methods"]["cyce"] == result["methods"]["cyce"]
  assert again["methods"]["fido"]["scores"]["pixel_auroc"]["mean"] == pytest.approx(
      result["methods"]["fido"]["scores"]["pixel_auroc"]["mean"], abs=1e-6)


def test_named_scores_and_rows_of_one_method_with_settings_of_their_own(tmp_path):
  """Only the named evaluators run (no oracle without truth or realism); a row such as
  `fido/inpainter` is FIDO with its own settings, here the in-painter trained first."""
  from cfx_jax.methods.fido.inpainter_train import inpainter_config
  c = tiny_config()
  c.inpainter = inpainter_config()
  i = c.inpainter
  i.steps, i.batch_size, i.num_devices, i.progress, i.chunk_size = 2, 8, 1, False, 16
  i.model.features, i.model.disc_features, i.eval.num_images = (8, 16), (8, 16), 8
  rows = {"fido/mean": "mean", "fido/inpainter": "inpainter"}
  c.trained.methods, c.trained.seeds, c.baselines.methods = tuple(rows), (0,), ("random",)
  c.trained.settings = {row: {"steps": 2, "samples": 2, "warn_failures": False,
                              "infiller": infiller} for row, infiller in rows.items()}
  c.eval.scores = ("localization", "counterfactual")
  result = leaderboard.run_leaderboard(c, str(tmp_path))

  localization = {"pixel_auroc", "average_precision", "iou_curve_area", "iou_95", "ncc",
                  "pointing_game", "relevance_mass", "relevance_rank"}
  assert set(result["methods"]) == set(rows) | {"random"}
  assert set(result["methods"]["random"]["scores"]) == localization
  assert set(result["methods"]["fido/mean"]["scores"]) == localization | {
      "flip_rate", "proximity_l1", "proximity_l2", "sparsity"}
  assert not (tmp_path / "oracle").exists()  # no truth or realism: no oracle trained
  text = (tmp_path / "leaderboard.md").read_text()
  assert "## Faithfulness" not in text and "| fido/inpainter |" in text

  assert (tmp_path / "inpainter" / "inpainter.json").exists()
  for row, infiller in rows.items():
    saved = tmp_path / "explainers" / f"{row.replace('/', '-')}_seed0" / "explainer"
    assert json.loads((saved / "explainer.json").read_text())["config"]["infiller"] == infiller
  maps = [np.load(tmp_path / "scores" / f"{row.replace('/', '-')}.npz")["maps"] for row in rows]
  assert not np.allclose(maps[0], maps[1])  # the in-filler changes what FIDO finds


def test_unknown_score_family_names_the_nearest():
  with pytest.raises(ValueError, match="'localisation'.*did you mean 'localization'"):
    evaluators.check_names(["counterfactual", "localisation"])


def test_mean_ci_is_the_student_t_interval():
  v = np.array([0.2, 0.5, 0.6, np.nan])
  got = leaderboard._mean_ci(v)
  finite = v[:3]
  half = stats.t.ppf(0.975, 2) * finite.std(ddof=1) / math.sqrt(3)
  assert got == {"mean": pytest.approx(finite.mean()), "ci95": pytest.approx(half), "n": 3}
  assert leaderboard._mean_ci(np.array([0.4]))["ci95"] == 0.0
  assert math.isnan(leaderboard._mean_ci(np.array([np.nan]))["mean"])


def test_table_orders_by_first_column_and_marks_direction():
  result = {"methods": {
      "a": {"kind": "baseline", "num_images": 4,
            "scores": {"pixel_auroc": {"mean": 0.6, "ci95": 0.1}}},
      "b": {"kind": "trained", "num_images": 4,
            "scores": {"pixel_auroc": {"mean": 0.9, "ci95": 0.0},
                       "deletion_auc": {"mean": 0.2, "ci95": 0.0}}}}}
  text = leaderboard.table(result, ["pixel_auroc", "deletion_auc", "absent"])
  lines = text.splitlines()
  assert "pixel_auroc ↑" in lines[0] and "deletion_auc ↓" in lines[0]
  assert "absent" not in lines[0]
  assert lines[2].startswith("| b |") and lines[3].startswith("| a |")
  assert "0.900 ± 0.000" in lines[2] and "—" in lines[3]
  # One seed: the mean alone, no interval of zero width.
  one = {"methods": {"c": {"kind": "trained", "num_images": 4,
                           "scores": {"pixel_auroc": {"mean": 0.7, "ci95": 0.0, "n": 1}}}}}
  row = leaderboard.table(one, ["pixel_auroc"]).splitlines()[2]
  assert row == "| c | trained | 4 | 0.700 |"
