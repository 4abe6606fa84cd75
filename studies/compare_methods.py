"""Every generative explainer, and the papers' exact form, against one classifier.

    python -m studies.compare_methods --workdir runs/compare --steps 800

Trains (or reuses) the lesion-set classifier of `configs/lesions_syce.py` in WORKDIR,
fits each variant for the same number of steps, scores it on the same held-out images
and writes `studies/results/methods_lesions_<device>.json` plus a markdown table.
"""

from __future__ import annotations

import argparse
import os
import shutil
import time

import jax

from cfx_jax import report
from cfx_jax.jobs import classifier_training
from cfx_jax.jobs.datasets import load_split
from cfx_jax.jobs.evaluate import evaluate_explainer
from cfx_jax.methods.conditional.config import explainer_config, paper_form
from cfx_jax.methods.conditional.train import train_explainer
from cfx_jax.configs import lesions_syce

VARIANTS = {
    "syce": lambda: explainer_config("syce"),
    "cyce": lambda: explainer_config("cyce"),
    "sagen": lambda: explainer_config("sagen"),
    "syce (paper form)": lambda: paper_form(explainer_config("syce")),
    "cyce (paper form)": lambda: paper_form(explainer_config("cyce")),
}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--steps", type=int, default=800)
  parser.add_argument("--variants", nargs="*", default=list(VARIANTS))
  parser.add_argument("--out", default=None, help="JSON path (default: results folder)")
  args = parser.parse_args()

  config = lesions_syce.get_config()
  train, test = load_split(config.dataset, "train"), load_split(config.dataset, "test")
  clf, _ = classifier_training.load_or_train_classifier(config.classifier, train, test,
                                                        args.workdir)
  accuracy = float((clf.predict(test["image"]) == test["label"]).mean())

  rows = {}
  for name in args.variants:
    c = VARIANTS[name]()
    c.steps = args.steps
    c.checkpoint_every = args.steps
    workdir = os.path.join(args.workdir, name.replace(" ", "_").replace("(", "").replace(")", ""))
    shutil.rmtree(workdir, ignore_errors=True)
    t0 = time.time()
    explainer = train_explainer(clf, train["image"], c, workdir)
    seconds = time.time() - t0
    metrics, _ = evaluate_explainer(explainer, test, num_images=config.eval.num_images)
    rows[name] = {**metrics, "train_seconds": seconds, "seconds_per_step": seconds / args.steps,
                  "map_reference": explainer.map_reference}
    print(name, rows[name], flush=True)

  device = jax.devices()[0].device_kind.replace(" ", "_").lower()
  out = args.out or os.path.join(os.path.dirname(__file__), "results",
                                 f"methods_lesions_{device}.json")
  report.save_json(out, {"device": jax.devices()[0].device_kind, "jax": jax.__version__,
                         "steps": args.steps, "classifier_test_accuracy": accuracy,
                         "results": rows})
  print(table(rows))


def table(rows: dict) -> str:
  lines = ["| variant | flip rate | preservation | L1 proximity | pixel AUROC | IoU@95 | pointing game |",
           "|---|---|---|---|---|---|---|"]
  for name, r in rows.items():
    cf, loc = r["counterfactual"], r.get("localization", {})
    lines.append(f"| {name} | {cf['flip_rate']:.3f} | {cf.get('preservation_rate', float('nan')):.3f} "
                 f"| {cf['proximity_l1']:.4f} | {loc.get('pixel_auroc', float('nan')):.3f} "
                 f"| {loc.get('iou_95', float('nan')):.3f} | {loc.get('pointing_game', float('nan')):.3f} |")
  return "\n".join(lines)


if __name__ == "__main__":
  main()
