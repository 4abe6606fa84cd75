"""DISC's two further claims, on the lesion set: its counterfactuals teach the classifier's
decision boundary, and they hold up when the query is corrupted. SyCE beside it.

    python -m studies.disc_claims --workdir runs/counterfactual_truth/lesions
    python -m studies.disc_claims --smoke --workdir /tmp/x --out /tmp/x/claims.json

Trains (or loads from WORKDIR) the classifier and DISC's auxiliary model as
`studies/disc_ablation.py` does, the oracle of the counterfactual-truth scores, and a
SyCE explainer (`--syce-steps`, saved to WORKDIR/syce/explainer). DISC runs in its
paper's form (`--disc-form`).

Boundary learning. The first K training images are explained by each method. For each k
in `--ks`, a surrogate CNN (small, trained from scratch) learns the explained classifier's
decisions from k images and their k counterfactuals (each labelled with the classifier's
class for it), or from 2k real training images labelled the same way: the same number of
images. Reported: the surrogate's agreement with the classifier on the test set, overall
and on the tenth of test images nearest the classifier's boundary (smallest margin between
its two largest logits); mean over `--seeds` surrogate seeds.

Corruptions. The first N test images under each corruption of `cfx_jax.data.corruptions`
at severities 1-3 (and clean): the classifier's accuracy on them, and per method the flip
rate, the oracle's agreement with the target, the pixel AUROC of the maps against the
lesion masks, and the median twin removal over the lesion images against their
lesion-free twin under the same corruption (whatever the target: where the classifier no
longer sees the lesion the target is "lesion", and removal goes negative).

Writes the JSON (default studies/results/disc_claims_lesions.json) and two figures
beside it: the agreement curves and one lesion image's counterfactuals under each
corruption.
"""

from __future__ import annotations

import argparse
import os
import time
import types
import warnings

import numpy as np

import cfx_jax
from studies import disc_ablation
from benchmarks.step_time import environment
from cfx_jax import report
from cfx_jax.data.corruptions import CORRUPTIONS, SEVERITIES, corrupt
from cfx_jax.jobs import classifier_training
from cfx_jax.methods.disc.explainer import PAPER_FORM, DiscExplainer, disc_config
from cfx_jax.metrics import pixel_auroc, twin_removal
from cfx_jax.metrics.oracle import load_or_train_oracle

RESULTS = os.path.join(os.path.dirname(__file__), "results")
DEFAULT_OUT = os.path.join(RESULTS, "disc_claims_lesions.json")
NEAR_SHARE = 0.1  # the tenth of test images nearest the boundary


def syce_explainer(clf, train, workdir, steps, smoke):
  """Load WORKDIR/syce/explainer, else fit (resuming from its checkpoints) and save it."""
  fit_dir = os.path.join(workdir, "syce")
  path = os.path.join(fit_dir, "explainer")
  if os.path.exists(os.path.join(path, "explainer.json")):
    return cfx_jax.load_explainer(path, clf), f"loaded from {os.path.abspath(path)}"
  config = cfx_jax.explainer_config("syce")
  config.progress = False
  if smoke:
    config.batch_size = 16
  explainer = cfx_jax.fit_explainer(clf, train["image"], method="syce", steps=steps,
                                    config=config, workdir=fit_dir)
  return explainer, f"trained for {steps} steps"


def margins(logits: np.ndarray) -> np.ndarray:
  """Distance of each image from the classifier's boundary: top-1 minus top-2 logit."""
  top = np.sort(logits, axis=-1)
  return top[:, -1] - top[:, -2]


def train_surrogate(images, labels, test, num_classes, seed, steps, smoke):
  """A small CNN fitted to (images, labels), with the explained classifier's classes even
  where a small set shows only one of them."""
  c = classifier_training.classifier_config()
  c.features = (8, 16) if smoke else (16, 32)
  c.steps, c.seed, c.progress, c.num_devices = steps, seed, False, 1
  c.batch_size = min(c.batch_size, len(images))
  c.log_every, c.checkpoint_every = steps, steps
  surrogate, _ = classifier_training.train_classifier(
      c, {"image": images, "label": labels}, test, num_classes=num_classes)
  return surrogate


def boundary_study(clf, explainers, train, test, args) -> dict:
  ks = sorted(args.ks)
  labels = clf.predict(train["image"][:2 * ks[-1]])
  queries = train["image"][:ks[-1]]
  pairs = {}
  for name, explainer in explainers.items():
    t0 = time.perf_counter()
    out = explainer.explain(queries)
    pairs[name] = (np.asarray(out.counterfactual), np.argmax(out.cf_probs, axis=-1))
    print(f"boundary: {name} explained {len(queries)} images in "
          f"{time.perf_counter() - t0:.0f} s, flip {np.mean(out.flipped):.3f}", flush=True)
  test_logits = clf.logits(test["image"])
  decided = np.argmax(test_logits, axis=-1)
  decided_test = {"image": test["image"], "label": decided}
  near = np.argsort(margins(test_logits))[:max(1, int(NEAR_SHARE * len(decided)))]
  rows = {}
  for k in ks:
    sets = {"real": (train["image"][:2 * k], labels[:2 * k])}
    for name, (cf, cf_labels) in pairs.items():
      sets[name] = (np.concatenate([queries[:k], cf[:k]]),
                    np.concatenate([labels[:k], cf_labels[:k]]))
    for name, (images, set_labels) in sets.items():
      overall, at_boundary = [], []
      for seed in range(args.seeds):
        surrogate = train_surrogate(images, set_labels, decided_test, clf.num_classes, seed,
                                    args.surrogate_steps, args.smoke)
        agrees = surrogate.predict(test["image"]) == decided
        overall.append(float(agrees.mean()))
        at_boundary.append(float(agrees[near].mean()))
      rows[f"{name}/k={k}"] = {
          "source": name, "k": k, "images": len(images),
          "agreement": float(np.mean(overall)), "agreement_near_boundary":
          float(np.mean(at_boundary)), "agreement_per_seed": overall,
          "agreement_near_boundary_per_seed": at_boundary}
      print(f"boundary k={k} {name}: agreement {np.mean(overall):.3f}, near boundary "
            f"{np.mean(at_boundary):.3f}", flush=True)
  return {"ks": ks, "near_boundary_images": int(len(near)), "rows": rows}


def corruption_study(clf, oracle, explainers, test, args):
  n = args.images
  x, twins, masks, labels = (test[k][:n] for k in ("image", "twin", "mask", "label"))
  has = masks.reshape(n, -1).max(axis=1) > 0
  first = int(np.flatnonzero(has)[0])  # the lesion image the figure shows
  conditions = [("clean", 0)] + [(kind, s) for kind in CORRUPTIONS for s in (1, 2, 3)]
  rows, shown = {}, {"query": [], **{name: [] for name in explainers}}
  for kind, severity in conditions:
    xc, tc = ((x, twins) if kind == "clean" else
              (corrupt(x, kind, severity, seed=1), corrupt(twins, kind, severity, seed=1)))
    row = {"corruption": kind, "severity": severity,
           "level": None if kind == "clean" else SEVERITIES[kind][severity - 1],
           "classifier_accuracy": float(np.mean(clf.predict(xc) == labels))}
    for name, explainer in explainers.items():
      t0 = time.perf_counter()
      out = explainer.explain(xc)
      cf = np.asarray(out.counterfactual)
      removal = twin_removal(xc[has], tc[has], cf[has], masks[has])
      row[name] = {
          "flip_rate": float(np.mean(out.flipped)),
          "oracle_agreement": float(np.mean(oracle.predict(cf) == np.asarray(out.target))),
          "pixel_auroc": float(np.mean(pixel_auroc(out.maps[has], masks[has]))),
          "twin_removal_median": float(np.nanmedian(removal)),
          "seconds": round(time.perf_counter() - t0, 1)}
      if kind == "clean" or severity == 3:
        shown[name].append(cf[first])
    if kind == "clean" or severity == 3:
      shown["query"].append(xc[first])
    rows[f"{kind}/{severity}"] = row
    print(f"corruption {kind} {severity}: " + ", ".join(
        f"{name} flip {row[name]['flip_rate']:.2f} oracle {row[name]['oracle_agreement']:.2f} "
        f"auroc {row[name]['pixel_auroc']:.3f}" for name in explainers), flush=True)
  figure = {"images": np.stack(shown.pop("query")),
            "counterfactuals": {name: np.stack(v) for name, v in shown.items()},
            "mask": masks[first]}
  return {"images": n, "lesion_images": int(has.sum()), "rows": rows}, figure


def plot_boundary(path, boundary) -> None:
  import matplotlib.pyplot as plt  # after cfx_jax.report has chosen the backend

  fig, axes = plt.subplots(1, 2, figsize=(8, 3.2), sharey=True)
  sources = sorted({row["source"] for row in boundary["rows"].values()})
  for ax, key, title in zip(axes, ("agreement", "agreement_near_boundary"),
                            ("all test images", "tenth nearest the boundary")):
    for source in sources:
      ks = boundary["ks"]
      ax.plot(ks, [boundary["rows"][f"{source}/k={k}"][key] for k in ks], marker="o",
              label="2k real images" if source == "real" else f"k images + {source} cfs")
    ax.set_xscale("log", base=2)
    ax.set_xticks(boundary["ks"], [str(k) for k in boundary["ks"]])
    ax.set_xlabel("k")
    ax.set_title(title, fontsize=9)
  axes[0].set_ylabel("surrogate agrees with the classifier")
  axes[1].legend(fontsize=8)
  report.save_figure(fig, path)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", required=True,
                      help="load classifier/, auxiliary/, oracle/ and syce/ from here, or "
                           "train and save them")
  parser.add_argument("--ks", type=lambda s: [int(v) for v in s.split(",")],
                      default=[32, 128, 512])
  parser.add_argument("--seeds", type=int, default=2, help="surrogate seeds per set")
  parser.add_argument("--surrogate-steps", type=int, default=300)
  parser.add_argument("--images", type=int, default=32, help="test images per corruption")
  parser.add_argument("--classifier-steps", type=int, default=800)
  parser.add_argument("--auxiliary-steps", type=int, default=200)
  parser.add_argument("--syce-steps", type=int, default=500)
  parser.add_argument("--disc-form", choices=["paper", "defaults"], default="paper",
                      help="DISC with its paper's weights (the BatchNorm term; the committed "
                           "run) or with the library's defaults")
  parser.add_argument("--smoke", action="store_true",
                      help="16x16 images, tiny models, a few steps (tests)")
  parser.add_argument("--out", default=DEFAULT_OUT)
  args = parser.parse_args(argv)
  disc_overrides = {**(PAPER_FORM if args.disc_form == "paper" else {}),
                    "warn_failures": False, "progress": False}
  oracle_settings = {}
  if args.smoke:
    args.ks, args.seeds, args.surrogate_steps, args.images = [4, 8], 1, 5, 8
    args.classifier_steps, args.auxiliary_steps, args.syce_steps = 10, 10, 4
    disc_overrides.update(steps=6, fit_steps=4)
    oracle_settings = {"steps": 10}

  ablation_args = types.SimpleNamespace(
      smoke=args.smoke, workdir=args.workdir, classifier_steps=args.classifier_steps,
      auxiliary_steps=args.auxiliary_steps)
  train, test = disc_ablation.load_data(ablation_args)
  t0 = time.perf_counter()
  clf, aux, sources = disc_ablation.classifier_and_auxiliary(ablation_args, train, test)
  oracle = load_or_train_oracle(os.path.join(args.workdir, "oracle"), train, test,
                                progress=False, **oracle_settings)
  syce, sources["syce"] = syce_explainer(clf, train, args.workdir, args.syce_steps, args.smoke)
  setup_s = time.perf_counter() - t0
  explainers = {"DISC": DiscExplainer(clf, disc_config(**disc_overrides), auxiliary=aux),
                "SyCE": syce}

  boundary = boundary_study(clf, explainers, train, test, args)
  corruptions, figure = corruption_study(clf, oracle, explainers, test, args)
  result = {
      **environment(), "smoke": args.smoke,
      "image_shape": list(train["image"].shape[1:]),
      "classifier_test_accuracy": float(np.mean(clf.predict(test["image"]) == test["label"])),
      "oracle_test_accuracy": oracle.test_accuracy, "setup_seconds": round(setup_s, 1),
      "sources": sources, "surrogate": {"features": [8, 16] if args.smoke else [16, 32],
                                        "steps": args.surrogate_steps, "seeds": args.seeds},
      "disc_config": disc_config(**disc_overrides).to_dict(),
      "severities": {k: list(v) for k, v in SEVERITIES.items()},
      "boundary": boundary, "corruptions": corruptions}
  report.save_json(args.out, result)
  stem = os.path.splitext(args.out)[0]
  plot_boundary(stem + "_boundary.png", boundary)
  images = figure["images"]
  report.save_method_grid(
      stem + "_corruptions.png", images, figure["counterfactuals"],
      np.repeat(figure["mask"][None], len(images), axis=0), num_rows=len(images),
      panels="images",
      row_labels=["clean"] + [f"{kind} {SEVERITIES[kind][2]}" for kind in CORRUPTIONS])
  print(f"wrote {args.out}")
  return result


if __name__ == "__main__":
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", UserWarning)
    main()
