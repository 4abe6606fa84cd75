"""Does a classifier depend on a spurious marker? Causal scores in a generative latent space.

Two CNNs are trained on the attribute images (`cfx_jax.data.attributes`):

  spurious     on data where the corner marker appears exactly when there is a lesion,
               so the marker is a perfect shortcut to the label;
  independent  on data where the marker is an independent coin flip (the same images
               otherwise).

Both are scored on independent test data, then explained by one shared generator (a VAE
and attribute predictors trained on independent data) and a shift predictor per
classifier (`cfx_jax.methods.latent`). The probabilities of necessity and sufficiency of
each attribute for each classifier's decision show which attribute the decision
depends on: the marker for the first, the lesion for the second.
"""

from __future__ import annotations

import logging
import os
import time

import ml_collections
import numpy as np

from cfx_jax import data as data_lib
from cfx_jax.data.attributes import ATTRIBUTES
from cfx_jax.methods.latent import LatentExplainer, causal
from cfx_jax.jobs.classifier_training import load_or_train_classifier
from cfx_jax.engine.logging import is_main_process

logger = logging.getLogger(__name__)

# Classifier name -> marker_correlation of its training data.
CLASSIFIERS = {"spurious": 1.0, "independent": None}
# Latent distributions the scores can be estimated over.
LATENTS = {"prior": "prior N(0, I)",
           "posterior": "aggregate posterior of the test images"}


def load_attribute_split(config: ml_collections.ConfigDict, split: str, num: int,
                         marker_correlation=None) -> dict:
  d = config.data
  return data_lib.materialize(data_lib.load_source(
      "attributes", split, num=int(num), image_size=int(d.image_size),
      channels=int(d.channels), seed=int(d.seed), marker_correlation=marker_correlation))


def classifier_report(classifier, test: dict, reconstructions: np.ndarray | None = None) -> dict:
  """Accuracy on independent test data, split by whether the marker agrees with the label."""
  predicted = classifier.predict(test["image"])
  label, marker = test["label"], test["attributes"][:, ATTRIBUTES.index("marker")]
  agree = marker == label
  out = {"test_accuracy": float(np.mean(predicted == label)),
         "accuracy_marker_agrees": float(np.mean(predicted[agree] == label[agree])),
         "accuracy_marker_disagrees": float(np.mean(predicted[~agree] == label[~agree])),
         "decision_equals_marker": float(np.mean(predicted == marker)),
         "num_test": int(len(label))}
  if reconstructions is not None:
    out["accuracy_on_reconstructions"] = float(
        np.mean(classifier.predict(reconstructions) == label))
  return out


def _train_or_load(config, name: str, train: dict, test: dict, workdir: str):
  return load_or_train_classifier(config.classifier, train, test,
                                  os.path.join(workdir, f"classifier_{name}"))[0]


def run_spurious_marker_study(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Train both classifiers and their explainers, score them; write the report files.

  Writes `causal_scores.md`, `causal_scores.json`, `causal_scores.png` and
  `latent_edits.png` to `workdir` and returns what the JSON holds. Trained models stay in
  `workdir` (classifiers, `latent/generator`, checkpoints), so a rerun reuses them.
  """
  from cfx_jax import report

  start = time.time()
  os.makedirs(workdir, exist_ok=True)
  d = config.data
  test = load_attribute_split(config, "test", d.num_test)
  independent = load_attribute_split(config, "train", d.num_train)
  classifiers, accuracy = {}, {}
  for name, correlation in CLASSIFIERS.items():
    train = (independent if correlation is None
             else load_attribute_split(config, "train", d.num_train, correlation))
    classifiers[name] = _train_or_load(config, name, train, test, workdir)

  latent_dir = os.path.join(workdir, "latent")
  kinds = tuple(config.score_latents)
  unknown = sorted(set(kinds) - set(LATENTS))
  if not kinds or unknown:
    raise ValueError(f"score_latents must name some of {list(LATENTS)}, got {list(kinds)}")
  explainers, edits, flips = {}, {}, {}
  scores: dict = {kind: {} for kind in kinds}
  for name, clf in classifiers.items():
    ex = LatentExplainer.fit(
        clf, independent["image"], seed=int(config.seed), config=config.latent.to_dict(),
        workdir=latent_dir, attributes=independent["attributes"], attribute_names=ATTRIBUTES)
    ex.save(os.path.join(workdir, f"explainer_{name}"))
    explainers[name] = ex
    for kind in kinds:
      scores[kind][name] = causal.causal_scores(
          ex, num_samples=int(config.num_samples), seed=int(config.score_seed),
          images=test["image"] if kind == "posterior" else None)
      logger.info("causal study: %s, latents from the %s\n%s", name, LATENTS[kind],
                  causal.scores_table(scores[kind][name]))
    edits[name] = ex.metrics["edits"]
    out = ex.explain(test["image"][:int(config.num_explained)])
    flips[name] = {"num_images": int(len(out)), "flip_rate": float(np.mean(out.flipped))}

  generator = next(iter(explainers.values())).generator
  recon = generator.decode(generator.encode_mean(test["image"]))
  for name, clf in classifiers.items():
    accuracy[name] = classifier_report(clf, test, recon)
  result = {
      "attributes": list(ATTRIBUTES),
      "classifiers": {name: {"marker_correlation": c} for name, c in CLASSIFIERS.items()},
      "accuracy": accuracy,
      "scores": scores,
      "edits": edits,
      "counterfactual_flips": flips,
      "generator": generator.metrics,
      "settings": {"num_samples": int(config.num_samples), "score_seed": int(config.score_seed),
                   "score_latents": list(kinds),
                   "confidence": float(config.latent.confidence),
                   "data": config.data.to_dict(), "latent": config.latent.to_dict(),
                   "classifier": config.classifier.to_dict()},
      "wall_time_s": round(time.time() - start, 1),
  }
  if is_main_process():
    report.save_json(os.path.join(workdir, "causal_scores.json"), result)
    with open(os.path.join(workdir, "causal_scores.md"), "w") as f:
      f.write(markdown_report(result))
    for i, kind in enumerate(kinds):
      causal.save_scores_chart(
          os.path.join(workdir, "causal_scores.png" if i == 0 else f"causal_scores_{kind}.png"),
          scores[kind], title=f"latents from the {LATENTS[kind]}")
    save_edit_figure(os.path.join(workdir, "latent_edits.png"), explainers,
                     test["image"][:int(config.figure_examples)])
  logger.info("causal study: done in %.0f s; reports in %s", result["wall_time_s"], workdir)
  return result


def markdown_report(result: dict) -> str:
  settings = result["settings"]
  lines = ["# Causal scores of attributes for two lesion classifiers", "",
           "Classifier `spurious` was trained where the corner marker appears exactly when "
           "there is a lesion; `independent` where the marker is an independent coin flip "
           "(the images are otherwise the same). One VAE with attribute predictors, trained "
           "on independent data, explains both; a shift predictor per classifier performs "
           "the interventions. Scores are Monte Carlo estimates over "
           f"{settings['num_samples']} latent samples, with "
           f"{settings['confidence']:.0%} Wilson intervals and (successes/trials). 'edit "
           "reached' is how often the edit A<-1 (over samples with A = 0) / A<-0 (over A = 1) "
           "gave the attribute predictor the requested value.", "",
           "## Accuracy on independent test data", "",
           "| classifier | accuracy | marker agrees | marker disagrees | decision = marker "
           "| on VAE reconstructions | counterfactual flip rate |",
           "|---|---|---|---|---|---|---|"]
  for name, acc in result["accuracy"].items():
    lines.append(f"| {name} | {acc['test_accuracy']:.3f} | {acc['accuracy_marker_agrees']:.3f} "
                 f"| {acc['accuracy_marker_disagrees']:.3f} | "
                 f"{acc['decision_equals_marker']:.3f} | "
                 f"{acc.get('accuracy_on_reconstructions', float('nan')):.3f} | "
                 f"{result['counterfactual_flips'][name]['flip_rate']:.3f} |")
  for kind, by_classifier in result["scores"].items():
    for name, scores in by_classifier.items():
      lines += ["", f"## Classifier `{name}`, latents from the {LATENTS[kind]}", "",
                causal.scores_table(scores).rstrip()]
  lines += ["", f"Wall time: {result['wall_time_s']:.0f} s.", ""]
  return "\n".join(lines)


def _show(ax, image, title=None):
  img = np.clip((np.asarray(image, np.float32) + 1.0) / 2.0, 0.0, 1.0)
  ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray" if img.shape[-1] == 1
            else None, vmin=0.0, vmax=1.0, interpolation="nearest")
  ax.set_xticks([])
  ax.set_yticks([])
  if title:
    ax.set_title(title, fontsize=7)


def save_edit_figure(path: str, explainers: dict, images: np.ndarray) -> str:
  """A row per attribute, then one per classifier's outcome; per example image:
  input | reconstruction | attribute removed | added (outcome: class 0 | class 1)."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  first = next(iter(explainers.values()))
  gen = first.generator
  z = gen.encode_mean(images)
  recon = gen.decode(z)
  k = first.num_attributes
  rows = [(name, first, j) for j, name in enumerate(first.attribute_names)]
  rows += [(f"outcome ({name})", ex, k) for name, ex in explainers.items()]
  cols = ("input", "reconstruction", "removed", "added")
  n = len(images)
  fig, axes = plt.subplots(len(rows), 4 * n, figsize=(1.3 * 4 * n, 1.45 * len(rows)),
                           squeeze=False)
  for r, (label, ex, j) in enumerate(rows):
    for sign, col in ((-1.0, 2), (1.0, 3)):
      t = np.zeros((n, k + 1), np.float32)
      t[:, j] = sign
      edited = ex.edit(z, t)
      for i in range(n):
        _show(axes[r, 4 * i + col], edited[i], cols[col] if r == 0 else None)
    for i in range(n):
      _show(axes[r, 4 * i], images[i], cols[0] if r == 0 else None)
      _show(axes[r, 4 * i + 1], recon[i], cols[1] if r == 0 else None)
    axes[r, 0].set_ylabel(label, fontsize=7)
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path
