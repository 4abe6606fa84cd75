"""Settings chosen by judges: the scores, the rule, and the default fit that uses them."""

from __future__ import annotations

import types

import numpy as np
import pytest

import cfx_jax
from cfx_jax import selection
from cfx_jax.methods.conditional import population
from cfx_jax.selection import judges, search

from conftest import model_config


def test_split_holds_out_a_share_of_each_class():
  predicted = np.array([0] * 40 + [1] * 20)
  fit, held = judges.split(predicted, 0.25, seed=0)
  assert len(np.intersect1d(fit, held)) == 0 and len(fit) + len(held) == 60
  assert np.bincount(predicted[held]).tolist() == [10, 5]
  with pytest.raises(ValueError, match="at least 4"):
    judges.split(np.array([0] * 10 + [1] * 3), 0.2, seed=0)
  with pytest.raises(ValueError, match="fraction"):
    judges.split(predicted, 1.0, seed=0)


def test_concentration_of_one_spot_and_of_an_even_change():
  x = np.zeros((2, 10, 10, 1), np.float32)
  cf = x.copy()
  cf[0, 2:4, 2:4] = 1.0        # 4 of 100 pixels: all the change in the top 5
  cf[1] += 0.1                  # the same everywhere: 5% of it in the top 5
  np.testing.assert_allclose(judges._concentration(x, cf), [1.0, 0.05], rtol=1e-6)


class _Oracle:
  """Predicts class 1 when the image's mean is positive; features are the pixels."""
  test_accuracy = 1.0

  def predict(self, x):
    return (np.asarray(x).mean(axis=(1, 2, 3)) > 0).astype(np.int32)

  def features(self, x):
    return np.asarray(x).reshape(len(x), -1)[:, :4] + np.arange(4)


def test_judge_scores_each_direction():
  rng = np.random.default_rng(0)
  reals = {0: rng.uniform(-1, -0.5, (8, 4, 4, 1)).astype(np.float32),
           1: rng.uniform(0.5, 1, (8, 4, 4, 1)).astype(np.float32)}
  oracle = _Oracle()
  judge = judges.Judge(oracle, reals, {c: oracle.features(x) for c, x in reals.items()})
  x = np.concatenate([reals[0][:4], reals[1][:4]])
  predicted = np.array([0] * 4 + [1] * 4)
  target = 1 - predicted
  cf = -x                       # lands in the other class, all the way
  cf[4:] = x[4:] * 0.5          # the 1 -> 0 edits fail: still positive
  probs = np.eye(2)[np.ones(8, int)]  # the classifier says 1 to every edit
  out = types.SimpleNamespace(counterfactual=cf, target=target, cf_probs=probs)
  scores = judge.score(x, predicted, out)
  d01, d10 = scores["directions"]["0->1"], scores["directions"]["1->0"]
  assert (d01["flip"], d01["oracle"]) == (1.0, 1.0)
  assert (d10["flip"], d10["oracle"]) == (0.0, 0.0)
  assert scores["overall"]["valid"] == 0.0
  np.testing.assert_allclose(d01["change"], np.abs(2 * x[:4]).mean(), rtol=1e-6)
  # the nearest real image of the target is closer than where the edit went
  assert d01["reach"] > 1.0 and d01["nearest_real"] < d01["change"]


def _scores(valid, reach, fid, concentration, finite=True):
  return {"overall": dict(valid=valid, reach=reach, fid=fid, concentration=concentration),
          "finite": finite}


def test_choose_keeps_valid_candidates_and_prefers_the_smallest_realistic_edit():
  scores = {"redraws": _scores(0.99, 2.0, 5.0, 0.1),
            "edits": _scores(0.93, 0.4, 1.0, 0.6),
            "tints": _scores(0.50, 0.1, 0.5, 0.9),           # not valid: never chosen
            "broken": _scores(1.00, 0.1, 0.1, 0.9, finite=False)}
  assert search.choose(scores) == "edits"
  # none reaches the bar: those within the slack of the best compete
  low = {"a": _scores(0.70, 1.0, 2.0, 0.2), "b": _scores(0.68, 0.5, 1.0, 0.5),
         "c": _scores(0.40, 0.1, 0.1, 0.9)}
  assert search.choose(low) == "b"
  with pytest.raises(ValueError, match="non-finite"):
    search.choose({"x": _scores(1.0, 1.0, 1.0, 1.0, finite=False)})


def test_candidates_for_two_classes_and_shared_networks():
  base = cfx_jax.explainer_config("syce")
  names = search.candidates(base, 2)
  assert set(names) == {"edit", "close edit", "firm flip", "smooth edit", "in-fill"}
  firm, smooth, fill = (search.member_config(base, names[n])
                        for n in ("firm flip", "smooth edit", "in-fill"))
  # the edits share their networks (one population); every in-fill network only in-fills
  assert population.group_key(smooth) == population.group_key(base)
  assert population.group_key(firm) == population.group_key(base)
  assert tuple(fill.model.fill_only) == (0, 1) and fill.model.mask_grow == 1
  assert population.group_key(fill) != population.group_key(base)
  assert tuple(base.model.fill_only) == ()          # the base is left as it was
  shared = search.candidates(base, 10)
  assert "firm flip" not in shared      # with more than two classes the base flips so
  assert search.member_config(base, shared["in-fill"]).model.infill
  sagen = search.candidates(cfx_jax.explainer_config("sagen"), 2)
  assert "model.fill_only" not in sagen["in-fill"]


def test_the_final_setting_takes_each_direction_from_its_candidate():
  forms = search.candidates(cfx_jax.explainer_config("syce"), 2)
  both = search.final_overrides(forms, {"0->1": "smooth edit", "1->0": "in-fill"})
  assert both["model.fill_only"] == (1,) and both["weights.fill_l0"] > 0
  assert both["weights.tv"] == forms["smooth edit"]["weights.tv"]
  assert search.final_overrides(forms, {"0->1": "edit", "1->0": "edit"}) == {}
  assert search.final_overrides(forms, {"0->1": "in-fill", "1->0": "in-fill"})[
      "model.fill_only"] == (0, 1)
  # weights that conflict are no one judged setting: each is fitted again apart, also
  # where one candidate's weights are a part of the other's
  assert search.final_overrides(forms, {"0->1": "smooth edit", "1->0": "firm flip"}) is None
  wider = {**forms, "firm close": {**forms["firm flip"], **forms["close edit"]}}
  assert search.final_overrides(wider, {"0->1": "firm close", "1->0": "firm flip"}) is None


def test_directions_of_conflicting_settings_are_fitted_again_apart(classifier_fn, images,
                                                                   monkeypatch):
  by_direction = {"0->1": "firm flip", "1->0": "smooth edit"}
  choose = search.choose
  monkeypatch.setattr(search, "choose",
                      lambda scores, direction=None: by_direction[direction] if direction
                      else choose(scores))
  explainer = cfx_jax.fit_explainer(classifier_fn, images, config=_tiny_select())
  final = explainer.selection["final"]
  forms = search.candidates(cfx_jax.explainer_config("syce"), 2)
  for d, name in by_direction.items():
    assert final["settings"]["networks_from"][d].items() >= forms[name].items()
  if final["kept"]:   # the explainer returned is the two refits, composed
    assert explainer.config["networks_from"] == by_direction


def _tiny_select(**extra):
  cfg = model_config(steps=2, batch_size=8, select={"enabled": True, "held_out": 0.25,
                                                    "judge_steps": 2, "seeds": 2}, **extra)
  return cfg


def test_fit_with_selection_records_and_saves_the_choice(classifier_fn, images, tmp_path):
  explainer = cfx_jax.fit_explainer(classifier_fn, images, config=_tiny_select(),
                                    workdir=str(tmp_path))
  record = explainer.selection
  assert record["chosen"] in record["candidates"]
  forms = search.candidates(cfx_jax.explainer_config("syce"), 2)
  # two seeds of each form, trained as one population each; and, where the best
  # candidate differs by direction, the explainer composed of them
  trained = {n for n, c in record["candidates"].items()
             if "networks_from" not in c["settings"]}
  assert trained == set(forms) | {f"{n}, seed 1" for n in forms}
  assert record["candidates"]["edit, seed 1"]["settings"] == {"seed": 1}
  assert record["candidates"]["in-fill"]["settings"]["model.fill_only"] == [0, 1]
  assert set(record["by_direction"]) == {"0->1", "1->0"}
  assert set(record["by_direction"].values()) <= trained
  for c in record["candidates"].values():
    assert {"valid", "flip", "oracle", "fid", "reach", "concentration"} <= set(
        c["scores"]["overall"])
  assert record["images"]["held_out"] >= 4
  # the chosen setting fitted again for the explainer's steps, scored like the others
  assert record["final"]["steps"] == 2 and isinstance(record["final"]["kept"], bool)
  assert {"valid", "flip", "oracle"} <= set(record["final"]["scores"]["overall"])
  assert set(record["reported"]["directions"]) == {"0->1", "1->0"}
  loaded = cfx_jax.load_explainer(str(tmp_path / "explainer"), classifier_fn)
  assert loaded.selection["chosen"] == record["chosen"]
  # the chosen member's own settings, not the base's
  fills = [s for s, d in ((0, "0->1"), (1, "1->0"))
           if s in record["candidates"][record["by_direction"][d]]["settings"].get(
               "model.fill_only", [])]
  assert list(loaded.spec.fill_only) == fills


def test_a_fixed_config_selects_nothing_and_no_config_selects(classifier_fn, images,
                                                             monkeypatch):
  fixed = cfx_jax.fit_explainer(classifier_fn, images, config=model_config(steps=1,
                                                                            batch_size=8))
  assert fixed.selection is None
  seen = {}

  def fake_select(clf, x, base, workdir):
    seen["base"] = base
    return fixed
  monkeypatch.setattr(selection, "select", fake_select)
  cfx_jax.fit_explainer(classifier_fn, images, steps=3)
  assert seen["base"].select.enabled and seen["base"].steps == 3
  seen.clear()
  cfx_jax.fit_explainer(classifier_fn, images, config=model_config(), select=True)
  assert seen["base"].model.gen_features == (8, 16)   # chosen around the given config
  seen.clear()
  plain = cfx_jax.fit_explainer(classifier_fn, images, select=False, config=model_config(
      steps=1, batch_size=8, select={"enabled": True}))
  assert not seen and plain.selection is None
  with pytest.raises(ValueError, match="steps must be >= 1"):
    cfx_jax.fit_explainer(classifier_fn, images, steps=0)
  with pytest.raises(ValueError, match="generator methods"):
    cfx_jax.fit_explainer(classifier_fn, images, method="fido", select=True)


def test_train_job_selects_by_default_and_reports_the_choice(tmp_path):
  from cfx_jax.jobs.train import train_and_evaluate
  from cfx_jax.configs import common
  import tiny_job_config
  assert common.experiment(common.lesions(), method="syce").explainer.select.enabled
  c = tiny_job_config.get_config()
  c.explainer.select.enabled = True
  c.explainer.select.judge_steps = 5
  c.explainer.steps, c.explainer.log_example_ids = 3, False
  results = train_and_evaluate(c, str(tmp_path))
  assert results["selection"]["chosen"] in results["selection"]["candidates"]
  text = (tmp_path / "report.md").read_text()
  assert "## Setting chosen by judges" in text and "(chosen)" in text
  assert (tmp_path / "selection" / "judge" / "oracle.json").exists()
  # a rerun resumes every candidate at its last step and chooses the same
  again = train_and_evaluate(c, str(tmp_path))
  assert again["selection"]["chosen"] == results["selection"]["chosen"]


def test_a_composed_explainer_takes_each_direction_from_its_candidate(classifier, images,
                                                                      tmp_path):
  from cfx_jax.methods.conditional.train import resolve_config, train_group
  base = resolve_config("syce", model_config(steps=2, batch_size=8))
  forms = search.candidates(base, 2)
  edit, fill = (search.member_config(base, forms[n]) for n in ("edit", "in-fill"))
  fitted = {"edit": train_group(classifier, images, [edit])[0],
            "fill": train_group(classifier, images, [fill])[0]}
  both = search.compose(fitted, {"0->1": "edit", "1->0": "fill"})
  assert both.spec.fill_only == (1,) and both.config["networks_from"]["1->0"] == "fill"
  out = both.explain(images)
  predicted = np.argmax(out.probs, axis=-1)
  for name, source in (("edit", 0), ("fill", 1)):
    own = fitted[name].explain(images)
    sel = predicted == source
    np.testing.assert_allclose(out.counterfactual[sel], own.counterfactual[sel], atol=1e-6)
  both.save(str(tmp_path / "both"))
  loaded = cfx_jax.load_explainer(str(tmp_path / "both"), classifier)
  np.testing.assert_allclose(loaded.explain(images).counterfactual, out.counterfactual,
                             atol=1e-6)
  assert not search.composable(cfx_jax.explainer_config("sagen"), 2)
  assert not search.composable(base, 10)
