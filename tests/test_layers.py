"""The space-to-depth stride-2 conv computes what the plain strided conv computes."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax import lax

from cfx_jax.models.layers import strided_conv

DN = ("NHWC", "HWIO", "NHWC")


def _plain(x, k):
  return lax.conv_general_dilated(x, k, (2, 2), "SAME", dimension_numbers=DN)


def _fast(x, k):
  return strided_conv(x, k, (2, 2), "SAME", dimension_numbers=DN)


def _inputs(h, w, c=3, o=5, seed=0):
  rng = np.random.default_rng(seed)
  return (jnp.asarray(rng.normal(size=(2, h, w, c)), jnp.float32),
          jnp.asarray(rng.normal(size=(3, 3, c, o)), jnp.float32))


@pytest.mark.parametrize("shape", [(8, 8), (6, 10), (7, 8), (5, 5)])
def test_forward_matches_plain_conv(shape):
  x, k = _inputs(*shape)
  np.testing.assert_allclose(_fast(x, k), _plain(x, k), atol=1e-5)


def test_first_and_second_derivatives_match():
  """The gradient penalty differentiates through the input gradient."""
  x, k = _inputs(8, 8)

  def penalty(conv):
    def loss(k, x):
      g = jax.grad(lambda z: jnp.sum(jnp.tanh(conv(z, k))))(x)
      return jnp.sum(g ** 2)
    return loss

  for argnum in (0, 1):
    fast = jax.grad(penalty(_fast), argnum)(k, x)
    plain = jax.grad(penalty(_plain), argnum)(k, x)
    np.testing.assert_allclose(fast, plain, rtol=1e-4, atol=1e-4)


def test_nnx_conv_uses_it_with_unchanged_parameters():
  a = nnx.Conv(3, 4, (3, 3), strides=2, rngs=nnx.Rngs(0))
  b = nnx.Conv(3, 4, (3, 3), strides=2, conv_general_dilated=strided_conv, rngs=nnx.Rngs(0))
  x, _ = _inputs(8, 8)
  assert a.kernel.shape == b.kernel.shape == (3, 3, 3, 4)
  np.testing.assert_allclose(a(x), b(x), atol=1e-5)
