"""The class prior: an autoencoder of each class's images, charged on counterfactuals.

Once the classifier has flipped, neither it nor the realism discriminator objects to
what a generator leaves behind: a lesion faded to a ghost ring with speckle in it
(docs/counterfactual_truth.md). An autoencoder fitted only to the images the classifier
assigns to the target class never saw such a remnant and cannot reconstruct it; on the
lesion set its squared error within the lesion is 0.0066 for the true twins, 0.065 for
SyCE's counterfactuals and 0.28 for the inputs (`studies/removal_anatomy.py`). So
the counterfactual aimed at class t pays its reconstruction error under class t's
autoencoder (weight `prior`; the autoencoder loss of prototype-guided counterfactuals,
Van Looveren and Klaise 2019). The autoencoders are fitted once, before the explainer,
and stay frozen. Measured at weights 5 and 20 it did not move removal
(docs/counterfactual_truth.md, fifth round), so it is off by default.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from cfx_jax.engine.autoencoder_fit import fit_autoencoder


def fit_class_prior(images: np.ndarray, predicted: np.ndarray, num_classes: int, *,
                    steps: int, code_dim: int, seed: int, workdir: str | None = None):
  """One autoencoder per class on the images predicted as that class.

  Returns (graphdef, params stacked over classes). With `workdir` each one resumes from
  `<workdir>/prior/class_<c>_checkpoints`.
  """
  graphdef, params = None, []
  for c in range(num_classes):
    graphdef, p, _ = fit_autoencoder(
        images[predicted == c], steps=steps, code_dim=code_dim, seed=seed + c,
        workdir=os.path.join(workdir, "prior") if workdir else None, name=f"class_{c}")
    params.append(p)
  return graphdef, jax.tree.map(lambda *a: jnp.stack(a), *params)


def reconstruction_error(graphdef: nnx.GraphDef, params, images: jax.Array,
                         classes: jax.Array) -> jax.Array:
  """Mean squared error of (N, H, W, C) `images` under the autoencoders of `classes` (N,).

  Every class's autoencoder sees every image and the right one is picked: with the
  handful of classes and the tiny networks here, cheaper than gathering parameters.
  """
  recon = jax.vmap(lambda p: nnx.merge(graphdef, p)(images))(params)
  recon = recon[classes, jnp.arange(images.shape[0])]
  return jnp.mean((images - recon) ** 2)
