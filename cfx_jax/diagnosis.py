"""Checks of the classifier that say what is wrong with it, not what failed downstream.

A generative explainer learns from the classifier's gradient with respect to its input:
a classifier whose gradient is zero (stop_gradient, rounded or thresholded outputs) or
non-finite would fit to no flips without a word. Non-finite outputs would come back as
meaningless probabilities, and a non-finite training loss they cause is not fixed by the
lower learning rate the loop would otherwise suggest.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

PROBE_IMAGES = 8


class NonFiniteOutputsError(ValueError):
  """The classifier returned NaN or inf on some images."""


def nonfinite_rows(values) -> np.ndarray:
  """Indices of the rows of (N, ...) `values` holding a NaN or inf."""
  v = np.asarray(values)
  return np.flatnonzero(~np.all(np.isfinite(v.reshape(len(v), -1)), axis=1))


def check_outputs(values, what: str) -> None:
  """Raise, naming the images, where the classifier's outputs on `what` are not finite."""
  bad = nonfinite_rows(values)
  if bad.size:
    more = f" and {bad.size - 20} more" if bad.size > 20 else ""
    raise NonFiniteOutputsError(f"the classifier returned non-finite outputs (NaN or inf) "
                                f"on {bad.size} of {len(values)} {what}: indices "
                                f"{bad[:20].tolist()}{more}")


def check_explanation(out):
  """An explanation whose probabilities are all finite, else an error naming the images."""
  check_outputs(out.probs, "images")
  if out.cf_probs is not None:
    check_outputs(out.cf_probs, "counterfactuals (of the images at these indices)")
  return out


def check_gradients(classifier, images) -> None:
  """One gradient of the classifier on a few images, toward each image's runner-up
  class: zero everywhere, or non-finite, is an error that says so."""
  x = jnp.asarray(images[:PROBE_IMAGES], jnp.float32)

  def loss(x):
    logp = jax.nn.log_softmax(classifier.apply(classifier.params, x), axis=-1)
    runner_up = jnp.argsort(jax.lax.stop_gradient(logp), axis=-1)[:, -2]
    return jnp.sum(jnp.take_along_axis(logp, runner_up[:, None], axis=-1))

  grad = np.asarray(jax.jit(jax.grad(loss))(x))
  if not np.all(np.isfinite(grad)):
    raise ValueError(f"the classifier's gradient with respect to its input is non-finite "
                     f"on {len(x)} of the images: an explainer learns from that gradient, "
                     "so it cannot be fitted; check the classifier for NaN or inf")
  if not np.any(grad):
    raise ValueError(f"the classifier's gradient with respect to its input is zero on "
                     f"{len(x)} of the images (stop_gradient, rounded or thresholded "
                     "outputs?): an explainer learns from that gradient and would flip "
                     "nothing; explain a classifier with smooth outputs")
