"""DISC ablation on the lesion set: the paper's BatchNorm term, total variation, manifold.

    python -m studies.disc_ablation --workdir runs/disc_ablation             # 64 images
    python -m studies.disc_ablation --workdir runs/disc_ablation --images 32 --classifier-steps 800
    python -m studies.disc_ablation --workdir runs/disc_ablation --images 64 --skip 32 \
        --classifier-steps 800 --variants disc paper --out studies/results/disc_ablation_heldout_cpu.json
    python -m studies.disc_ablation --smoke --workdir /tmp/x                # tiny

Trains (or loads from WORKDIR/classifier and WORKDIR/auxiliary) the lesion classifier of
`configs/lesions_classifier.py` (with `--classifier-steps` steps) and the auxiliary RBF
model, explains N test images (after the first `--skip`) with each DISC variant, and writes a JSON with,
per variant: flip rate, mean L1 proximity |x' - x|, the auxiliary model's uncertainty on
the counterfactuals, and the pixel AUROC of the maps against the lesion masks (mean over
the images with a lesion; lesion-free images have no mask to score).
"""

from __future__ import annotations

import argparse
import os
import time
import warnings

import numpy as np

from benchmarks.step_time import environment
from cfx_jax import report
from cfx_jax.data import make_lesions
from cfx_jax.methods.disc import auxiliary as aux_lib
from cfx_jax.methods.disc.explainer import PAPER_FORM, DiscExplainer, disc_config
from cfx_jax.metrics import pixel_auroc
from cfx_jax.jobs import classifier_training

VARIANTS = {
    "disc": {},                                # the defaults: no BatchNorm term, TV 0.03
    "paper": dict(PAPER_FORM),                 # deep inversion's weights: BN 0.01, TV 1e-4
    "paper_no_bn": {**PAPER_FORM, "bn": 0.0},  # the paper's faint TV, without the BN term
    "no_manifold": {"manifold": 0.0},
    "tv_0.01": {"tv": 0.01},
    "tv_0.1": {"tv": 0.1},
    "proximity_10": {"proximity": 10.0},
}
DEFAULT_OUT = os.path.join(os.path.dirname(__file__), "results", "disc_ablation_cpu.json")


def load_data(args):
  if args.smoke:
    return (make_lesions(256, image_size=16, seed=0), make_lesions(64, image_size=16, seed=1, twins=True))
  from cfx_jax.jobs.datasets import load_split
  from cfx_jax.configs import lesions_classifier
  config = lesions_classifier.get_config()
  return load_split(config.dataset, "train"), load_split(config.dataset, "test")


def classifier_and_auxiliary(args, train, test):
  """Load from the workdir when saved there, else train (and save when a workdir is given)."""
  clf_dir = os.path.join(args.workdir, "classifier") if args.workdir else None
  sources = {}
  if clf_dir and os.path.exists(os.path.join(clf_dir, "classifier.json")):
    clf = classifier_training.load_classifier(clf_dir)
    sources["classifier"] = f"loaded from {os.path.abspath(clf_dir)}"
  else:
    from cfx_jax.configs import lesions_classifier
    c = lesions_classifier.get_config().classifier
    c.steps, c.progress, c.num_devices = args.classifier_steps, False, 1
    if args.smoke:
      c.features, c.batch_size, c.log_every = (8, 16), 32, args.classifier_steps
    clf, _ = classifier_training.train_classifier(c, train, test, args.workdir)
    sources["classifier"] = f"trained for {args.classifier_steps} steps"
  aux_dir = os.path.join(args.workdir, "auxiliary") if args.workdir else None
  if aux_dir and os.path.exists(os.path.join(aux_dir, aux_lib.META_FILE)):
    aux = aux_lib.load_auxiliary(aux_dir)
    sources["auxiliary"] = f"loaded from {os.path.abspath(aux_dir)}"
  else:
    overrides = {"steps": args.auxiliary_steps}
    if args.smoke:
      overrides.update(features=(8, 16), batch_size=32)
    aux, _ = aux_lib.train_auxiliary(aux_lib.auxiliary_config(**overrides), train, test,
                                     args.workdir)
    sources["auxiliary"] = f"trained for {args.auxiliary_steps} steps"
  return clf, aux, sources


def score(out, x, masks, aux) -> dict:
  l1 = np.abs(out.counterfactual - x).mean(axis=(1, 2, 3))
  has_mask = masks.reshape(len(masks), -1).max(axis=1) > 0
  auroc = (np.asarray(pixel_auroc(out.maps[has_mask], masks[has_mask]))
           if has_mask.any() else np.array([np.nan]))
  flipped = out.flipped
  return {"flip_rate": float(flipped.mean()), "l1_proximity": float(l1.mean()),
          "l1_proximity_flipped": float(l1[flipped].mean()) if flipped.any() else None,
          "aux_uncertainty": float(aux.uncertainty(out.counterfactual).mean()),
          "pixel_auroc": float(np.nanmean(auroc)), "auroc_images": int(has_mask.sum()),
          "target_confidence": float(out.cf_probs[np.arange(len(x)), out.target].mean())}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", default=None,
                      help="load classifier/ and auxiliary/ from here, or train and save them")
  parser.add_argument("--images", type=int, default=64)
  parser.add_argument("--skip", type=int, default=0,
                      help="start after this many test images (a held-out check of a "
                           "setting chosen on the first ones)")
  parser.add_argument("--steps", type=int, default=None, help="inversion steps (default: config)")
  parser.add_argument("--fit-steps", type=int, default=None, help="fit steps (default: config)")
  parser.add_argument("--parameterisation", default="inr", choices=["inr", "dip"])
  parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
  parser.add_argument("--classifier-steps", type=int, default=400)
  parser.add_argument("--auxiliary-steps", type=int, default=200)
  parser.add_argument("--smoke", action="store_true",
                      help="16x16 images, tiny models, 8 images, a few steps")
  parser.add_argument("--out", default=DEFAULT_OUT)
  args = parser.parse_args(argv)
  if args.smoke:
    args.images, args.classifier_steps, args.auxiliary_steps = min(args.images, 8), 10, 10
    args.steps, args.fit_steps = args.steps or 6, args.fit_steps or 4

  train, test = load_data(args)
  t0 = time.perf_counter()
  clf, aux, sources = classifier_and_auxiliary(args, train, test)
  setup_s = time.perf_counter() - t0
  chosen = slice(args.skip, args.skip + args.images)
  x, masks = test["image"][chosen], test["mask"][chosen]
  overrides = {"parameterisation": args.parameterisation}
  if args.steps:
    overrides["steps"] = args.steps
  if args.fit_steps is not None:
    overrides["fit_steps"] = args.fit_steps
  rows = {}
  for name in args.variants:
    cfg = disc_config(**{**overrides, **VARIANTS[name], "warn_failures": False})
    explainer = DiscExplainer(clf, cfg, auxiliary=aux)
    t0 = time.perf_counter()
    out = explainer.explain(x)
    rows[name] = {**score(out, x, masks, aux), "seconds": time.perf_counter() - t0,
                  "overrides": VARIANTS[name]}
    print(name, {k: round(v, 4) if isinstance(v, float) else v for k, v in rows[name].items()},
          flush=True)
  cfg = disc_config(**overrides)
  result = {
      **environment(), "smoke": args.smoke,
      "images": int(len(x)), "skipped": args.skip, "image_shape": list(x.shape[1:]),
      "classifier_test_accuracy": float(np.mean(clf.predict(test["image"]) == test["label"])),
      "auxiliary_test_accuracy": float(np.mean(aux.predict(test["image"]) == test["label"])),
      "aux_uncertainty_queries": float(aux.uncertainty(x).mean()),
      "setup_seconds": setup_s, "sources": sources,
      "config": cfg.to_dict(),
      "variants": rows,
  }
  report.save_json(args.out, result)
  print(f"wrote {args.out}")
  return result


if __name__ == "__main__":
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", UserWarning)
    main()
