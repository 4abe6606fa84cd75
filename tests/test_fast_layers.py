"""The layers rewritten for XLA:CPU compute what the plain ones compute (models/layers.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from cfx_jax.models import layers
from cfx_jax.models.layers import max_pool2, strided_conv, upsample2


@pytest.mark.parametrize("shape", [(2, 8, 8, 3), (1, 7, 9, 2)])
def test_max_pool2_equals_max_pool_in_values_and_gradients(shape):
  # Distinct values, so every window has one maximum and both gradients pick it.
  x = jnp.asarray(np.random.default_rng(0).permutation(np.prod(shape)).reshape(shape),
                  jnp.float32)
  plain = lambda x: nnx.max_pool(x, (2, 2), strides=(2, 2))  # noqa: E731
  np.testing.assert_array_equal(max_pool2(x), plain(x))
  w = jnp.asarray(np.random.default_rng(1).normal(size=plain(x).shape), jnp.float32)
  grad = lambda f: jax.grad(lambda x: jnp.sum(f(x) * w))(x)  # noqa: E731
  np.testing.assert_array_equal(grad(max_pool2), grad(plain))


def test_max_pool2_sends_the_gradient_of_tied_maxima_where_max_pool_does():
  """Flat image regions give windows of equal maxima: the gradient goes to the first."""
  x = jnp.asarray(np.random.default_rng(0).integers(0, 2, (2, 8, 8, 3)), jnp.float32)
  plain = lambda x: nnx.max_pool(x, (2, 2), strides=(2, 2))  # noqa: E731
  w = jnp.asarray(np.random.default_rng(1).normal(size=(2, 4, 4, 3)), jnp.float32)
  grad = lambda f: jax.grad(lambda x: jnp.sum(f(x) * w))(x)  # noqa: E731
  np.testing.assert_array_equal(max_pool2(x), plain(x))
  np.testing.assert_array_equal(grad(max_pool2), grad(plain))


def test_upsample2_equals_nearest_resize_in_values_and_gradients():
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(2, 5, 7, 3)), jnp.float32)
  plain = lambda x: jax.image.resize(x, (2, 10, 14, 3), method="nearest")  # noqa: E731
  np.testing.assert_array_equal(upsample2(x), plain(x))
  w = jnp.asarray(rng.normal(size=(2, 10, 14, 3)), jnp.float32)
  grad = lambda f: jax.grad(lambda x: jnp.sum(f(x) * w))(x)  # noqa: E731
  np.testing.assert_allclose(grad(upsample2), grad(plain), rtol=1e-6, atol=1e-6)


def test_strided_conv_equals_the_stride_2_conv_to_its_second_derivative():
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(2, 8, 8, 3)), jnp.float32)
  k = jnp.asarray(rng.normal(size=(3, 3, 3, 4)), jnp.float32)
  dims = ("NHWC", "HWIO", "NHWC")
  plain = lambda x, k: jax.lax.conv_general_dilated(  # noqa: E731
      x, k, (2, 2), "SAME", dimension_numbers=dims)
  fast = lambda x, k: strided_conv(x, k, (2, 2), "SAME", dimension_numbers=dims)  # noqa: E731
  np.testing.assert_allclose(fast(x, k), plain(x, k), atol=1e-5)
  # The gradient penalty's path: the input gradient's norm, differentiated again.
  penalty = lambda f: jax.grad(  # noqa: E731
      lambda k: jnp.sum(jax.grad(lambda x: jnp.sum(jnp.tanh(f(x, k))))(x) ** 2))(k)
  np.testing.assert_allclose(penalty(fast), penalty(plain), rtol=1e-4, atol=1e-4)


def test_textbook_forms_undo_the_named_rewrites_only():
  x = jnp.ones((1, 4, 4, 2))
  k = jnp.ones((3, 3, 2, 3))

  def jaxpr(layer):
    """Of a fresh trace: jax reuses the trace of a function it has traced before."""
    if layer == "conv":
      f = lambda x: strided_conv(x, k, (2, 2), "SAME",  # noqa: E731
                                 dimension_numbers=("NHWC", "HWIO", "NHWC"))
    else:
      f = lambda x: upsample2(x)  # noqa: E731
    return str(jax.make_jaxpr(f)(x))

  assert "transpose" in jaxpr("conv") and "gather" not in jaxpr("upsample")
  with layers.textbook_forms("upsample2"):
    assert "transpose" in jaxpr("conv") and "gather" in jaxpr("upsample")
  with layers.textbook_forms():
    assert "transpose" not in jaxpr("conv") and "gather" in jaxpr("upsample")
  assert "transpose" in jaxpr("conv") and "gather" not in jaxpr("upsample")
  with pytest.raises(ValueError, match="unknown layer forms"):
    with layers.textbook_forms("max_pool"):
      pass
