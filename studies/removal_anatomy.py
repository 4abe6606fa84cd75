"""What the generator's removals leave, and whether the class prior can see it.

For every positive held-out lesion image x with twin x0 and mask m, the change a
counterfactual cf leaves on the mask, `cf - x0`, splits into the lesion still there
(its least-squares share of `x - x0`) and everything else (speckle, blur, overshoot):

- **lesion left**: <cf - x0, x - x0> / <x - x0, x - x0> on the mask (1: untouched,
  0: gone);
- **other change**: the L1 mass of the rest, relative to the lesion's L1 mass.

Twin removal is below 1 by at most their sum. Then the class prior's view
(`cfx_jax.methods.conditional.prior`): an autoencoder of the images the classifier
calls lesion-free, fitted as the explainer fits it, and its squared reconstruction error
within the lesion for the twins, the inputs and each variant's counterfactuals. A row
for the in-fill form's fill (`models/unet.py`) pasted through the true mask gives what
that form could reach.

Reads the classifier and the counterfactuals that `studies.counterfactual_truth`
saved in its work directory:

  python -m studies.removal_anatomy --variants syce/default_partial5_tv3,syce/default_partial5_tv3_prior20

Results: studies/results/removal_anatomy_lesions.json.
"""

from __future__ import annotations

import argparse
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from cfx_jax.methods.conditional.config import explainer_config
from studies.lesion_visibility import lesion_classifier
from cfx_jax.methods.conditional import prior
from cfx_jax.models.unet import surroundings


def anatomy(x, twin, mask, cf) -> dict:
  """Medians over images of the lesion left and the other change (see the docstring)."""
  m = mask[..., None]
  lesion, left = (x - twin) * m, (cf - twin) * m
  share = np.sum(lesion * left, (1, 2, 3)) / np.sum(lesion * lesion, (1, 2, 3))
  rest = left - share[:, None, None, None] * lesion
  mass = np.sum(np.abs(lesion), (1, 2, 3))
  removal = 1.0 - np.sum(np.abs(left), (1, 2, 3)) / mass
  return {"twin_removal_median": float(np.median(removal)),
          "lesion_left_median": float(np.median(share)),
          "other_change_median": float(np.median(np.sum(np.abs(rest), (1, 2, 3)) / mass))}


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--variants", required=True, help="method/variant,... as saved")
  p.add_argument("--workdir", default="runs/counterfactual_truth")
  p.add_argument("--num_images", type=int, default=512)
  p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results",
                                               "removal_anatomy_lesions.json"))
  args = p.parse_args()
  train, test, workdir, clf = lesion_classifier(args.workdir)
  defaults = explainer_config().prior
  graphdef, params = prior.fit_class_prior(
      train["image"], clf.predict(train["image"]), 2, steps=defaults.steps,
      code_dim=defaults.code_dim, seed=0)

  n = args.num_images
  positive = test["label"][:n] == 1
  x, twin, mask = (test[k][:n][positive] for k in ("image", "twin", "mask"))

  def prior_error(images):
    """Medians of the squared error per pixel within the lesion and outside it, and of
    the share of the image's whole error that lies within the lesion."""
    recon = nnx.merge(graphdef, jax.tree.map(lambda a: a[0], params))(jnp.asarray(images))
    err = np.sum((images - np.asarray(recon)) ** 2, -1)
    inside, outside = np.sum(err * mask, (1, 2)), np.sum(err * (1 - mask), (1, 2))
    return {"prior_error_in_lesion": float(np.median(inside / np.sum(mask, (1, 2)))),
            "prior_error_outside": float(np.median(outside / np.sum(1 - mask, (1, 2)))),
            "prior_error_share_in_lesion": float(np.median(inside / (inside + outside)))}

  rows = {"twin": prior_error(twin), "input": {**prior_error(x), **anatomy(x, twin, mask, x)}}
  # The in-fill form's fill pasted through the true mask: what it could reach.
  m = mask[..., None]
  pasted = np.asarray(x + m * (surroundings(jnp.asarray(x), jnp.asarray(m)) - x))
  rows["in-fill through the true mask"] = {**prior_error(pasted),
                                           **anatomy(x, twin, mask, pasted)}
  for name in args.variants.split(","):
    method, variant = name.split("/")
    cf = np.load(os.path.join(workdir, f"{method}_{variant}_counterfactuals.npy"))[:n][positive]
    rows[name] = {**prior_error(cf), **anatomy(x, twin, mask, cf)}
    print(name, json.dumps(rows[name]), flush=True)
  result = {"classifier_accuracy": float(np.mean(clf.predict(test["image"]) == test["label"])),
            "positive_images": int(positive.sum()), "prior": defaults.to_dict(), "rows": rows}
  with open(args.out, "w") as f:
    json.dump(result, f, indent=1)


if __name__ == "__main__":
  main()
