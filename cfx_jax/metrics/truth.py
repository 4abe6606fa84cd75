"""Is a counterfactual true? Scores against exact twins and an independent oracle.

Localisation scores reward a map for pointing at the evidence, which an adversarial
tint on the evidence does as well as a real edit. These scores look at the
counterfactual image itself:

- twin removal: where the dataset renders every image again without its evidence
  (`make_lesions(..., twins=True)`), how much of the difference to that twin inside the
  evidence mask the counterfactual removed: 1 - sum_m |cf - x0| / sum_m |x - x0|.
  1 when the evidence is gone and the background behind it restored; 0 when untouched;
  a colour shift on the evidence scores near 0 or below.
- change outside the evidence: mean |cf - x| off the mask; a counterfactual should
  not repaint the rest of the image.
- concentration of added evidence: where the counterfactual adds a lesion, the largest
  share of its change that one lesion-sized disc holds. A drawn lesion is one spot
  (the true twin scores 1); texture spread over the image, which can fool the oracle
  too, scores low.
- oracle agreement: the share of counterfactuals that an independently trained,
  augmentation-hardened classifier (`cfx_jax.metrics.oracle`) assigns to the target
  class. The explained classifier was the generator's adversary during training, so
  its verdict cannot tell a real edit from a successful attack; the oracle's can.
- realism in the oracle's features: FID and KID of the counterfactuals against real
  images of their target class.
"""

from __future__ import annotations

import numpy as np

from cfx_jax.data.lesions import LESION_RADIUS
from cfx_jax.metrics.realism import frechet_distance, kernel_inception_distance


def _check(name: str, a: np.ndarray, shape: tuple) -> np.ndarray:
  a = np.asarray(a, np.float64)
  if a.shape != shape:
    raise ValueError(f"{name} has shape {a.shape}, expected {shape}")
  return a


def twin_removal(x_batch, twin_batch, cf_batch, s_batch) -> np.ndarray:
  """Per image (N,): 1 - sum_m |cf - x0| / sum_m |x - x0| over the mask m (N, H, W).

  NaN for an image whose mask is empty or whose twin equals it there.
  """
  x = np.asarray(x_batch, np.float64)
  x0 = _check("twin_batch", twin_batch, x.shape)
  cf = _check("cf_batch", cf_batch, x.shape)
  m = _check("s_batch", s_batch, x.shape[:3])[..., None]
  remaining = np.sum(m * np.abs(cf - x0), axis=(1, 2, 3))
  evidence = np.sum(m * np.abs(x - x0), axis=(1, 2, 3))
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(evidence > 0, 1.0 - remaining / evidence, np.nan)


def change_outside(x_batch, cf_batch, s_batch) -> np.ndarray:
  """Per image (N,): mean |cf - x| per value over the pixels off the mask (N, H, W)."""
  x = np.asarray(x_batch, np.float64)
  cf = _check("cf_batch", cf_batch, x.shape)
  off = 1.0 - _check("s_batch", s_batch, x.shape[:3])[..., None]
  values = np.sum(off, axis=(1, 2, 3)) * x.shape[-1]
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.sum(off * np.abs(cf - x), axis=(1, 2, 3)) / values


def edit_concentration(x_batch, cf_batch, radius: float) -> np.ndarray:
  """Per image (N,): the largest share of sum_c |cf - x| inside one disc of `radius`
  pixels, over every centre; NaN for an unchanged image."""
  x = np.asarray(x_batch, np.float64)
  change = np.sum(np.abs(_check("cf_batch", cf_batch, x.shape) - x), axis=-1)
  r = int(np.floor(radius))
  offsets = [(dy, dx) for dy in range(-r, r + 1) for dx in range(-r, r + 1)
             if dy * dy + dx * dx <= radius * radius]
  padded = np.pad(change, ((0, 0), (r, r), (r, r)))
  h, w = change.shape[1:]
  inside = sum(padded[:, r + dy:r + dy + h, r + dx:r + dx + w] for dy, dx in offsets)
  total = np.sum(change, axis=(1, 2))
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(total > 0, np.max(inside, axis=(1, 2)) / total, np.nan)


def agreement(oracle_predictions, target) -> np.ndarray:
  """Per image (N,) bool: the oracle's class equals the target."""
  return np.asarray(oracle_predictions) == np.asarray(target)


def by_direction(values: np.ndarray, source, target) -> dict[str, float]:
  """Mean of a per-image score for each source -> target direction that occurs."""
  source, target = np.asarray(source), np.asarray(target)
  out = {}
  for s, t in sorted(set(zip(source.tolist(), target.tolist()))):
    sel = (source == s) & (target == t)
    out[f"{s}->{t}"] = float(np.mean(values[sel]))
  return out


def class_matched_reals(labels, target, seed: int = 0) -> np.ndarray:
  """Indices of real images with the same class composition as `target`.

  Each counterfactual aimed at class t is paired with a real image of class t, drawn
  without replacement while the class has unused images. Empty where a target class
  has no real image.
  """
  labels, target = np.asarray(labels), np.asarray(target)
  rng = np.random.default_rng(seed)
  picks = []
  for t in np.unique(target):
    pool = np.flatnonzero(labels == t)
    if len(pool) == 0:
      return np.zeros((0,), np.int64)
    need = int(np.sum(target == t))
    picks.append(rng.choice(pool, need, replace=need > len(pool)))
  return np.concatenate(picks)


def realism_in_features(real_features, fake_features) -> dict[str, float]:
  """FID and KID (mean over subsets) of two feature sets."""
  kid, _ = kernel_inception_distance(real_features, fake_features, subsets=50,
                                     subset_size=500)
  return {"fid": frechet_distance(real_features, fake_features), "kid": kid}


def truth_report(test: dict, out, oracle, *, realism: bool = True) -> dict:
  """Every truth score of one explainer's counterfactuals on the first len(out) images.

  `test`: "image", "label" and, where the dataset renders them, "twin" and "mask";
  `out`: an Explanation with counterfactuals; `oracle`: `predict(images)` and
  `features(images)`, e.g. `cfx_jax.metrics.oracle.Oracle`. `realism=False` skips
  FID/KID, for callers that compute realism in the oracle's features themselves.
  """
  n = len(out)
  x, labels = np.asarray(test["image"][:n]), np.asarray(test["label"][:n])
  cf, target, source = np.asarray(out.counterfactual), np.asarray(out.target), out.predicted
  agree = agreement(oracle.predict(cf), target)
  report = {
      "oracle_test_accuracy": float(oracle.test_accuracy),
      "oracle_agreement": float(np.mean(agree)),
      "oracle_agreement_by_direction": by_direction(agree, source, target),
  }
  reals = class_matched_reals(np.asarray(test["label"]), target) if realism else []
  if len(reals) >= 2:
    real_features = oracle.features(np.asarray(test["image"])[reals])
    report["oracle_realism"] = realism_in_features(real_features, oracle.features(cf))
  if "twin" in test:
    twin = np.asarray(test["twin"][:n])
    report["oracle_agreement_on_twins"] = float(np.mean(oracle.predict(twin) == 1 - labels))
    removal_rows = (labels == 1) & (target == 0)
    if removal_rows.any():
      m = np.asarray(test["mask"][:n])[removal_rows]
      removal = twin_removal(x[removal_rows], twin[removal_rows], cf[removal_rows], m)
      outside = change_outside(x[removal_rows], cf[removal_rows], m)
      report.update(
          twin_removal_median=float(np.nanmedian(removal)),
          twin_removal_mean=float(np.nanmean(removal)),
          change_outside_evidence=float(np.mean(outside)),
          twin_images=int(removal_rows.sum()))
    adding_rows = (labels == 0) & (target == 1)
    concentration = edit_concentration(x[adding_rows], cf[adding_rows],
                                       LESION_RADIUS[1] * x.shape[1])
    if np.isfinite(concentration).any():  # undefined where nothing was changed
      report["added_concentration_median"] = float(np.nanmedian(concentration))
  return report
