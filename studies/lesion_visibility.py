"""What is left of a lesion that the classifier and the oracle still see?

A counterfactual that removes a lesion is scored against the image's exact twin; what
stops a generator short of 1 is whatever remnant neither its classifier nor its
discriminator objects to. This probe renders the remnants a generator can leave, from
the held-out lesion images and their twins, and reports the share that each judge still
calls a lesion:

- a faded lesion, `twin + g (x - twin)`: its sharp edges, at a fraction g of the contrast;
- a smudge, `twin + g blur_s(x - twin)`: the same, blurred (Gaussian, s pixels), which
  is what the generator's counterfactuals leave (docs/counterfactual_truth.md).

It reuses the classifier and oracle of `studies.counterfactual_truth` (trained there
if missing):

  python -m studies.lesion_visibility --workdir runs/counterfactual_truth

Results: studies/results/lesion_visibility.json.
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np

from cfx_jax.data.corruptions import gaussian_blur
from cfx_jax.jobs import classifier_training
from cfx_jax.jobs.datasets import load_split
from cfx_jax.metrics.oracle import load_or_train_oracle
from cfx_jax.configs import common

STRENGTHS = (1.0, 0.6, 0.5, 0.4, 0.3, 0.2)
BLURS = (0.0, 0.5, 0.75, 1.0)


def lesion_classifier(workdir: str):
  """(train, test, <workdir>/lesions, classifier): the lesion task's split and the
  classifier of `studies.counterfactual_truth`, trained there if missing."""
  dataset = common.lesions()
  train, test = load_split(dataset, "train"), load_split(dataset, "test")
  workdir = os.path.abspath(os.path.join(workdir, "lesions"))
  cc = common.experiment(dataset, None).classifier
  cc.progress = False
  clf, _ = classifier_training.load_or_train_classifier(cc, train, test, workdir)
  return train, test, workdir, clf


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--workdir", default="runs/counterfactual_truth")
  p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results",
                                               "lesion_visibility.json"))
  args = p.parse_args()
  train, test, workdir, clf = lesion_classifier(args.workdir)
  oracle = load_or_train_oracle(os.path.join(workdir, "oracle"), train, test)
  judges = {"classifier": clf.predict, "oracle": oracle.predict}

  positive = test["label"] == 1
  x, twin = test["image"][positive], test["twin"][positive]
  lesion = x - twin
  seen = {name: {} for name in judges}
  for sigma in BLURS:
    blurred = gaussian_blur(lesion, sigma) if sigma > 0 else lesion
    for g in STRENGTHS:
      remnant = np.clip(twin + g * blurred, -1.0, 1.0)
      for name, predict in judges.items():
        seen[name][f"blur {sigma} / strength {g}"] = float(np.mean(predict(remnant) == 1))
  for name, predict in judges.items():
    seen[name]["twins (no lesion)"] = float(np.mean(predict(twin) == 1))
  result = {"images": int(positive.sum()), "strengths": STRENGTHS, "blurs": BLURS,
            "share_called_lesion": seen}
  print(json.dumps(result, indent=1))
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(result, f, indent=1)


if __name__ == "__main__":
  main()
