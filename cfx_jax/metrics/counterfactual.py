"""Whether counterfactuals reach their target and how much they change.

Validity (flip rate), faithfulness of the class-preserving reconstruction
(preservation rate), and the size of the edit (proximity, sparsity). Pure JAX,
so they can run inside a jitted evaluation step.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def flip_rate(cf_probs, target) -> jax.Array:
  """Fraction of counterfactuals the classifier assigns to their target."""
  pred = jnp.argmax(jnp.asarray(cf_probs), axis=-1)
  return jnp.mean((pred == jnp.asarray(target)).astype(jnp.float32))


def preservation_rate(stable_probs, predicted) -> jax.Array:
  """Fraction of stable images still given the classifier's original class.

  A low rate means the generator's reconstruction already changes the
  decision, so differences to the counterfactual are not attributable to
  the class flip alone.
  """
  pred = jnp.argmax(jnp.asarray(stable_probs), axis=-1)
  return jnp.mean((pred == jnp.asarray(predicted)).astype(jnp.float32))


def _diff(x_batch, cf_batch):
  x = jnp.asarray(x_batch, jnp.float32)
  cf = jnp.asarray(cf_batch, jnp.float32)
  if x.shape != cf.shape:
    raise ValueError(f'image shape {x.shape} != counterfactual {cf.shape}')
  return cf - x


def proximity_l1(x_batch, cf_batch) -> jax.Array:
  """Per-image mean absolute change over H, W, C, (N,)."""
  d = _diff(x_batch, cf_batch)
  return jnp.mean(jnp.abs(d), axis=(1, 2, 3))


def proximity_l2(x_batch, cf_batch) -> jax.Array:
  """Per-image root-mean-square change over H, W, C, (N,)."""
  d = _diff(x_batch, cf_batch)
  return jnp.sqrt(jnp.mean(d * d, axis=(1, 2, 3)))


def sparsity(x_batch, cf_batch, threshold: float = 0.1) -> jax.Array:
  """Per-image fraction of pixels whose largest channel change > threshold.

  Measured per pixel (max over channels) so colour and grayscale images are
  comparable.
  """
  d = jnp.max(jnp.abs(_diff(x_batch, cf_batch)), axis=-1)
  return jnp.mean((d > threshold).astype(jnp.float32), axis=(1, 2))


def counterfactual_report(x_batch, explanation, stable_probs=None,
                          threshold: float = 0.1) -> dict[str, float]:
  """Headline counterfactual scores for one `Explanation` as plain floats.

  `stable_probs` is optional because `Explanation` does not carry the
  classifier's output on the stable image.
  """
  out = {
      'flip_rate': float(flip_rate(explanation.cf_probs, explanation.target)),
      'proximity_l1': float(jnp.mean(
          proximity_l1(x_batch, explanation.counterfactual))),
      'proximity_l2': float(jnp.mean(
          proximity_l2(x_batch, explanation.counterfactual))),
      'sparsity': float(jnp.mean(
          sparsity(x_batch, explanation.counterfactual, threshold))),
  }
  if explanation.stable is not None:
    out['stable_l1'] = float(jnp.mean(proximity_l1(x_batch, explanation.stable)))
  if stable_probs is not None:
    out['preservation_rate'] = float(
        preservation_rate(stable_probs, explanation.predicted))
  return out
