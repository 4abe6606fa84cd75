"""Which training choices make generator counterfactuals true? One table, side by side.

Trains (or reuses) the classifier and the oracle of one task once, then fits each
variant of a generator explainer against the same classifier and scores it with what a
person would check: does the counterfactual reach its class (flip), does an independent
oracle agree, is the evidence actually gone (twin removal, lesions only), is the rest
left alone, and do the maps still localise.

  python -m studies.counterfactual_truth --task lesions --variants detach_adv1_lr4,default_mask
  python -m studies.counterfactual_truth --task sneaker_boot --variants detach_adv1_lr4
  python -m studies.counterfactual_truth --task fashion10 --variants ten_default \
      --steps 600 --batch_size 80

Results go to studies/results/counterfactual_truth_<task>.json (merged by variant);
each variant's counterfactuals and figure to <workdir>/<task>/.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import jax
import numpy as np

from cfx_jax import report
from cfx_jax.data import fashion_mnist
from cfx_jax.metrics import localization_report, truth_report
from cfx_jax.metrics.oracle import load_or_train_oracle
from cfx_jax.jobs import classifier_training
from cfx_jax.jobs.datasets import load_split
from cfx_jax.methods.conditional.config import explainer_config
from cfx_jax.methods.conditional.train import train_explainer
from cfx_jax.selection.search import member_config
from cfx_jax.configs import common

# Every variant starts from the defaults before this study (residual generator, direct
# L1 proximity, the papers' loss weights, one learning rate); these restore them.
PREVIOUS_DEFAULTS = {"weights.cycle_grad": 1.0, "weights.adv": 0.25,
                     "disc_lr_scale": 1.0, "weights.tv": 0.0, "weights.flip_partial": 0.0}

# SyCE's default now (the variant detach_adv1_lr4). The lesion quick start adds a
# weakened-edit flip and a total-variation proximity (default_partial5_tv3).
NEW_DEFAULT = {"weights.cycle_grad": 0.0, "weights.adv": 1.0, "disc_lr_scale": 4.0}

# The flip loss of ten-class SyCE before its multi-class defaults raised it (flip weight
# 1.0, margin 3).
TEN_FLIP_BEFORE = {"weights.flip": 0.2, "weights.flip_margin": 0.0}

# Overrides of the previous defaults for each variant.
VARIANTS = {
    "previous_default": {},
    "paper": {"model.residual": False, "weights.l1": 0.0},
    "flip_jitter": {"flip_jitter": 1.0},
    "disc_lr4": {"disc_lr_scale": 4.0},
    "disc_steps2": {"disc_steps": 2},
    "patch": {"model.disc_kind": "patch"},
    "disc_jitter": {"disc_jitter": 1.0},
    "patch_jitter": {"model.disc_kind": "patch", "disc_jitter": 1.0},
    "patch_jitter_lr4": {"model.disc_kind": "patch", "disc_jitter": 1.0,
                         "disc_lr_scale": 4.0},
    "detach": {"weights.cycle_grad": 0.0},
    "nocycle": {"weights.cycle": 0.0, "weights.sym": 0.0, "weights.cycle_cls": 0.0,
                "weights.sym_cls": 0.0},
    "detach_jitter": {"weights.cycle_grad": 0.0, "disc_jitter": 1.0},
    "detach_l0": {"weights.cycle_grad": 0.0, "weights.l1": 0.0, "weights.l0": 1.0},
    "detach_l0_flipjitter": {"weights.cycle_grad": 0.0, "weights.l1": 0.0,
                             "weights.l0": 1.0, "flip_jitter": 1.0},
    "detach_adv1": {"weights.cycle_grad": 0.0, "weights.adv": 1.0},
    "detach_adv1_lr4": {"weights.cycle_grad": 0.0, "weights.adv": 1.0,
                        "disc_lr_scale": 4.0},
    "detach_adv1_cap": {"weights.cycle_grad": 0.0, "weights.adv": 1.0, "weights.l1_cap": 0.1},
    "detach_adv1_lr4_cap": {"weights.cycle_grad": 0.0, "weights.adv": 1.0,
                            "disc_lr_scale": 4.0, "weights.l1_cap": 0.1},
    "mask": {"model.mask": True},
    # On top of the new default:
    "default_mask": {**NEW_DEFAULT, "model.mask": True},
    "default_flipjitter": {**NEW_DEFAULT, "flip_jitter": 1.0},
    "default_patch": {**NEW_DEFAULT, "model.disc_kind": "patch", "disc_jitter": 1.0},
    "default_flipjitter_patch": {**NEW_DEFAULT, "flip_jitter": 1.0,
                                 "model.disc_kind": "patch", "disc_jitter": 1.0},
    "default_flipjitter_disc2": {**NEW_DEFAULT, "flip_jitter": 1.0, "disc_steps": 2},
    "default_disc2": {**NEW_DEFAULT, "disc_steps": 2},
    "default_flip1": {**NEW_DEFAULT, "weights.flip": 1.0},
    "default_flip1_margin3": {**NEW_DEFAULT, "weights.flip": 1.0, "weights.flip_margin": 3.0},
    "default_flipjitter_flip1": {**NEW_DEFAULT, "flip_jitter": 1.0, "weights.flip": 1.0},
    "default_flipjitter_margin5": {**NEW_DEFAULT, "flip_jitter": 1.0, "weights.flip_margin": 5.0},
    "default_flipjitter_margin5_cap": {**NEW_DEFAULT, "flip_jitter": 1.0,
                                       "weights.flip_margin": 5.0, "weights.l1_cap": 0.1},
    "default_flipjitter_disc2_margin5": {**NEW_DEFAULT, "flip_jitter": 1.0, "disc_steps": 2,
                                         "weights.flip_margin": 5.0},
    # The flip also asked of a random share in [1 - p, 1] of the edit (flip_partial p):
    "default_partial3": {**NEW_DEFAULT, "weights.flip_partial": 0.3},
    "default_partial4": {**NEW_DEFAULT, "weights.flip_partial": 0.4},
    # ... and the edit's total variation charged (weights.tv):
    "default_partial3_tv1": {**NEW_DEFAULT, "weights.flip_partial": 0.3, "weights.tv": 1.0},
    "default_partial3_tv3": {**NEW_DEFAULT, "weights.flip_partial": 0.3, "weights.tv": 3.0},
    "default_partial4_tv1": {**NEW_DEFAULT, "weights.flip_partial": 0.4, "weights.tv": 1.0},
    "default_partial5_tv1": {**NEW_DEFAULT, "weights.flip_partial": 0.5, "weights.tv": 1.0},
    "default_partial5_tv3": {**NEW_DEFAULT, "weights.flip_partial": 0.5, "weights.tv": 3.0},
    "partial5_tv3": {"weights.flip_partial": 0.5, "weights.tv": 3.0},  # for CyCE, SAGen
    "partial5_tv3_infill": {"weights.flip_partial": 0.5, "weights.tv": 3.0,
                            "model.infill": True},
    # On top of the lesion quick start's setting: a smoother edit, a discriminator less
    # tied by its gradient penalty, a patch discriminator, two discriminator steps.
    "default_partial5_tv10": {**NEW_DEFAULT, "weights.flip_partial": 0.5, "weights.tv": 10.0},
    "default_partial5_tv30": {**NEW_DEFAULT, "weights.flip_partial": 0.5, "weights.tv": 30.0},
    "default_partial5_tv3_gp01": {**NEW_DEFAULT, "weights.flip_partial": 0.5,
                                  "weights.tv": 3.0, "weights.gp": 0.1},
    "default_partial5_tv3_patch": {**NEW_DEFAULT, "weights.flip_partial": 0.5,
                                   "weights.tv": 3.0, "model.disc_kind": "patch"},
    # ... and the class prior: an autoencoder of the target class's images charges what
    # it cannot reconstruct (weights.prior).
    "default_partial5_tv3_prior5": {**NEW_DEFAULT, "weights.flip_partial": 0.5,
                                    "weights.tv": 3.0, "weights.prior": 5.0},
    "default_partial5_tv3_prior20": {**NEW_DEFAULT, "weights.flip_partial": 0.5,
                                     "weights.tv": 3.0, "weights.prior": 20.0},
    # ... and no cycle at all: nothing asks the edit to stay recoverable.
    "default_partial5_tv3_nocycle": {**NEW_DEFAULT, "weights.flip_partial": 0.5,
                                     "weights.tv": 3.0, "weights.cycle": 0.0,
                                     "weights.sym": 0.0, "weights.cycle_cls": 0.0,
                                     "weights.sym_cls": 0.0},
    # ... and the in-fill form: the mask composites the image's own surroundings.
    "default_partial5_tv3_infill": {**NEW_DEFAULT, "weights.flip_partial": 0.5,
                                    "weights.tv": 3.0, "model.infill": True},
    # ... with a mask that is binary in the forward pass (straight-through gradient).
    "default_partial5_tv3_infill_hard": {**NEW_DEFAULT, "weights.flip_partial": 0.5,
                                         "weights.tv": 3.0, "model.infill": True,
                                         "model.hard_mask": True},
    # ... where the generator that removes lesions (source class 1) only in-fills.
    "default_partial5_tv3_infill_fill1": {**NEW_DEFAULT, "weights.flip_partial": 0.5,
                                          "weights.tv": 3.0, "model.infill": True,
                                          "model.fill_only": (1,)},
    "default_partial5_tv3_infill_fill1_hard": {**NEW_DEFAULT, "weights.flip_partial": 0.5,
                                               "weights.tv": 3.0, "model.infill": True,
                                               "model.fill_only": (1,), "model.hard_mask": True},
    # ... and only there: the generator that adds lesions keeps the plain residual form.
    "default_partial5_tv3_fill1": {**NEW_DEFAULT, "weights.flip_partial": 0.5,
                                   "weights.tv": 3.0, "model.fill_only": (1,)},
    # ... with no cycle terms (nothing asks the removal to keep what redraws the lesion),
    # or a flip that must hold down to 30%, 15% or 5% of the edit.
    "default_partial5_tv3_fill1_nocycle": {**NEW_DEFAULT, "weights.flip_partial": 0.5,
                                           "weights.tv": 3.0, "model.fill_only": (1,),
                                           "weights.cycle": 0.0, "weights.sym": 0.0,
                                           "weights.cycle_cls": 0.0, "weights.sym_cls": 0.0},
    "default_partial7_tv3_fill1": {**NEW_DEFAULT, "weights.flip_partial": 0.7,
                                   "weights.tv": 3.0, "model.fill_only": (1,)},
    "default_partial85_tv3_fill1": {**NEW_DEFAULT, "weights.flip_partial": 0.85,
                                    "weights.tv": 3.0, "model.fill_only": (1,)},
    "default_partial95_tv3_fill1": {**NEW_DEFAULT, "weights.flip_partial": 0.95,
                                    "weights.tv": 3.0, "model.fill_only": (1,)},
    # ... with a proximity that stops charging past 0.1 per value (l1_cap), or that counts
    # edited pixels instead (l0): opening the in-fill all the way over a lesion then costs
    # what opening it part way costs.
    "default_partial85_tv3_fill1_cap": {**NEW_DEFAULT, "weights.flip_partial": 0.85,
                                        "weights.tv": 3.0, "model.fill_only": (1,),
                                        "weights.l1_cap": 0.1},
    # ... with the in-fill's mask widened by one pixel (model.mask_grow), so its soft edge
    # falls outside the lesion's rim.
    "default_partial85_tv3_fill1_grow1": {**NEW_DEFAULT, "weights.flip_partial": 0.85,
                                          "weights.tv": 3.0, "model.fill_only": (1,),
                                          "model.mask_grow": 1},
    "default_partial85_tv3_fill1_l0": {**NEW_DEFAULT, "weights.flip_partial": 0.85,
                                       "weights.tv": 3.0, "model.fill_only": (1,),
                                       "weights.l1": 0.0, "weights.l0": 1.0,
                                       "weights.fill_l1": 0.0, "weights.fill_l0": 1.0},
    # ... edited pixels counted for the remover only; the generator that adds keeps L1.
    "default_partial85_tv3_fill1_fillL0": {**NEW_DEFAULT, "weights.flip_partial": 0.85,
                                           "weights.tv": 3.0, "model.fill_only": (1,),
                                           "weights.fill_l1": 0.0, "weights.fill_l0": 1.0},
    "default_partial85_tv3_fill1_fillL0_grow1": {
        **NEW_DEFAULT, "weights.flip_partial": 0.85, "weights.tv": 3.0,
        "model.fill_only": (1,), "weights.fill_l1": 0.0, "weights.fill_l0": 1.0,
        "model.mask_grow": 1},
    "default_partial85_tv3_fill1_fillL02_grow1": {
        **NEW_DEFAULT, "weights.flip_partial": 0.85, "weights.tv": 3.0,
        "model.fill_only": (1,), "weights.fill_l1": 0.0, "weights.fill_l0": 0.2,
        "model.mask_grow": 1},
    # Ten classes, on top of the defaults (which drop SyCE's symmetric term, train half
    # the images toward their runner-up class and push the flip harder when there are
    # more than two classes):
    "ten_previous": {**NEW_DEFAULT, **TEN_FLIP_BEFORE, "runner_up_share": 0.0,
                     "weights.sym": 10.0, "weights.sym_cls": 0.01},
    "ten_nosym_random": {**NEW_DEFAULT, **TEN_FLIP_BEFORE, "runner_up_share": 0.0},
    "ten_nosym_runnerup": {**NEW_DEFAULT, **TEN_FLIP_BEFORE},
    "ten_default": {**NEW_DEFAULT},  # the same + flip weight 1.0 and margin 3
    "mask_patch_jitter": {"model.mask": True, "model.disc_kind": "patch", "disc_jitter": 1.0},
    "mask_patch_jitter_flip": {"model.mask": True, "model.disc_kind": "patch",
                               "disc_jitter": 1.0, "flip_jitter": 1.0},
}

TASKS = {
    "lesions": lambda: common.lesions(),
    "sneaker_boot": lambda: common.fashion_mnist(classes=(7, 9)),
    "fashion10": lambda: common.fashion_mnist(classes=tuple(range(10))),
}
CLASS_NAMES = {"sneaker_boot": ("Sneaker", "Ankle boot"), "fashion10": fashion_mnist.CLASS_NAMES}


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--task", choices=sorted(TASKS), default="lesions")
  p.add_argument("--variants", default="detach_adv1_lr4")
  p.add_argument("--method", default="syce")
  p.add_argument("--steps", type=int, default=800)
  p.add_argument("--classifier_steps", type=int, default=800)
  p.add_argument("--batch_size", type=int, default=None, help="default: by class count")
  p.add_argument("--num_images", type=int, default=512)
  p.add_argument("--workdir", default="runs/counterfactual_truth")
  p.add_argument("--out", default=None)
  args = p.parse_args()

  dataset = TASKS[args.task]()
  if args.task != "lesions":
    dataset.num_train, dataset.num_test = None, None
  train, test = load_split(dataset, "train"), load_split(dataset, "test")
  workdir = os.path.abspath(os.path.join(args.workdir, args.task))
  cc = common.experiment(dataset, None).classifier
  cc.steps, cc.progress = args.classifier_steps, False
  clf, _ = classifier_training.load_or_train_classifier(cc, train, test, workdir)
  accuracy = float(np.mean(clf.predict(test["image"]) == test["label"]))
  oracle = load_or_train_oracle(os.path.join(workdir, "oracle"), train, test)
  print(f"classifier accuracy {accuracy:.3f}, oracle accuracy {oracle.test_accuracy:.3f}",
        flush=True)

  out_path = args.out or os.path.join(
      os.path.dirname(__file__), "results", f"counterfactual_truth_{args.task}.json")
  n = args.num_images
  for name in args.variants.split(","):
    c = explainer_config(args.method)
    c.steps, c.progress, c.batch_size = args.steps, False, args.batch_size
    c = member_config(member_config(c, PREVIOUS_DEFAULTS), VARIANTS[name])
    t0 = time.time()
    explainer = train_explainer(clf, train["image"], c)
    fit_s = time.time() - t0
    out = explainer.explain(test["image"][:n])
    np.save(os.path.join(workdir, f"{args.method}_{name}_counterfactuals.npy"),
            np.asarray(out.counterfactual))
    row = {"method": args.method, "steps": args.steps, "batch_size": args.batch_size,
           "overrides": VARIANTS[name],
           "fit_seconds": round(fit_s, 1), "flip_rate": float(np.mean(out.flipped)),
           "mean_change": float(np.mean(np.abs(out.counterfactual - test["image"][:n])))}
    row.update(truth_report(test, out, oracle))
    if "mask" in test:
      has = test["mask"][:n].reshape(n, -1).max(1) > 0
      row["pixel_auroc"] = localization_report(out.maps[has], test["mask"][:n][has])[
          "pixel_auroc"]
    # What a person sees: lesion images first, with the twin and the oracle's verdict.
    rows = np.argsort(-test["label"][:n], kind="stable")[:6].tolist() + [
        int(i) for i in np.flatnonzero(test["label"][:n] == 0)[:2]]
    sub = jax.tree.map(lambda a: np.asarray(a)[rows], out)
    report.save_explanation_grid(
        os.path.join(workdir, f"{args.method}_{name}.png"), test["image"][:n][rows], sub,
        test["mask"][:n][rows] if "mask" in test else None,
        twins=test["twin"][:n][rows] if "twin" in test else None,
        oracle_predictions=oracle.predict(sub.counterfactual),
        class_names=CLASS_NAMES.get(args.task))
    # Re-read just before writing: runs of other variants may share the file.
    results = json.load(open(out_path)) if os.path.exists(out_path) else {}
    results.setdefault("variants", {})[f"{args.method}/{name}"] = row
    results.update(task=args.task, classifier_accuracy=accuracy,
                   oracle_accuracy=oracle.test_accuracy, num_images=n)
    print(json.dumps({name: row}, indent=1), flush=True)
    os.makedirs(os.path.dirname(out_path), exist_ok=True)
    with open(out_path, "w") as f:
      json.dump(results, f, indent=1)


if __name__ == "__main__":
  main()
