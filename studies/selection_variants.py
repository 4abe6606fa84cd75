"""Which candidate settings edit less while the judge still accepts them?

Trains a set of named settings of a config's explainer as one selection would (the same
held-out split and judge, `select.steps` each, no final fit) and prints and saves every
candidate's judge scores per direction. The variants are the candidates' overrides as
JSON, e.g.

    python -m studies.selection_variants --config configs/fashion_sneaker_boot.py \\
        --workdir runs/variants_sneaker_boot \\
        --variants '{"firm": {"weights.flip": 1.0, "weights.flip_margin": 3.0}}'

The classifier and the judge are kept in the workdir and reused by the next run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time

from cfx_jax.cli.inputs import load_config
from cfx_jax.jobs.classifier_training import load_or_train_classifier
from cfx_jax.jobs.datasets import load_split
from cfx_jax.selection import search


def run(config_path: str, workdir: str, variants: dict, steps: int) -> dict:
  c = load_config(config_path, [])
  train, test = load_split(c.dataset, "train"), load_split(c.dataset, "test")
  os.makedirs(workdir, exist_ok=True)
  classifier, metrics = load_or_train_classifier(c.classifier, train, test, workdir)
  base = c.explainer
  base.select.enabled, base.select.final_steps, base.select.report_judge = True, 0, False
  base.select.steps, base.progress = steps, False
  selection = os.path.join(workdir, "selection")
  for name in os.listdir(selection) if os.path.exists(selection) else ():
    if name != "judge":                       # the judge is reused, the candidates not
      shutil.rmtree(os.path.join(selection, name))
  shutil.rmtree(os.path.join(workdir, "explainer"), ignore_errors=True)
  record = search.select(classifier, train["image"], base, workdir=workdir,
                         forms=variants).selection
  scores = {n: c["scores"] for n, c in record["candidates"].items() if c["scores"]}
  for name, s in scores.items():
    for d, v in s["directions"].items():
      print(f"{name:36s} {d} flip {v['flip']:.3f} judge {v['oracle']:.3f} change "
            f"{v['change']:.3f} reach {v['reach']:.2f} fid {v['fid']:.2f}")
  return {"config": config_path, "steps": steps, "classifier": metrics,
          "variants": variants, "scores": scores, "chosen": record["chosen"],
          "seconds": record["seconds"]}


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--config", required=True)
  p.add_argument("--workdir", required=True)
  p.add_argument("--variants", required=True, help="JSON: {name: {key: value}}")
  p.add_argument("--steps", type=int, default=300)
  args = p.parse_args()
  result = run(args.config, args.workdir, json.loads(args.variants), args.steps)
  path = os.path.join(args.workdir, f"variants_{int(time.time())}.json")
  with open(path, "w") as f:
    json.dump(result, f, indent=1, default=str)
  print("wrote", path)


if __name__ == "__main__":
  main()
