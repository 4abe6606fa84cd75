"""Score an explainer on held-out images and write what a person reads.

Writes `metrics.json`, `report.md`, `explanations.png` (input | stable, for methods that
make one | counterfactual | map | ground-truth mask) and, where masks exist, `iou_curve.png`.
Any explainer with `explain(images) -> Explanation` and a `classifier` is accepted.
"""

from __future__ import annotations

import os

import numpy as np

from cfx_jax import report
from cfx_jax.metrics import iou_curve
from cfx_jax.engine.logging import is_main_process
from cfx_jax.jobs.evaluators import SCORE_FAMILIES, TRAIN_JOB_FAMILIES, check_names


def check_scores(names) -> list[str]:
  """`config.eval.scores` of a train job, or a ValueError naming the nearest family."""
  return check_names(names, TRAIN_JOB_FAMILIES, "a train job")


def evaluate_explainer(explainer, test: dict, *, num_images: int = 512, oracle=None,
                       scores=TRAIN_JOB_FAMILIES) -> tuple[dict, object]:
  """The named score families on the first `num_images` test images: counterfactual
  quality on all of them, localization on those with a mask, and with an `oracle` the
  truth scores of `cfx_jax.metrics.truth` (twins where the test set has them, the
  oracle's verdict, realism in its features). A family that does not apply is left out."""
  x = test["image"][:num_images]
  out = explainer.explain(x)
  metrics = {"num_images": int(len(x))}
  for name in check_scores(scores):
    section = SCORE_FAMILIES[name].summary(explainer, test, x, out, oracle)
    if section is not None:
      metrics[name] = section
  return metrics, out


def write_outputs(workdir: str, name: str, test: dict, metrics: dict, out,
                  *, extra: dict | None = None, grid_rows: int = 8, oracle=None,
                  selection: dict | None = None) -> None:
  """`name`: the method's name, for titles and legends; `oracle` adds its verdicts;
  `selection`, the record of a setting chosen by judges, adds its table."""
  if not is_main_process():
    return
  n = len(out)
  masks = test.get("mask")
  masks = None if masks is None else masks[:n]
  images = [os.path.join(workdir, "explanations.png")]
  rows = _rows(test.get("label", out.predicted)[:n], masks, grid_rows)
  sub = type(out)(**{f: None if getattr(out, f) is None else np.asarray(getattr(out, f))[rows]
                     for f in ("maps", "counterfactual", "stable", "target", "probs",
                               "cf_probs")})
  twins = test.get("twin")
  report.save_explanation_grid(
      os.path.join(workdir, "explanations.png"), test["image"][:n][rows], sub,
      None if masks is None else masks[rows],
      twins=None if twins is None else twins[:n][rows],
      oracle_predictions=None if oracle is None else oracle.predict(sub.counterfactual))
  if masks is not None and "localization" in metrics:
    has = masks.reshape(n, -1).max(axis=1) > 0
    report.save_iou_curve(os.path.join(workdir, "iou_curve.png"),
                          {name: np.asarray(iou_curve(out.maps[has], masks[has]))})
    images.append(os.path.join(workdir, "iou_curve.png"))
  all_metrics = {**(extra or {}), "explainer": metrics}
  report.save_json(os.path.join(workdir, "metrics.json"),
                   {**all_metrics, **({"selection": selection} if selection else {})})
  report.write_report(
      os.path.join(workdir, "report.md"),
      title=f"Counterfactual explanations: {name}",
      metrics=all_metrics,
      sections={"Summary": summary(name, metrics), "How to read this": _HOW_TO_READ,
                **({"Setting chosen by judges": report.selection_table(selection)}
                   if selection else {})},
      images=images)


def summary(name: str, metrics: dict) -> str:
  """Two sentences a person reads before the table."""
  text = f"`{name}` explained {metrics['num_images']} held-out images."
  cf = metrics.get("counterfactual")
  if cf:
    text = (f"`{name}` moved {cf['flip_rate']:.1%} of {metrics['num_images']} "
            f"held-out images to their target class, changing {cf['proximity_l1']:.4f} "
            "per value on average")
    if "preservation_rate" in cf:
      text += (f"; {cf['preservation_rate']:.1%} of its stable images keep the "
               "classifier's decision")
    text += "."
  truth = metrics.get("truth")
  if truth:
    text += (f" An independent oracle (test accuracy {truth['oracle_test_accuracy']:.3f}) "
             f"assigns {truth['oracle_agreement']:.1%} of the counterfactuals to their "
             "target class")
    if "oracle_agreement_on_twins" in truth:
      text += f" ({truth['oracle_agreement_on_twins']:.1%} of the true twins)"
    text += "."
    if "twin_removal_median" in truth:
      text += (f" Against the exact twins, the median counterfactual removes "
               f"{truth['twin_removal_median']:.0%} of the lesion and changes "
               f"{truth['change_outside_evidence']:.4f} per value outside it.")
  loc = metrics.get("localization")
  if loc:
    text += (f" On the {loc['n_images']} images with ground-truth evidence, the maps rank "
             f"evidence pixels first with pixel AUROC {loc['pixel_auroc']:.3f}, their top 5% "
             f"overlaps it with IoU {loc['iou_95']:.3f}, and the maximum lies on it in "
             f"{loc['pointing_game']:.1%} of images.")
  return text


def _rows(labels, masks, k: int) -> np.ndarray:
  """Mostly images that carry evidence (positives with masks), some of the other class."""
  labels = np.asarray(labels)
  if masks is not None:
    pos = np.flatnonzero(masks.reshape(len(masks), -1).max(axis=1) > 0)
    neg = np.flatnonzero(masks.reshape(len(masks), -1).max(axis=1) == 0)
    take = min(len(pos), k - min(2, len(neg)))
    return np.concatenate([pos[:take], neg[:k - take]]).astype(int)
  order = np.argsort(labels, kind="stable")
  return order[np.linspace(0, len(order) - 1, min(k, len(order))).astype(int)]


_HOW_TO_READ = """\
Each row: the input, the class-preserving (stable) image where the method makes one,
the counterfactual (titled with the classifier's probability of its target, ✗ where it
missed, and the oracle's class where an oracle is trained), the exact twin where the
dataset renders one, the explanation map (outlined: its top 5%), and the ground-truth
evidence where the dataset has it.

- `flip_rate`: fraction of counterfactuals classified as their target.
- `preservation_rate`: fraction of stable images still classified as the input.
- `proximity_l1`: mean absolute change per value (images in [-1, 1]).
- `oracle_agreement`: fraction of counterfactuals that an independently trained,
  colour-jitter-hardened classifier assigns to the target (per direction as well);
  `oracle_agreement_on_twins` is the same for the exact twins, the ceiling.
- `twin_removal_median`: 1 - sum |cf - twin| / sum |input - twin| over the lesion, for
  images whose lesion the counterfactual should remove; 1 = removed and background
  restored, 0 = untouched. `change_outside_evidence`: mean |cf - input| off the lesion.
- `added_concentration_median`: for images that should gain a lesion, the share of the
  change inside the best-placed lesion-sized disc; 1 = one spot, as a drawn lesion.
- `oracle_realism`: FID and KID of the counterfactuals against real images of their
  target class, in the oracle's features.
- `pixel_auroc`: how well map values rank evidence pixels above the rest (0.5 = chance).
- `iou_95`: IoU of the map's top 5% with the evidence mask.
- `pointing_game`: fraction of maps whose maximum lies on the evidence.
"""
