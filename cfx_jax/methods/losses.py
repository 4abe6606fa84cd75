"""Loss terms shared by the generative explainers; each returns a scalar mean."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Mean softmax cross-entropy; for two classes it equals the paper's BCE on f's output."""
  logits = logits.reshape((-1, logits.shape[-1]))
  return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels.reshape(-1)))


def flip_loss(logits: jax.Array, labels: jax.Array, margin: float = 0.0) -> jax.Array:
  """Cross-entropy toward `labels`; with `margin` > 0 plus a hinge that keeps pushing until
  the target logit beats every other class by `margin`. Cross-entropy fades once the
  target is likely, so an edit can stop at the decision boundary (a half-removed lesion);
  real images of a class sit well inside it (lesion set: a median margin of 5)."""
  ce = cross_entropy(logits, labels)
  if isinstance(margin, (int, float)) and not margin:
    return ce
  logits = logits.reshape((-1, logits.shape[-1]))
  labels = labels.reshape(-1)
  target = jnp.take_along_axis(logits, labels[:, None], axis=-1)[:, 0]
  others = jnp.where(jax.nn.one_hot(labels, logits.shape[-1]) > 0, -jnp.inf, logits)
  hinge = jnp.mean(jax.nn.relu(margin - (target - jnp.max(others, axis=-1))))
  return ce + jnp.where(margin > 0, hinge, 0.0)  # `margin` may be traced (a population)


def bce_logits(logits: jax.Array, real: bool) -> jax.Array:
  """Mean binary cross-entropy of discriminator logits against all-real or all-fake."""
  labels = jnp.full_like(logits, 1.0 if real else 0.0)
  return jnp.mean(optax.sigmoid_binary_cross_entropy(logits, labels))


def mse_mae(a: jax.Array, b: jax.Array) -> jax.Array:
  """The papers' reconstruction distance: MSE + MAE."""
  d = a - b
  return jnp.mean(d * d) + jnp.mean(jnp.abs(d))


def l1(a: jax.Array, b: jax.Array, cap: float = 0.0) -> jax.Array:
  """Mean |a - b|; with `cap` > 0 each value's cost stops growing at `cap`.

  Capped, the proximity still keeps small, scattered changes away, but no longer
  charges for going all the way: erasing a lesion down to the background costs what
  half-fading it costs, so realism, not proximity, decides how far an edit goes.
  """
  d = jnp.abs(a - b)
  if isinstance(cap, (int, float)):
    return jnp.mean(jnp.minimum(d, cap) if cap > 0 else d)
  return jnp.mean(jnp.where(cap > 0, jnp.minimum(d, cap), d))  # traced (a population)


def edited_fraction(a: jax.Array, b: jax.Array, scale: float = 0.05) -> jax.Array:
  """Smooth count of edited pixels: mean of d / (d + scale), d = sum_c |a - b|.

  A proximity that charges for where an image changes, not by how much: erasing a
  lesion completely costs no more than tinting it, unlike L1, which pays for every
  step toward the background and so settles for a partial, still visible edit.
  """
  d = jnp.sum(jnp.abs(a - b), axis=-1)
  return jnp.mean(d / (d + scale))


def edit_variation(a: jax.Array, b: jax.Array) -> jax.Array:
  """Total variation of the edit a - b: mean |difference| between neighbouring pixels.

  Charges how rough an edit is, not how large: a lesion erased down to a flat background
  changes only at the lesion's own edges, while fine speckle that scrambles the
  evidence for the classifier (and leaves it visible to a person) pays at every pixel.
  """
  d = a - b
  dy = jnp.abs(d[..., 1:, :, :] - d[..., :-1, :, :])
  dx = jnp.abs(d[..., :, 1:, :] - d[..., :, :-1, :])
  return jnp.mean(dy) + jnp.mean(dx)


def gradient_penalty(critic, real: jax.Array, fake: jax.Array, key: jax.Array) -> jax.Array:
  """Mean (||grad critic(interp)|| - 1)^2 on random interpolates of real and fake.

  `critic` maps a batch to per-example logits, or to per-patch logits (averaged per
  example); one interpolation weight per example (the leading axes of `real` except the
  last three, H W C).
  """
  batch_shape = real.shape[:-3]
  eps = jax.random.uniform(key, batch_shape + (1, 1, 1))
  interp = eps * real + (1.0 - eps) * fake
  # A patch critic returns one logit per patch: its per-example score is their mean.
  per_example = lambda z: jnp.mean(critic(z).reshape(batch_shape + (-1,)), axis=-1)
  grads = jax.grad(lambda z: jnp.sum(per_example(z)))(interp)
  norms = jnp.sqrt(jnp.sum(grads * grads, axis=(-3, -2, -1)) + 1e-12)
  return jnp.mean((norms - 1.0) ** 2)


def change_map(a: jax.Array, b: jax.Array) -> jax.Array:
  """Explanation map |a - b| summed over channels: (..., H, W, C) -> (..., H, W)."""
  return jnp.sum(jnp.abs(a - b), axis=-1)
