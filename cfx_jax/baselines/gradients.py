"""Gradient saliency: vanilla gradient, gradient x input, integrated gradients, SmoothGrad.

Each map sums absolute per-channel attributions, so it shows where the evidence is
regardless of its sign. Gradients are of the class log-odds (see `base`).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from cfx_jax.baselines import base
from cfx_jax.explanation import Explanation

# Images live in [-1, 1]; SmoothGrad's noise is a fraction of this range.
DATA_RANGE = 2.0


@functools.partial(jax.jit, static_argnames=("apply", "times_input"))
def _gradient_maps(apply, params, images, target, times_input: bool):
  g = base.input_gradient(apply, params, images, target)
  if times_input:
    g = g * images
  return jnp.sum(jnp.abs(g), axis=-1)


@functools.partial(jax.jit, static_argnames=("apply", "steps"))
def _ig_attributions(apply, params, images, target, reference, steps: int):
  """Midpoint Riemann sum of the gradient along the straight path reference -> image.

  Midpoints (alpha = (k + 1/2) / steps) never evaluate the endpoints and make the
  completeness error O(1 / steps^2) for a smooth score; a scan keeps memory at one batch.
  """
  diff = images - reference

  def step(total, k):
    alpha = (k + 0.5) / steps
    return total + base.input_gradient(apply, params, reference + alpha * diff, target), None

  total, _ = jax.lax.scan(step, jnp.zeros_like(images), jnp.arange(steps, dtype=jnp.float32))
  return diff * total / steps


@functools.partial(jax.jit, static_argnames=("apply", "samples"))
def _smoothgrad_maps(apply, params, images, target, index, key, sigma, samples: int):
  # One key per image position, so an image's noise does not depend on its batch.
  keys = jax.vmap(jax.random.fold_in, (None, 0))(key, index)
  shape = images.shape[1:]

  def step(total, s):
    noise = jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, s), shape))(keys)
    g = base.input_gradient(apply, params, images + sigma * noise, target)
    return total + jnp.sum(jnp.abs(g), axis=-1), None

  total, _ = jax.lax.scan(step, jnp.zeros(images.shape[:3], images.dtype), jnp.arange(samples))
  return total / samples


def vanilla_gradient(classifier, images, target=None, *, chunk_size: int = 64) -> Explanation:
  """sum_channels |d s_c / d x|."""
  prep = base.prepare(classifier, images, target, chunk_size)
  clf = prep.classifier
  maps = base.run(prep, lambda x, c: _gradient_maps(clf.apply, clf.params, x, c, False))
  return base.explanation(prep, maps)


def gradient_x_input(classifier, images, target=None, *, chunk_size: int = 64) -> Explanation:
  """sum_channels |x * d s_c / d x|."""
  prep = base.prepare(classifier, images, target, chunk_size)
  clf = prep.classifier
  maps = base.run(prep, lambda x, c: _gradient_maps(clf.apply, clf.params, x, c, True))
  return base.explanation(prep, maps)


def integrated_gradients_attributions(classifier, images, target=None, *, steps: int = 32,
                                      baseline: float = 0.0,
                                      chunk_size: int = 32) -> np.ndarray:
  """Signed (N, H, W, C) attributions; they sum to about s_c(x) - s_c(baseline image)."""
  steps, baseline = _ig_options(steps, baseline)
  prep = base.prepare(classifier, images, target, chunk_size)
  return _ig(prep, steps, baseline)


def integrated_gradients(classifier, images, target=None, *, steps: int = 32,
                         baseline: float = 0.0, chunk_size: int = 32) -> Explanation:
  """sum_channels |IG|, from a constant (default grey, 0) baseline image."""
  steps, baseline = _ig_options(steps, baseline)
  prep = base.prepare(classifier, images, target, chunk_size)
  return base.explanation(prep, np.sum(np.abs(_ig(prep, steps, baseline)), axis=-1))


def _ig_options(steps, baseline) -> tuple[int, float]:
  steps = base.check_positive_int(steps, "steps")
  return steps, base.check_real(baseline, "baseline (a constant image value)", -1.0, 1.0)


def _ig(prep: base.Prepared, steps: int, baseline: float) -> np.ndarray:
  clf, ref = prep.classifier, jnp.float32(baseline)
  return base.run(prep, lambda x, c: _ig_attributions(clf.apply, clf.params, x, c, ref, steps))


def smoothgrad(classifier, images, target=None, *, key=None, samples: int = 16,
               noise_level: float = 0.15, chunk_size: int = 32) -> Explanation:
  """Mean over `samples` noisy copies of sum_channels |d s_c / d x|.

  The noise is Gaussian with sigma = noise_level * (max - min of the data range), i.e.
  0.3 by default; noisy copies are not clipped. The target stays the class of the
  clean image.
  """
  key = base.check_key(key, "smoothgrad")
  samples = base.check_positive_int(samples, "samples")
  noise_level = base.check_real(noise_level, "noise_level", 0.0, math.inf)
  prep = base.prepare(classifier, images, target, chunk_size)
  clf, sigma = prep.classifier, jnp.float32(noise_level * DATA_RANGE)
  maps = base.run(prep, lambda x, c, i: _smoothgrad_maps(clf.apply, clf.params, x, c, i, key,
                                                         sigma, samples), with_index=True)
  return base.explanation(prep, maps)
