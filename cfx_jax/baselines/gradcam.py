"""Grad-CAM: last-conv-block activations weighted by their mean gradient.

The map is ReLU(sum_k alpha_k A_k) with alpha_k the spatial mean of d s_c / d A_k,
computed on the classifier cut at its last conv block (`Classifier.feature_maps` and
`Classifier.head`), then upsampled bilinearly to the image size.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from cfx_jax.baselines import base
from cfx_jax.explanation import Explanation


@functools.partial(jax.jit, static_argnames=("feature_maps", "head"))
def _gradcam_maps(feature_maps, head, params, images, target):
  acts = feature_maps(params, images)
  grads = jax.grad(lambda a: jnp.sum(base.class_log_odds(head(params, a), target)))(acts)
  alpha = jnp.mean(grads, axis=(1, 2))
  cam = jax.nn.relu(jnp.einsum("nc,nhwc->nhw", alpha, acts))
  # The triangle kernel has non-negative weights, so upsampling keeps cam >= 0.
  return jax.image.resize(cam, images.shape[:3], "bilinear")


def gradcam(classifier, images, target=None, *, chunk_size: int = 64) -> Explanation:
  """Grad-CAM map; needs a classifier cut at its last conv block."""
  prep = base.prepare(classifier, images, target, chunk_size)
  clf = prep.classifier
  if clf.feature_maps is None or clf.head is None:
    raise ValueError(
        "gradcam needs the classifier's last convolutional feature maps, and this "
        "classifier has no `feature_maps`/`head` cut (a plain callable has none). Use "
        "`from_module` on a module with `feature_maps(x)` and `feature_head(maps)` methods "
        "(such as CNNClassifier), or build Classifier(..., feature_maps=fn(params, images) "
        "-> (N, h, w, C), head=fn(params, maps) -> logits).")
  probe = jax.ShapeDtypeStruct((1,) + clf.image_shape, jnp.float32)
  acts = jax.eval_shape(clf.feature_maps, clf.params, probe)
  if acts.ndim != 4:
    raise ValueError(f"classifier.feature_maps must return (N, h, w, C) activations, got "
                     f"shape {acts.shape} for one image")
  maps = base.run(prep, lambda x, c: _gradcam_maps(clf.feature_maps, clf.head, clf.params,
                                                   x, c))
  return base.explanation(prep, maps)
