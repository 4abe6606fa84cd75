"""Every family of scores, in one table by the names `config.eval.scores` uses, built by
name as big_vision builds its evaluators: a new family is a function here and one entry in
`SCORE_FAMILIES`.

Each family scores one method's explanations for the leaderboard and returns {score:
values}: an (N,) array where the score exists per image (NaN where it does not apply to
that image), a float where it exists only for the whole set (realism, preservation). It
returns {} where the family does not apply: localization without masks, counterfactual
scores for a map-only baseline, sanity for a trained explainer (which would need
retraining against each randomised classifier). The families a train job reports also
summarise an explainer for its metrics.json (`ScoreFamily.summary`).
"""

from __future__ import annotations

import dataclasses
import difflib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from typing import Callable

from cfx_jax import metrics as M
from cfx_jax.baselines import BASELINES, explain_baseline


@dataclasses.dataclass
class Scoring:
  """What the evaluators of one leaderboard share: the classifier, the evaluation
  settings (`config.eval`), the test split, the embeddings realism is measured in
  ({name: images -> features}) with the training images and their predicted classes
  (None without realism) and, where trained, the oracle."""
  clf: object
  settings: ml_collections.ConfigDict
  test: dict
  train_images: np.ndarray
  train_predicted: np.ndarray | None
  embeddings: dict
  oracle: object = None
  baseline_seed: int = 0

  def __post_init__(self):
    # One function object for every call, so the faithfulness program compiles once.
    clf = self.clf
    self.score_fn = jax.jit(lambda images: clf.apply(clf.params, images))


def localization(name, x, out, masks, ctx: Scoring) -> dict:
  """Per image with a mask: how well the map ranks the mask's pixels first."""
  if masks is None:
    return {}
  n = len(x)
  has = masks.reshape(n, -1).max(axis=1) > 0
  fns = {
      "pixel_auroc": M.pixel_auroc, "average_precision": M.average_precision,
      "iou_curve_area": M.iou_curve_area, "iou_95": lambda a, s: M.iou_at_percentile(a, s, 95),
      "ncc": M.normalized_cross_correlation, "pointing_game": M.pointing_game,
      "relevance_mass": M.relevance_mass_accuracy, "relevance_rank": M.relevance_rank_accuracy,
  }
  scores = {}
  for score, fn in fns.items():
    v = np.full((n,), np.nan, np.float32)
    if has.any():
      v[has] = np.asarray(fn(out.maps[has], masks[has]), np.float32)
    scores[score] = v
  return scores


def faithfulness(name, x, out, masks, ctx: Scoring) -> dict:
  """Per image: the explained class's probability as the map's pixels are deleted or
  inserted. Each image becomes 2 * (steps + 1) classifier inputs: chunks bound memory."""
  steps = ctx.settings.faithfulness_steps
  faith = [M.insertion_deletion(ctx.score_fn, x[i:i + 32], out.maps[i:i + 32],
                                out.predicted[i:i + 32], steps=steps)
           for i in range(0, len(x), 32)]
  return {score: np.concatenate([np.asarray(getattr(f, score)) for f in faith])
          for score in ("deletion_auc", "insertion_auc")}


def counterfactual(name, x, out, masks, ctx: Scoring) -> dict:
  """Per image: flip, proximity, sparsity; for the whole set, how many stable images
  keep the decision (methods that make one)."""
  if not out.has_counterfactual:
    return {}
  scores = {"flip_rate": out.flipped.astype(np.float32),
            "proximity_l1": np.asarray(M.proximity_l1(x, out.counterfactual)),
            "proximity_l2": np.asarray(M.proximity_l2(x, out.counterfactual)),
            "sparsity": np.asarray(M.sparsity(x, out.counterfactual))}
  if out.stable is not None:
    scores["preservation_rate"] = float(M.preservation_rate(
        ctx.clf.predict_proba(out.stable), out.predicted))
  return scores


def realism(name, x, out, masks, ctx: Scoring) -> dict:
  """FID and KID between real training images of each target class and the
  counterfactuals toward it, in each embedding: `fid_<embedding>`, `kid_<embedding>`."""
  if not out.has_counterfactual:
    return {}
  scores = {}
  for embedding, embed in ctx.embeddings.items():
    fids, kids, weights = [], [], []
    for k in np.unique(out.target):
      fake = np.asarray(out.counterfactual)[out.target == k]
      real = ctx.train_images[ctx.train_predicted == k]
      if len(fake) < 8 or len(real) < 8:
        continue
      fr, ff = embed(real), embed(fake)
      fids.append(M.frechet_distance(fr, ff))
      kids.append(M.kernel_inception_distance(fr, ff)[0])
      weights.append(len(fake))
    if weights:
      w = np.asarray(weights, np.float64) / np.sum(weights)
      scores[f"fid_{embedding}"] = float(np.dot(w, fids))
      scores[f"kid_{embedding}"] = float(np.dot(w, kids))
  return scores


def truth(name, x, out, masks, ctx: Scoring) -> dict:
  """The oracle's verdict and, where the dataset renders twins, removal against them
  (`cfx_jax.metrics.truth`); realism in the oracle's features is the `oracle` embedding."""
  if ctx.oracle is None or not out.has_counterfactual:
    return {}
  t = M.truth_report(ctx.test, out, ctx.oracle, realism=False)
  scores = {"oracle_agreement": t["oracle_agreement"]}
  scores.update({f"oracle_agreement_{d}": v for d, v in t["oracle_agreement_by_direction"].items()})
  if "twin_removal_median" in t:
    scores.update(twin_removal=t["twin_removal_median"],
                  change_outside=t["change_outside_evidence"])
  if "added_concentration_median" in t:
    scores["added_concentration"] = t["added_concentration_median"]
  return scores


def sanity(name, x, out, masks, ctx: Scoring) -> dict:
  """Per image: rank correlation of a baseline's maps after every classifier layer is
  re-drawn at random (top-down), on the first `sanity_images` images."""
  if name not in BASELINES:
    return {}
  clf, seed = ctx.clf, ctx.baseline_seed
  images = x[:ctx.settings.sanity_images]

  def map_fn(params, images, labels):
    return explain_baseline(name, dataclasses.replace(clf, params=params), images, labels,
                            key=seed).maps

  # The baselines compile themselves; parameters are arguments, so no recompiles.
  per_layer = M.parameter_randomisation(map_fn, clf.params, images, clf.predict(images),
                                        key=jax.random.key(seed), jit=False)
  return {"randomisation_correlation": np.asarray(list(per_layer.values())[-1])}


def counterfactual_summary(explainer, test, x, out, oracle) -> dict:
  """Flip, proximity and, for methods that make one, the stable image's preservation."""
  stable_probs = (None if out.stable is None
                  else explainer.classifier.predict_proba(out.stable))
  return M.counterfactual_report(x, out, stable_probs)


def truth_summary(explainer, test, x, out, oracle) -> dict | None:
  """The oracle's verdict, twin removal and realism in its features (with an oracle)."""
  return None if oracle is None else M.truth_report(test, out, oracle)


def localization_summary(explainer, test, x, out, oracle) -> dict | None:
  """Localization over the images that carry a ground-truth mask."""
  if "mask" not in test:
    return None
  masks = test["mask"][:len(x)]
  has = masks.reshape(len(masks), -1).max(axis=1) > 0
  return M.localization_report(out.maps[has], masks[has]) if has.any() else None


@dataclasses.dataclass(frozen=True)
class ScoreFamily:
  """per_image(name, x, out, masks, ctx: Scoring) -> {score: values}: the leaderboard's
  scores of one method. summary(explainer, test, x, out, oracle) -> dict | None: the
  train job's section of metrics.json (None where the family does not apply); families
  without one are scored only by the leaderboard."""
  per_image: Callable[..., dict]
  summary: Callable[..., dict | None] | None = None


# In the order a train job writes its sections.
SCORE_FAMILIES = {
    "counterfactual": ScoreFamily(counterfactual, counterfactual_summary),
    "truth": ScoreFamily(truth, truth_summary),
    "localization": ScoreFamily(localization, localization_summary),
    "faithfulness": ScoreFamily(faithfulness),
    "realism": ScoreFamily(realism),
    "sanity": ScoreFamily(sanity),
}
# The families a train job reports, the default of its `config.eval.scores`.
TRAIN_JOB_FAMILIES = tuple(name for name, f in SCORE_FAMILIES.items() if f.summary)


def check_names(names, available=tuple(SCORE_FAMILIES),
                job: str = "the leaderboard") -> list[str]:
  """The score families of `config.eval.scores`, or a ValueError naming the nearest one
  of `available`."""
  names = list(names)
  for n in names:
    if n not in available:
      near = difflib.get_close_matches(n, available, n=1)
      hint = f" (did you mean {near[0]!r}?)" if near else ""
      raise ValueError(f"unknown score family {n!r} in config.eval.scores{hint}; "
                       f"{job} scores {sorted(available)}")
  return names


def score(names, name, x, out, masks, ctx: Scoring) -> dict:
  """Every score of the named families for one method's explanations."""
  scores = {}
  for family in names:
    scores.update(SCORE_FAMILIES[family].per_image(name, x, out, masks, ctx))
  return scores


def classifier_embedding(clf):
  """The classifier's mean-pooled last feature map, as an images -> features function."""
  if clf.feature_maps is None:
    raise ValueError("realism in the classifier's features needs a classifier with "
                     "`feature_maps` (e.g. the reference CNN)")
  fn = jax.jit(lambda p, x: jnp.mean(clf.feature_maps(p, x), axis=(1, 2)))
  return lambda images: np.asarray(fn(clf.params, jnp.asarray(images)))
