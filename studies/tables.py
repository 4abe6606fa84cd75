"""Markdown tables of the committed study results, for the docs pages (docs/).

    python -m studies.tables
"""

from __future__ import annotations

import glob
import json
import os

RESULTS = os.path.join(os.path.dirname(__file__), "results")


def _load(pattern):
  for path in sorted(glob.glob(os.path.join(RESULTS, pattern))):
    with open(path) as f:
      yield os.path.relpath(path, RESULTS), json.load(f)


def counterfactual_truth() -> str:
  """studies/counterfactual_truth.py: each variant's truth scores, one row each."""
  lines = []
  for name, r in _load("counterfactual_truth_*.json"):
    directions = sorted({d for v in r["variants"].values()
                         for d in v["oracle_agreement_by_direction"]})
    lines += [f"`{name}` ({r['task']}; classifier accuracy {r['classifier_accuracy']:.3f}, "
              f"oracle accuracy {r['oracle_accuracy']:.3f}; {r['num_images']} test images)",
              "",
              "| variant | steps | flip | twin removal (median) | "
              + " | ".join(f"oracle agrees {d}" for d in directions)
              + " | change outside | pixel AUROC | FID (oracle) |",
              "|---|---|---|---|" + "---|" * len(directions) + "---|---|---|"]
    for variant, v in r["variants"].items():
      agree = v["oracle_agreement_by_direction"]
      cells = [f"{agree[d]:.3f}" if d in agree else "—" for d in directions]
      removal = v.get("twin_removal_median")
      lines.append(
          f"| {variant} | {v['steps']} | {v['flip_rate']:.3f} | "
          + ("—" if removal is None else f"{removal:.3f}") + " | " + " | ".join(cells)
          + f" | {v.get('change_outside_evidence', float('nan')):.4f} | "
          + f"{v.get('pixel_auroc', float('nan')):.3f} | {v['oracle_realism']['fid']:.2f} |")
    lines.append("")
  return "\n".join(lines)


def methods() -> str:
  from studies.compare_methods import table
  return "\n\n".join(f"`{name}` ({r['device']}, {r['steps']} steps)\n\n{table(r['results'])}"
                     for name, r in _load("methods_*.json"))


if __name__ == "__main__":
  for title, text in (("Counterfactual truth", counterfactual_truth()),
                      ("Methods", methods())):
    if text:
      print(f"### {title}\n\n{text}\n")
