"""What makes a trained method's counterfactuals keep the image? Variants of one method
side by side on the lesion set.

    python -m studies.ablation --method cae --workdir runs/counterfactual_truth/lesions
    python -m studies.ablation --method latent --variants leaderboard,spatial

Loads (or trains) the classifier and the oracle of the counterfactual-truth study from
WORKDIR, fits the method once per variant against that classifier, explains the first
`--images` test images and scores what a person checks: flip rate, the oracle's
agreement, twin removal and change outside the lesion, pixel AUROC of the maps, and the
generative model's reconstruction error. Results are merged by variant into
studies/results/<method>_ablation_lesions.json, with one figure of every variant's
counterfactuals beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

import cfx_jax
from cfx_jax import report
from cfx_jax.jobs import classifier_training
from cfx_jax.jobs.datasets import load_split
from cfx_jax.methods.cae.explainer import PATH_SETTINGS
from cfx_jax.metrics import localization_report, truth_report
from cfx_jax.metrics.oracle import load_or_train_oracle
from cfx_jax.configs import common

RESULTS = os.path.join(os.path.dirname(__file__), "results")

# Overrides of each method's settings (cfx_jax.methods.cae.explainer.cae_config,
# cfx_jax.methods.latent.config.latent_config), by variant.
VARIANTS = {
    "cae": {
        # Without the skip path (the paper's decoder, the default until it came):
        "steps600": {"steps": 600, "model": {"skip": 0}},   # the leaderboard's steps
        # The same networks, the path as the query plus what moving the class code changes
        # in the decoding.
        "steps600_residual": {"steps": 600, "model": {"skip": 0}, "keep_residual": True},
        "steps1500": {"steps": 1500, "model": {"skip": 0}},  # the default steps
        # A skip path of 4 or 8 channels from the encoder's first, full-resolution
        # features to the decoder's last layer, past every instance norm.
        "skip4": {"steps": 600, "model": {"skip": 4}},
        "skip8": {"steps": 600, "model": {"skip": 8}},
        "skip8_residual": {"steps": 600, "model": {"skip": 8}, "keep_residual": True},
        # The individual code at half the image side instead of a quarter: one stride-2
        # level fewer in the encoder trunk (and the decoder).
        "fine_code": {"steps": 1500, "model": {"features": (16, 32), "skip": 0}},
        "fine_code_wide": {"steps": 1500, "model": {"features": (16, 32), "skip": 0,
                                                    "content_channels": 64}},
    },
    "latent": {
        "leaderboard": {"vae_steps": 3000, "shift_steps": 1000},   # a latent vector of 16
        # A latent grid of 8 channels at a quarter of the image side (8 x 8 x 8), edited
        # by a convolutional shift; trained on encoded images only (a grid's N(0, I)
        # prior draws are no lesion images).
        "spatial": {"vae_steps": 3000, "shift_steps": 1000, "spatial_latent": True,
                    "latent_dim": 8, "vae_features": (32, 64), "shift_hidden": (64, 64),
                    "prior_fraction": 0.0},
        # The same, with the shift's size summed over grid positions (a group lasso).
        "spatial_local": {"vae_steps": 3000, "shift_steps": 1000, "spatial_latent": True,
                          "latent_dim": 8, "vae_features": (32, 64), "shift_hidden": (64, 64),
                          "prior_fraction": 0.0, "shift_local": True},
    },
}
DEFAULT_VARIANTS = {"cae": "steps600,steps600_residual,steps1500,fine_code",
                    "latent": "leaderboard,spatial,spatial_local"}


def reconstruct(explainer, x):
  """The method's generative model's reconstruction of x."""
  if hasattr(explainer, "generator"):
    return explainer.generator.decode(explainer.generator.encode_mean(x))
  return explainer.model.reconstruct(x)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--workdir", default="runs/counterfactual_truth/lesions")
  p.add_argument("--method", choices=sorted(VARIANTS), default="cae")
  p.add_argument("--variants", default=None,
                 help="comma-separated names from VARIANTS[method] (default: the measured ones)")
  p.add_argument("--images", type=int, default=512)
  p.add_argument("--classifier_steps", type=int, default=800)
  p.add_argument("--out", default=None,
                 help="default: studies/results/<method>_ablation_lesions.json")
  args = p.parse_args(argv)
  variants = VARIANTS[args.method]
  names = (args.variants or DEFAULT_VARIANTS[args.method]).split(",")
  unknown = sorted(set(names) - set(variants))
  if unknown:
    p.error(f"unknown {args.method} variants {unknown}; choose from {sorted(variants)}")
  args.out = args.out or os.path.join(RESULTS, f"{args.method}_ablation_lesions.json")

  dataset = common.lesions()
  train, test = load_split(dataset, "train"), load_split(dataset, "test")
  cc = common.experiment(dataset, None).classifier
  cc.steps, cc.progress = args.classifier_steps, False
  clf, _ = classifier_training.load_or_train_classifier(cc, train, test, args.workdir)
  oracle = load_or_train_oracle(os.path.join(args.workdir, "oracle"), train, test)
  n = args.images
  x, masks = test["image"][:n], test["mask"][:n]
  has = masks.reshape(n, -1).max(axis=1) > 0

  header = {"classifier_accuracy": float(np.mean(clf.predict(test["image"]) == test["label"])),
            "oracle_accuracy": oracle.test_accuracy, "num_images": n}
  # Each variant's counterfactuals are kept in the workdir, so that the figure shows every
  # variant measured, also those of an earlier (or a concurrent) run.
  cache = os.path.join(args.workdir, "ablation", args.method)
  os.makedirs(cache, exist_ok=True)
  fits = {}  # variants that differ only in CAE's path settings share one fit
  for name in names:
    t0 = time.perf_counter()
    path = {k: v for k, v in variants[name].items() if k in PATH_SETTINGS}
    trained = json.dumps({k: v for k, v in variants[name].items() if k not in path},
                         sort_keys=True)
    if args.method == "cae" and trained in fits:
      explainer = fits[trained].with_path_settings(**path)
    else:
      explainer = cfx_jax.fit_explainer(clf, train["image"], method=args.method,
                                        config={**variants[name], "progress": False,
                                                "warn_failures": False})
      fits[trained] = explainer
    fit_s = time.perf_counter() - t0
    out = explainer.explain(x)
    recon = reconstruct(explainer, x)
    row = {"overrides": variants[name], "fit_seconds": round(fit_s, 1),
           "flip_rate": float(np.mean(out.flipped)),
           "mean_change": float(np.mean(np.abs(out.counterfactual - x))),
           "reconstruction_l1": float(np.mean(np.abs(recon - x))),
           "pixel_auroc": localization_report(out.maps[has], masks[has])["pixel_auroc"],
           **truth_report(test, out, oracle)}
    np.save(os.path.join(cache, f"{name}.npy"), np.asarray(out.counterfactual))
    print(json.dumps({name: {k: v for k, v in row.items() if not isinstance(v, dict)}}),
          flush=True)
    # Read again just before writing: another run may have added its variants meanwhile.
    results = json.load(open(args.out)) if os.path.exists(args.out) else {"variants": {}}
    results.update(header)
    results["variants"][name] = row
    report.save_json(args.out, results)
  shown = {k: np.load(os.path.join(cache, f"{k}.npy")) for k in results["variants"]
           if os.path.exists(os.path.join(cache, f"{k}.npy"))}
  rows = np.flatnonzero(has)[:6]
  report.save_method_grid(os.path.splitext(args.out)[0] + ".png", x[rows],
                          {k: v[rows] for k, v in shown.items() if len(v) == n}, masks[rows],
                          num_rows=len(rows), panels="images")
  return results


if __name__ == "__main__":
  main()
