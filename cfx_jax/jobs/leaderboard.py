"""`run_leaderboard`: every registered method scored on one dataset, in one table.

Trained explainers (everything `fit_explainer` accepts) are fitted once per seed, and a
finished one is loaded from the work directory instead of refitted; map-only baselines
run directly. A method registered in either place appears without editing this file.

A row may be a method under settings of its own: `fido/mean` is FIDO with the settings
filed under that name in `config.trained.settings` (e.g. another in-filler). With
`config.inpainter`, FIDO's learned in-filler is trained first (or reused) and named
"inpainter", so that such a row can use it.

Each score is a mean with a 95% confidence interval: over seeds for trained explainers
(each seed's mean over images is one sample, Student t), over images for the rest.
Which scores are computed is `config.eval.scores`, names in `evaluators.SCORE_FAMILIES`.
"""

from __future__ import annotations

import json
import math
import os
import time

import ml_collections
import numpy as np
from scipy import stats

from cfx_jax import metrics as M
from cfx_jax import persistence, report
from cfx_jax.api import fit_explainer, load_explainer, trainable_methods
from cfx_jax.baselines import BASELINES, explain_baseline
from cfx_jax.methods import registry
from cfx_jax.metrics.oracle import load_or_train_oracle
from cfx_jax.jobs import classifier_training, evaluators
from cfx_jax.jobs.datasets import load_split
from cfx_jax.jobs.inpainter_stage import run_inpainter_stage
from cfx_jax.engine.logging import is_main_process

# Scores where a lower value is better; every other score is better higher.
LOWER_IS_BETTER = {"deletion_auc", "proximity_l1", "proximity_l2", "sparsity",
                   "fid_classifier", "kid_classifier", "fid_autoencoder", "kid_autoencoder",
                   "randomisation_correlation", "change_outside", "fid_oracle", "kid_oracle"}


def method_of(row: str) -> str:
  """The method of a leaderboard row: `fido/inpainter` is FIDO."""
  return row.split("/", 1)[0]


def _file_name(row: str) -> str:
  return row.replace("/", "-")


def _saved_explainer(workdir, name, seed) -> str:
  return os.path.join(workdir, "explainers", f"{_file_name(name)}_seed{seed}", "explainer",
                      "explainer.json")


def trained_explainers(config, clf, train_images, workdir) -> dict[str, list]:
  """{row: [explainer per seed]}, fitting only what the work directory lacks."""
  names = config.trained.methods or trainable_methods()
  for name in names:
    registry.get(method_of(name))  # an unknown method fails before any explainer trains
  out = {}
  for name in names:
    out[name] = []
    for seed in config.trained.seeds:
      saved = _saved_explainer(workdir, name, seed)
      path = os.path.dirname(os.path.dirname(saved))
      if os.path.exists(saved):
        out[name].append(load_explainer(os.path.dirname(saved), clf))
        continue
      settings = config.trained.settings.get(name) or {}
      if isinstance(settings, ml_collections.ConfigDict):
        settings = settings.to_dict()
      explainer = fit_explainer(clf, train_images, method=method_of(name), seed=seed,
                                workdir=path, config=settings)
      out[name].append(explainer)
  return out


def _mean_ci(values: np.ndarray) -> dict:
  v = np.asarray(values, np.float64)
  v = v[np.isfinite(v)]
  if len(v) == 0:
    return {"mean": float("nan"), "ci95": float("nan"), "n": 0}
  half = 0.0
  if len(v) > 1:
    half = float(stats.t.ppf(0.975, len(v) - 1) * np.std(v, ddof=1) / math.sqrt(len(v)))
  return {"mean": float(np.mean(v)), "ci95": half, "n": int(len(v))}


# Scores already computed -----------------------------------------------------------------


def _score_key(config, name: str, num_images: int, workdir: str) -> dict:
  """What a method's scores depend on; a cached row is reused only when this matches."""
  key = {"num_images": int(num_images), "eval": config.eval.to_dict(),
         "classifier": persistence.digest(os.path.join(workdir, "classifier"))}
  if config.get("inpainter") is not None:  # an explainer may fill with it
    key["inpainter"] = persistence.digest(os.path.join(workdir, "inpainter"))
  if name in BASELINES:
    key["seed"] = int(config.baselines.seed)
  else:  # the explainers it was computed from, by content
    key["explainers"] = [persistence.digest(os.path.dirname(_saved_explainer(workdir, name, s)))
                         for s in config.trained.seeds]
  return json.loads(json.dumps(key))


def _cached_scores(workdir: str, name: str, key: dict):
  """(row, maps, counterfactuals or None) saved by an earlier run with the same key."""
  path = os.path.join(workdir, "scores", _file_name(name))
  try:
    with open(path + ".json") as f:
      saved = json.load(f)
    if saved["key"] != key:
      return None
    arrays = np.load(path + ".npz")
    cfs = arrays["counterfactuals"] if "counterfactuals" in arrays else None
    return saved["row"], arrays["maps"], cfs
  except (OSError, ValueError, KeyError):
    return None


def _save_scores(workdir: str, name: str, key: dict, row: dict, maps, counterfactuals) -> None:
  """Written as each method finishes, so an interrupted run loses at most one method."""
  if not is_main_process():
    return
  os.makedirs(os.path.join(workdir, "scores"), exist_ok=True)
  path = os.path.join(workdir, "scores", _file_name(name))
  arrays = {"maps": np.asarray(maps)}
  if counterfactuals is not None:
    arrays["counterfactuals"] = np.asarray(counterfactuals)
  np.savez(path + ".npz", **arrays)
  report.save_json(path + ".json", {"key": key, "row": row})


def run_leaderboard(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Train what `workdir` lacks, score every method, write the tables and figures.

  Each method's scores are kept in `<workdir>/scores/` and reused while its explainers,
  the classifier and the evaluation settings are unchanged: adding a method to a
  finished leaderboard scores only that method.
  """
  names = evaluators.check_names(config.eval.scores)  # before anything trains
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  t_start = time.time()
  train, test = load_split(config.dataset, "train"), load_split(config.dataset, "test")
  clf, _ = classifier_training.load_or_train_classifier(config.classifier, train, test, workdir)
  if config.get("inpainter") is not None:
    run_inpainter_stage(config.inpainter, train, test, workdir)
  n = min(config.eval.num_images, len(test["image"]))
  x, masks = test["image"][:n], test.get("mask")
  masks = None if masks is None else masks[:n]
  trained = trained_explainers(config, clf, train["image"], workdir)
  ctx = _scoring(config, clf, train, test, workdir, names)
  rows, examples, curves, counterfactuals = {}, {}, {}, {}
  for name, explainers in trained.items():
    # Optimisation methods cost a full optimisation per image: they may use fewer.
    per_image = registry.get(method_of(name)).optimises_per_image
    m = min(n, config.trained.optimiser_images) if per_image else n
    xm, mm = x[:m], None if masks is None else masks[:m]
    key = _score_key(config, name, m, workdir)
    cached = _cached_scores(workdir, name, key)
    if cached is not None:
      rows[name], examples[name], counterfactuals[name] = cached
    else:
      per_seed = []
      for explainer in explainers:
        out = explainer.explain(xm)
        per_seed.append({k: float(np.nanmean(v)) for k, v in
                         evaluators.score(names, name, xm, out, mm, ctx).items()})
        if name not in examples:
          examples[name], counterfactuals[name] = out.maps, out.counterfactual
      # The seed means themselves too: a mean hides one seed that failed.
      by_seed = {k: [s[k] for s in per_seed] for k in per_seed[0]}
      rows[name] = {"kind": "optimised" if per_image else "trained",
                    "samples": "seeds", "num_images": int(m),
                    "scores": {k: _mean_ci(v) for k, v in by_seed.items()},
                    "seed_means": by_seed}
      _save_scores(workdir, name, key, rows[name], examples[name], counterfactuals[name])
    if mm is not None:
      curves[name] = _iou_curves(examples[name], mm)

  baselines = config.baselines.methods
  for name in sorted(BASELINES) if baselines is None else baselines:
    key = _score_key(config, name, n, workdir)
    cached = _cached_scores(workdir, name, key)
    if cached is not None:
      rows[name], examples[name], _ = cached
    else:
      out = explain_baseline(name, clf, x, key=config.baselines.seed)
      scores = evaluators.score(names, name, x, out, masks, ctx)
      rows[name] = {"kind": "baseline", "samples": "images", "num_images": int(n),
                    "scores": {k: _mean_ci(v) for k, v in scores.items()}}
      examples[name] = out.maps
      _save_scores(workdir, name, key, rows[name], out.maps, None)
    if masks is not None:
      curves[name] = _iou_curves(examples[name], masks)

  result = {"dataset": config.dataset.name, "num_images": int(n),
            "oracle_test_accuracy": None if ctx.oracle is None else ctx.oracle.test_accuracy,
            "seeds": list(config.trained.seeds),
            "trained_settings": config.trained.settings.to_dict(),
            "classifier_test_accuracy": float(np.mean(clf.predict(test["image"])
                                                      == test["label"])),
            "methods": rows, "seconds": time.time() - t_start}
  if is_main_process():
    write_leaderboard(workdir, result, x, masks, examples, curves, config.eval.grid_rows,
                      counterfactuals)
  return result


def _scoring(config, clf, train, test, workdir, names) -> evaluators.Scoring:
  """What the named evaluators need, and no more: the realism embeddings (a small
  autoencoder trained on the training images, the classifier's features and, where
  trained, the oracle's) only for `realism`, the oracle only for `truth` or `realism`."""
  oracle = None
  if config.eval.get("oracle_steps") and {"truth", "realism"} & set(names):
    oracle = load_or_train_oracle(os.path.join(workdir, "oracle"), train, test,
                                  steps=int(config.eval.oracle_steps))
  embeddings, train_predicted = {}, None
  if "realism" in names:
    train_predicted = clf.predict(train["image"])
    embeddings = {"classifier": evaluators.classifier_embedding(clf),
                  "autoencoder": M.train_autoencoder(train["image"],
                                                     steps=config.eval.autoencoder_steps,
                                                     seed=0)}
    if oracle is not None:
      embeddings["oracle"] = oracle.features
  return evaluators.Scoring(clf=clf, settings=config.eval, test=test,
                            train_images=train["image"],
                            train_predicted=train_predicted,
                            embeddings=embeddings, oracle=oracle,
                            baseline_seed=int(config.baselines.seed))


def _iou_curves(maps, masks):
  has = masks.reshape(len(masks), -1).max(axis=1) > 0
  return np.asarray(M.iou_curve(maps[has], masks[has]))


# Outputs -----------------------------------------------------------------------------

COLUMNS = {
    "localization": ["pixel_auroc", "average_precision", "iou_curve_area", "iou_95", "ncc",
                     "pointing_game", "relevance_mass", "relevance_rank"],
    "faithfulness and sanity": ["deletion_auc", "insertion_auc", "randomisation_correlation"],
    "counterfactual": ["flip_rate", "preservation_rate", "proximity_l1", "sparsity"],
    "counterfactual truth": ["twin_removal", "change_outside", "added_concentration",
                             "oracle_agreement", "oracle_agreement_1->0",
                             "oracle_agreement_0->1", "fid_oracle", "kid_oracle"],
    "realism": ["fid_classifier", "kid_classifier", "fid_autoencoder", "kid_autoencoder"],
}


def table(result: dict, columns: list[str]) -> str:
  rows = result["methods"]
  columns = [c for c in columns if any(c in r["scores"] for r in rows.values())]
  if not columns:
    return ""
  arrows = [f"{c} {'↓' if c in LOWER_IS_BETTER else '↑'}" for c in columns]
  lines = ["| method | kind | images | " + " | ".join(arrows) + " |",
           "|---|---|---|" + "---|" * len(columns)]
  present = [m for m in rows if any(c in rows[m]["scores"] for c in columns)]
  order = sorted(present, key=lambda m: -rows[m]["scores"].get(columns[0], {}).get("mean", -1e9)
                 if np.isfinite(rows[m]["scores"].get(columns[0], {}).get("mean", np.nan))
                 else 1e9)
  for name in order:
    cells = []
    for c in columns:
      s = rows[name]["scores"].get(c)
      cells.append("—" if s is None or not np.isfinite(s["mean"])
                   else f"{s['mean']:.3f}" if s.get("n", 2) < 2  # one sample: no interval
                   else f"{s['mean']:.3f} ± {s['ci95']:.3f}")
    lines.append(f"| {name} | {rows[name]['kind']} | {rows[name]['num_images']} | "
                 + " | ".join(cells) + " |")
  return "\n".join(lines)


def write_leaderboard(workdir, result, x, masks, examples, curves, grid_rows,
                      counterfactuals=None) -> None:
  report.save_json(os.path.join(workdir, "leaderboard.json"), result)
  shown = min(len(v) for v in examples.values())
  x, masks = x[:shown], None if masks is None else masks[:shown]
  figures = [report.save_method_grid(os.path.join(workdir, "leaderboard_maps.png"), x,
                                     examples, masks, num_rows=grid_rows)]
  counterfactuals = {k: v for k, v in (counterfactuals or {}).items() if v is not None}
  if counterfactuals:
    figures.append(report.save_method_grid(
        os.path.join(workdir, "leaderboard_counterfactuals.png"), x, counterfactuals, masks,
        num_rows=grid_rows, panels="images"))
  if curves:
    figures.append(report.save_iou_curve(os.path.join(workdir, "leaderboard_iou.png"), curves))
  with open(os.path.join(workdir, "leaderboard.md"), "w") as f:
    f.write(markdown(result, [os.path.basename(p) for p in figures]))


def markdown(result: dict, figures: list[str]) -> str:
  """leaderboard.md: one table per family of scores, the figures, how to read them."""
  seeds = len(result["seeds"])
  over_seeds = ("one seed for trained and optimised explainers, so no interval" if seeds == 1
                else f"over {seeds} seeds for trained and optimised explainers")
  parts = [f"# Leaderboard: {result['dataset']}", "",
           (f"{result['num_images']} test images; classifier test accuracy "
            f"{result['classifier_test_accuracy']:.3f}. Mean ± 95% confidence half-width: "
            f"{over_seeds} (their settings are in leaderboard.json); over images for "
            "baselines. "
            "↑ higher is better, ↓ lower is better."
            + (f" Oracle test accuracy {result['oracle_test_accuracy']:.3f}."
               if result.get("oracle_test_accuracy") is not None else "")),
           ""]
  for title, columns in COLUMNS.items():
    text = table(result, columns)
    if text:
      parts += [f"## {title.capitalize()}", "", text, ""]
  parts += [f"![{name}]({name})" for name in figures]
  parts += ["", _HOW_TO_READ]
  return "\n".join(parts)


_HOW_TO_READ = """\
## How to read this

- Localization (positive images with a mask): `pixel_auroc` and `average_precision` rank
  mask pixels above the rest; `iou_curve_area` is the mean IoU of the map binarised at
  every percentile; `iou_95` at the 95th; `ncc` normalised cross-correlation;
  `pointing_game` whether the maximum is on the mask; `relevance_mass` the share of the
  map's mass on the mask; `relevance_rank` the share of the top-|mask| pixels on it.
- Faithfulness: the probability of the explained class as the most relevant pixels are
  deleted (lower area is better) or inserted into a blurred image (higher is better).
- Sanity: rank correlation between a baseline's maps before and after every classifier
  layer is re-drawn at random; a map that does not change (correlation near 1) does not
  depend on what the classifier learned. Trained explainers would need retraining
  against each randomised classifier and are not scored here.
- Counterfactual: `flip_rate` of counterfactuals classified as their target,
  `preservation_rate` of stable images keeping the decision, `proximity_l1` mean change
  per value, `sparsity` share of values changed.
- Realism: Fréchet (FID) and kernel (KID) distances between real images of the target
  class and the counterfactuals, in the classifier's penultimate features and in a small
  autoencoder's code.
- Counterfactual truth: `twin_removal` (median) is how much of the lesion the
  counterfactual removed against the image's exact twin without it (1 = gone and the
  background restored, 0 = untouched), `change_outside` the mean change per value off
  the lesion, `added_concentration` (median) the share of a lesion-free image's change
  toward "lesion" that one lesion-sized disc holds (1 = one spot, as a drawn lesion;
  low = texture spread over the image); `oracle_agreement` the share of counterfactuals
  an independently trained, colour-jitter-hardened classifier assigns to the target
  (overall and per direction), `fid_oracle`/`kid_oracle` realism in that oracle's
  features. The explained classifier was the generator's adversary in training; the
  oracle was not.
"""
