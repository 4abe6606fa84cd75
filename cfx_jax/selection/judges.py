"""Judges of counterfactuals that need no ground truth, only the caller's images.

A judge is an oracle (`cfx_jax.metrics.oracle`: colour- and noise-jittered, never a
generator's adversary) trained on the classifier's own decisions of the images the
explainers train on, and scores of counterfactuals of held-out images, per direction
(source class -> target class; with more than two classes, per source class):

- `flip`: the classifier assigns the counterfactual to its target;
- `oracle`: so does the judge's oracle;
- `fid`: realism, the Fréchet distance in the oracle's features between the
  counterfactuals and real images of their target class;
- `change`: the mean change per value, and `reach`: that change as a share of the
  distance to the nearest *real* image of the target class (median over images): an
  edit that moves further than the nearest real image of its target redraws the image;
- `concentration`: the share of an edit's change in its top 5% of pixels (0.05 when it is
  spread evenly; near 1 when it is one spot).

Selection uses one judge; the scores it reports come from a second, with another seed
and other widths, that selection never saw (`SELECTION_JUDGE`, `REPORT_JUDGE`).
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy.spatial.distance import cdist

from cfx_jax.metrics import realism
from cfx_jax.metrics.oracle import Oracle, load_or_train_oracle, train_oracle

SELECTION_JUDGE = {"seed": 101, "features": (32, 64, 128)}
REPORT_JUDGE = {"seed": 202, "features": (64, 96, 192)}
TOP_SHARE = 0.05      # the pixels `concentration` counts
MAX_REFERENCE = 1000  # real images per class compared with each edit for `reach`


def split(predicted: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """(fit, held_out) indices: `fraction` of each predicted class held out (at least two
  images of each, so every direction has counterfactuals to judge)."""
  if not 0.0 < fraction < 1.0:
    raise ValueError(f"the held-out fraction must be in (0, 1), got {fraction}")
  rng = np.random.default_rng(seed)
  held = []
  for c in np.unique(predicted):
    idx = np.flatnonzero(predicted == c)
    if len(idx) < 4:
      raise ValueError(f"the classifier predicts only {len(idx)} images as class {c}; "
                       "judging counterfactuals needs at least 4 of each class")
    held.append(rng.permutation(idx)[:max(2, int(round(fraction * len(idx))))])
  held = np.sort(np.concatenate(held))
  return np.setdiff1d(np.arange(len(predicted)), held), held


@dataclasses.dataclass
class Judge:
  """An oracle and the real images of each class its scores compare edits with."""
  oracle: Oracle
  reals: dict[int, np.ndarray]       # images of each predicted class (the fit split)
  real_features: dict[int, np.ndarray]

  @classmethod
  def train(cls, images: np.ndarray, labels: np.ndarray, held_out: dict, *, seed: int,
            features, steps: int, path: str | None = None,
            progress: bool = False) -> "Judge":
    """An oracle of the classifier's decisions `labels` of `images`; its `test_accuracy`
    is its agreement with the classifier on `held_out` ({"image", "label"})."""
    data = {"image": images, "label": labels}
    settings = dict(steps=steps, seed=seed, features=tuple(features),
                    batch_size=min(64, len(images)))
    if path:
      oracle = load_or_train_oracle(path, data, held_out, progress=progress, **settings)
    else:
      oracle = train_oracle(data, held_out, progress=progress, **settings)
    rng = np.random.default_rng(seed)
    reals = {}
    for c in np.unique(labels):
      idx = np.flatnonzero(labels == c)
      reals[int(c)] = images[np.sort(rng.permutation(idx)[:MAX_REFERENCE])]
    return cls(oracle, reals, {c: oracle.features(x) for c, x in reals.items()})

  def score(self, images: np.ndarray, predicted: np.ndarray, explanation) -> dict:
    """Scores of each direction and of all together (see the module docstring)."""
    cf = np.asarray(explanation.counterfactual, np.float32)
    target = np.asarray(explanation.target)
    flipped = np.argmax(np.asarray(explanation.cf_probs), axis=-1) == target
    agrees = self.oracle.predict(cf) == target
    features = self.oracle.features(cf)
    change = np.abs(cf - images).mean(axis=(1, 2, 3))
    nearest = np.empty(len(images), np.float32)
    for t in np.unique(target):
      sel = target == t
      d = cdist(images[sel].reshape(sel.sum(), -1), self.reals[int(t)].reshape(
          len(self.reals[int(t)]), -1), metric="cityblock") / images[0].size
      nearest[sel] = d.min(axis=1)
    concentration = _concentration(images, cf)
    two = len(self.reals) == 2
    directions = {}
    for s in np.unique(predicted):
      sel = predicted == s
      name = f"{s}->{1 - s}" if two else f"{s}->other"
      fid = _fid(self.real_features, features[sel], target[sel])
      directions[name] = {
          "images": int(sel.sum()), "flip": float(flipped[sel].mean()),
          "oracle": float(agrees[sel].mean()), "fid": fid,
          "change": float(change[sel].mean()),
          "reach": float(np.median(change[sel] / np.maximum(nearest[sel], 1e-6))),
          "nearest_real": float(np.median(nearest[sel])),
          "concentration": float(concentration[sel].mean())}
    rows = list(directions.values())
    overall = {
        "valid": min(min(r["flip"], r["oracle"]) for r in rows),
        "flip": float(flipped.mean()), "oracle": float(agrees.mean()),
        "fid": float(np.mean([r["fid"] for r in rows])),
        "change": float(change.mean()),
        "reach": max(r["reach"] for r in rows),
        "concentration": float(np.mean([r["concentration"] for r in rows]))}
    return {"overall": overall, "directions": directions}


def _concentration(x: np.ndarray, cf: np.ndarray) -> np.ndarray:
  """Per image: the share of the summed |change| (over channels) in its top 5% of pixels."""
  d = np.abs(cf - x).sum(axis=-1).reshape(len(x), -1)
  k = max(1, int(round(TOP_SHARE * d.shape[1])))
  top = -np.sort(-d, axis=1)[:, :k].sum(axis=1)
  return np.where(d.sum(axis=1) > 0, top / np.maximum(d.sum(axis=1), 1e-12), 0.0)


def _fid(real_features: dict, features: np.ndarray, target: np.ndarray) -> float:
  """Fréchet distance of the edits toward each target against its real images,
  averaged over the targets weighted by their count (targets with < 2 edits skipped)."""
  total, count = 0.0, 0
  for t in np.unique(target):
    sel = target == t
    if sel.sum() >= 2:
      total += sel.sum() * realism.frechet_distance(real_features[int(t)], features[sel])
      count += sel.sum()
  return float(total / count) if count else float("nan")
