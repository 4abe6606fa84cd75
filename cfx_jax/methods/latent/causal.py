"""Probabilities of necessity and sufficiency of attributes for a classifier's decision.

Global explanations of the latent-space method (`cfx_jax.methods.latent`).

Causal scores (global explanations), for binary attribute A and outcome Y (the
classifier decides class 1), by Monte Carlo over latents z from the generator's prior
(N(0, I) for the VAE; encoded training images for a pretrained generator without one):

  PN  = P(Y_{A<-0} = 0 | A = 1, Y = 1)     necessity
  PS  = P(Y_{A<-1} = 1 | A = 0, Y = 0)     sufficiency
  PNS = P(Y_{A<-1} = 1, Y_{A<-0} = 0)      necessity and sufficiency

A and Y are the attribute predictor's and the classifier's decisions on G(z); the
interventions A<-1 / A<-0 are the shift's edits with t_A = +1 / -1 and every other entry
0, applied where they change A (where A already has the value, Y_{A<-a} = Y by
consistency). Each score is a proportion of counts, reported with its Wilson score
interval (well behaved near 0 and 1 and for small counts, where the normal interval is
not). The intervals cover the Monte Carlo error only, not the error of the generator or
the shift predictor. A VAE's prior has holes (latents that decode to blurred mixtures of
images), so the scores can also be estimated over its aggregate posterior on a set of
images (`causal_scores(..., images=...)`): the latents it decodes realistically.
"""

from __future__ import annotations

import statistics
from typing import TYPE_CHECKING

import jax
import numpy as np

if TYPE_CHECKING:
  from cfx_jax.methods.latent.explainer import LatentExplainer
  from cfx_jax.methods.latent.generator import LatentGenerator

SCORES = ("pn", "ps", "pns")
SCORE_LABELS = {"pn": "PN", "ps": "PS", "pns": "PNS"}


def wilson_interval(successes, trials, confidence: float = 0.95) -> tuple[float, float]:
  """Wilson score interval of a binomial proportion; (0, 1) when there are no trials."""
  k, n = int(successes), int(trials)
  if not 0 <= k <= n:
    raise ValueError(f"need 0 <= successes <= trials, got {k} of {n}")
  if n == 0:
    return 0.0, 1.0
  z = statistics.NormalDist().inv_cdf(0.5 + confidence / 2.0)
  p = k / n
  denom = 1.0 + z * z / n
  centre = (p + z * z / (2 * n)) / denom
  half = z / denom * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
  # The bounds at k = 0 and k = n are exactly 0 and 1 (rounding would leave ~1e-17).
  lo = 0.0 if k == 0 else max(0.0, centre - half)
  hi = 1.0 if k == n else min(1.0, centre + half)
  return float(lo), float(hi)


def _binary(name: str, v, n: int | None = None) -> np.ndarray:
  a = np.asarray(v)
  if a.ndim != 1 or (n is not None and a.shape[0] != n):
    raise ValueError(f"{name} must be a 1-D array" + (f" of length {n}" if n is not None else "")
                     + f", got shape {a.shape}")
  if not np.isin(a, (0, 1)).all():
    raise ValueError(f"{name} must be binary (0/1 or bool)")
  return a.astype(bool)


def necessity_sufficiency(a, y, y_do1, y_do0, *, confidence: float = 0.95) -> dict:
  """PN, PS and PNS of binary cause A for outcome Y from per-sample decisions.

  a, y: A and Y observed on each sample; y_do1, y_do0: Y under the interventions A<-1
  and A<-0 on the same sample. Each score: {"estimate", "ci" (Wilson), "successes",
  "trials"}; the estimate is NaN when no sample is in the conditioning event.
  """
  a = _binary("a", a)
  n = a.shape[0]
  y, y_do1, y_do0 = (_binary(name, v, n) for name, v in
                     (("y", y), ("y_do1", y_do1), ("y_do0", y_do0)))
  events = {"pn": (a & y, ~y_do0), "ps": (~a & ~y, y_do1),
            "pns": (np.ones(n, bool), y_do1 & ~y_do0)}
  out: dict = {}
  for key, (given, success) in events.items():
    trials, successes = int(given.sum()), int((given & success).sum())
    lo, hi = wilson_interval(successes, trials, confidence)
    out[key] = {"estimate": successes / trials if trials else float("nan"), "ci": [lo, hi],
                "successes": successes, "trials": trials}
  out["num_samples"] = int(n)
  out["p_attribute"] = float(a.mean()) if n else float("nan")
  out["p_outcome"] = float(y.mean()) if n else float("nan")
  return out


def sample_latents(generator: LatentGenerator, num_samples: int, seed: int = 0,
                   images=None) -> np.ndarray:
  """z from the generator's prior (N(0, I) for the VAE; encoded training images for a
  pretrained generator without a prior), or, given images, z ~ q(z | x) for x drawn
  uniformly from them (the aggregate posterior: the latents the generator decodes into
  realistic images; a pretrained generator's code of x, without noise)."""
  key_pick, key_noise = jax.random.split(jax.random.key(int(seed)))
  if images is None:
    return generator.sample_latents(key_noise, int(num_samples))
  mean, logvar = generator.encode(images)
  pick = np.asarray(jax.random.randint(key_pick, (int(num_samples),), 0, len(mean)))
  if logvar is None:
    return mean[pick].astype(np.float32)
  noise = np.asarray(jax.random.normal(key_noise, (int(num_samples), generator.latent_dim)))
  return (mean[pick] + np.exp(0.5 * logvar[pick]) * noise).astype(np.float32)


def causal_scores(explainer: LatentExplainer, *, num_samples: int | None = None, seed: int = 0,
                  images=None) -> dict:
  """PN, PS and PNS of every attribute (not the outcome) for the classifier's decision.

  num_samples: latents drawn (default: the explainer's `num_samples` setting, 4096).
  Latents z from the generator's prior (or, given `images`, their aggregate posterior:
  see `sample_latents`); A and Y are decided on G(z). Y_{A<-1} is decided on the edit
  G(z + shift(z, +e_A)) where A = 0 and equals Y where A = 1 (consistency: intervening
  to the value a sample already has changes nothing); likewise Y_{A<-0}. Then
  PNS = P(A=1, Y=1) PN + P(A=0, Y=0) PS exactly. Each attribute's entry also holds how
  often the edits reached the requested value where they change it ("do1_reached" over
  A = 0, "do0_reached" over A = 1): an intervention that does not change its attribute
  measures nothing.
  """
  if explainer.num_attributes == 0:
    raise ValueError("causal scores need attributes: fit the explainer with attributes=...")
  if num_samples is None:
    num_samples = int(explainer.config.num_samples)
  if int(num_samples) < 1:
    raise ValueError(f"num_samples must be at least 1, got {num_samples}")
  z = sample_latents(explainer.generator, num_samples, seed, images)
  out = explainer.intervene(z)
  scores = {}
  for k, name in enumerate(explainer.attribute_names):
    a, y = out["a"][:, k], out["y"]
    # Consistency: setting A to the value it already has changes nothing, so Y_{A<-a} = Y
    # where A = a; the edit only stands in for the intervention where it changes A.
    y_do1 = np.where(a, y, out["y_do1"][:, k])
    y_do0 = np.where(a, out["y_do0"][:, k], y)
    s = necessity_sufficiency(a, y, y_do1, y_do0, confidence=float(explainer.config.confidence))
    s["do1_reached"] = float(np.mean(out["a_do1"][~a, k])) if (~a).any() else float("nan")
    s["do0_reached"] = float(np.mean(~out["a_do0"][a, k])) if a.any() else float("nan")
    scores[name] = s
  return scores


def _cell(score: dict) -> str:
  if not score["trials"]:
    return "n/a (0 samples)"
  lo, hi = score["ci"]
  return (f"{score['estimate']:.3f} [{lo:.3f}, {hi:.3f}] "
          f"({score['successes']}/{score['trials']})")


def scores_table(scores: dict) -> str:
  """Markdown: one row per attribute, estimate [interval] (successes/trials) per score."""
  lines = ["| attribute | PN | PS | PNS | edit reached (+1 / -1) |",
           "|---|---|---|---|---|"]
  for name, s in scores.items():
    lines.append(f"| {name} | " + " | ".join(_cell(s[k]) for k in SCORES)
                 + f" | {s['do1_reached']:.2f} / {s['do0_reached']:.2f} |")
  return "\n".join(lines) + "\n"


def save_scores_chart(path: str, scores_by_classifier: dict, title: str | None = None) -> str:
  """Grouped bars, one panel per score, one bar per (attribute, classifier), with the
  Wilson intervals as error bars."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  if not scores_by_classifier:
    raise ValueError("scores_by_classifier is empty")
  classifiers = list(scores_by_classifier)
  attributes = list(next(iter(scores_by_classifier.values())))
  width = 0.8 / len(classifiers)
  x = np.arange(len(attributes))
  fig, axes = plt.subplots(1, len(SCORES), figsize=(4.2 * len(SCORES), 3.4), sharey=True)
  for ax, key in zip(axes, SCORES):
    for i, clf in enumerate(classifiers):
      entries = [scores_by_classifier[clf][a][key] for a in attributes]
      est = np.array([e["estimate"] if e["trials"] else 0.0 for e in entries])
      lo = np.array([e["ci"][0] for e in entries])
      hi = np.array([e["ci"][1] for e in entries])
      err = np.stack([np.clip(est - lo, 0, None), np.clip(hi - est, 0, None)])
      ax.bar(x + (i - (len(classifiers) - 1) / 2) * width, est, width, yerr=err, capsize=3,
             label=clf)
    ax.set_xticks(x)
    ax.set_xticklabels(attributes)
    ax.set_ylim(0, 1.05)
    ax.set_title(SCORE_LABELS[key])
    ax.grid(axis="y", alpha=0.3)
  axes[0].set_ylabel("probability")
  axes[-1].legend(fontsize=8)
  if title:
    fig.suptitle(title, fontsize=10)
  from cfx_jax import report
  return report.save_figure(fig, path)
