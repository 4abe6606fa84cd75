"""The class prior: per-class autoencoders whose reconstruction error the generator pays."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from cfx_jax.classifier import as_classifier
from cfx_jax.methods import ModelSpec
from cfx_jax.methods.conditional import gan, get_recipe, prior
from cfx_jax.models.autoencoder import ConvAutoencoder

RNG = np.random.default_rng(0)


def _stacked_autoencoders(num: int):
  nets = [ConvAutoencoder((16, 16, 3), 8, rngs=nnx.Rngs(i)) for i in range(num)]
  graphdef = nnx.graphdef(nets[0])
  return graphdef, nets, jax.tree.map(lambda *a: jnp.stack(a),
                                      *[nnx.state(n) for n in nets])


def test_reconstruction_error_uses_each_images_own_class():
  graphdef, nets, params = _stacked_autoencoders(3)
  x = jnp.asarray(RNG.uniform(-1, 1, (5, 16, 16, 3)), jnp.float32)
  classes = jnp.array([2, 0, 1, 2, 0])
  reference = np.mean([np.mean((np.asarray(x[i]) - np.asarray(nets[c](x[i:i + 1])[0])) ** 2)
                       for i, c in enumerate(classes.tolist())])
  np.testing.assert_allclose(prior.reconstruction_error(graphdef, params, x, classes),
                             reference, rtol=1e-5)


def test_each_class_autoencoder_learns_only_its_own_images():
  # Class 0: dark images with a bright square; class 1: bright images with a dark bar.
  n = 64
  images = np.full((2 * n, 16, 16, 3), -0.6, np.float32)
  images[:n, 4:9, 4:9] = 0.6
  images[n:] = 0.6
  images[n:, 10:12, 2:14] = -0.6
  images += 0.02 * RNG.normal(size=images.shape).astype(np.float32)
  predicted = np.repeat([0, 1], n)
  graphdef, params = prior.fit_class_prior(images, predicted, 2, steps=150, code_dim=8,
                                           seed=0)
  err = lambda x, c: float(prior.reconstruction_error(graphdef, params, jnp.asarray(x),
                                                      jnp.full((len(x),), c)))
  assert err(images[:n], 0) < 0.25 * err(images[:n], 1)
  assert err(images[n:], 1) < 0.25 * err(images[n:], 0)


def test_step_charges_the_counterfactuals_reconstruction_error():
  w = np.linspace(-1, 1, 16 * 16 * 3).reshape(16, 16, 3).astype(np.float32)
  clf = as_classifier(lambda x: (x * w).sum(axis=(1, 2, 3)), (16, 16, 3))
  method = get_recipe("syce")
  spec = ModelSpec(16, 3, 2, (8, 16), (8, 16, 16))
  x = jnp.asarray(RNG.uniform(-1, 1, (2, 2, 16, 16, 3)), jnp.float32)
  graphdef, _, params = _stacked_autoencoders(2)
  # The generator starts as the identity; one step moves it off it.
  models, state = gan.init(method, spec, seed=0, lr=1e-3, b1=0.5)
  plain = jax.jit(gan.make_train_step(method, models, clf.apply, {}))
  state, _ = plain(state, clf.params, x)
  gen = nnx.merge(models.gen_def, state.gen)
  cf = method.counterfactuals(gen, x, (0, 1), (1, 0)).reshape(4, 16, 16, 3)
  expected = prior.reconstruction_error(graphdef, params, cf, jnp.array([1, 1, 0, 0]))

  with_prior = jax.jit(gan.make_train_step(method, models, clf.apply, {"prior": 2.0},
                                           prior_graphdef=graphdef))
  _, metrics = with_prior(state, (clf.params, params), x)
  _, without = plain(state, clf.params, x)
  np.testing.assert_allclose(metrics["g_prior"], expected, rtol=1e-5)
  np.testing.assert_allclose(metrics["g_loss"], without["g_loss"] + 2.0 * expected,
                             rtol=1e-5)
  with pytest.raises(ValueError, match="prior"):
    gan.make_train_step(method, models, clf.apply, {"prior": 2.0})
