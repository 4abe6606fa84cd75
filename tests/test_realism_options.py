"""The training options that make counterfactuals true: patch critic, mask form, jitter."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from cfx_jax.classifier import as_classifier
from cfx_jax.methods import ModelSpec, losses
from cfx_jax.models import Discriminator
from cfx_jax.models.unet import UNet, grow_mask, open_mask, surroundings
from cfx_jax.methods.conditional import gan, get_recipe

X = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (4, 16, 16, 3)), jnp.float32)


@pytest.mark.parametrize("num_classes", [2, 3])
def test_patch_discriminator_gives_one_logit_per_patch(num_classes):
  d = Discriminator(3, 16, num_classes, kind="patch", features=(8, 16, 16), rngs=nnx.Rngs(0))
  c = jnp.array([0, 1, 1, 0])
  logits = d(X, c)
  assert logits.shape == (4, 4, 4)
  grouped = d.grouped(X.reshape(2, 2, 16, 16, 3), (0, 1))
  assert grouped.shape == (2, 2, 4, 4)
  # Per-class networks: each example is judged by its own class's network.
  if num_classes == 2:
    np.testing.assert_allclose(logits[1], d.nets[1](X[1:2])[0], rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="kind"):
    Discriminator(3, 16, 2, kind="pixel", rngs=nnx.Rngs(0))


def test_gradient_penalty_averages_patch_logits_per_example():
  d = Discriminator(3, 16, 2, kind="patch", features=(8, 16, 16), rngs=nnx.Rngs(0))
  real, fake = X.reshape(2, 2, 16, 16, 3), jnp.flip(X, 0).reshape(2, 2, 16, 16, 3)
  key = jax.random.key(3)
  gp = losses.gradient_penalty(lambda z: d.grouped(z, (0, 1)), real, fake, key)
  eps = jax.random.uniform(key, (2, 2, 1, 1, 1))
  interp = eps * real + (1 - eps) * fake
  per_example = lambda z: jnp.mean(d.grouped(z, (0, 1)), axis=(2, 3))
  g = jax.grad(lambda z: jnp.sum(per_example(z)))(interp)
  norms = jnp.sqrt(jnp.sum(g ** 2, axis=(2, 3, 4)))
  np.testing.assert_allclose(gp, jnp.mean((norms - 1) ** 2), rtol=1e-5)


def test_mask_form_starts_close_to_the_input_and_stays_in_range():
  net = UNet(3, features=(8, 16), mask=True, rngs=nnx.Rngs(0))
  out = net(X)
  assert out.shape == X.shape
  assert float(jnp.max(jnp.abs(out))) <= 1.0
  # The mask starts at sigmoid(-4) ~ 0.018: at most 2 * 0.018 away from the input.
  assert float(jnp.max(jnp.abs(out - X))) < 0.04
  # Where the mask opens fully, the output is the redrawn fill.
  net.mask_heads[0].bias[...] = jnp.full((1,), 40.0)
  np.testing.assert_allclose(net(X), jnp.tanh(net.heads[0](_features(net, X))), atol=1e-5)


def test_infill_fills_an_open_region_from_what_surrounds_it_only():
  """Inside an open disc the fill is the average of the pixels outside it: a constant
  background comes back exactly, whatever the disc held; it is a convex average
  everywhere, so the range holds."""
  yy, xx = np.mgrid[:16, :16]
  disc = ((yy - 7) ** 2 + (xx - 9) ** 2 < 9).astype(np.float32)[None, :, :, None]
  blob = np.random.default_rng(0).uniform(-1, 1, (1, 16, 16, 3)).astype(np.float32)
  x = jnp.asarray(0.3 * (1 - disc) + blob * disc)
  fill = surroundings(x, jnp.asarray(disc))
  np.testing.assert_allclose(np.asarray(fill)[0][disc[0, ..., 0] > 0], 0.3, atol=1e-6)
  soft = surroundings(jnp.asarray(blob), jnp.full((1, 16, 16, 1), 0.5))
  assert float(jnp.max(jnp.abs(soft))) <= float(np.max(np.abs(blob))) + 1e-6


def test_infill_form_starts_close_to_the_input_and_opens_to_the_surroundings():
  net = UNet(3, features=(8, 16), infill=True, rngs=nnx.Rngs(0))
  out = net(X)
  assert out.shape == X.shape and float(jnp.max(jnp.abs(out))) <= 1.0
  assert float(jnp.max(jnp.abs(out - X))) < 0.04  # mask sigmoid(-4), residual head zero
  net.mask_heads[0].bias[...] = jnp.full((1,), 4.0)  # the mask half open everywhere
  m = jnp.full(X.shape[:3] + (1,), 0.5)
  np.testing.assert_allclose(net(X), X + m * (surroundings(X, m) - X), atol=1e-5)
  with pytest.raises(ValueError, match="exclude each other"):
    UNet(3, features=(8, 16), mask=True, infill=True, rngs=nnx.Rngs(0))


def test_hard_mask_is_binary_forward_with_the_soft_masks_gradient():
  """A hard mask is 0 or 1, switching where the soft one passes 0.5, and passes the soft
  mask's gradient back; a closed hard in-fill returns the input exactly."""
  z = jnp.linspace(0.0, 8.0, 33)
  hard, soft = open_mask(z, True), open_mask(z, False)
  np.testing.assert_array_equal(hard, (soft > 0.5).astype(np.float32))
  w = jnp.cos(z)  # a fixed weight per entry
  grad = lambda h: jax.grad(lambda z: jnp.sum(open_mask(z, h) * w))(z)
  np.testing.assert_allclose(grad(True), grad(False), rtol=1e-6)
  closed = UNet(3, features=(8, 16), infill=True, hard_mask=True, rngs=nnx.Rngs(0))
  np.testing.assert_array_equal(closed(X), X)
  assert float(jnp.abs(UNet(3, features=(8, 16), infill=True, rngs=nnx.Rngs(0))(X) - X).max()) > 0
  with pytest.raises(ValueError, match="hard_mask needs a mask"):
    UNet(3, features=(8, 16), hard_mask=True, rngs=nnx.Rngs(0))


def test_grown_mask_is_the_windowed_maximum_of_the_mask():
  """mask_grow k replaces the mask by its maximum over (2k+1)^2 windows, computed here by a
  plain loop over shifts, and makes a one-pixel opening a 3x3 or 5x5 square."""
  m = jax.random.uniform(jax.random.key(3), (2, 9, 7, 1))
  for k in (1, 2):
    padded = np.pad(np.asarray(m), ((0, 0), (k, k), (k, k), (0, 0)), constant_values=-1.0)
    want = np.max([padded[:, i:i + 9, j:j + 7] for i in range(2 * k + 1)
                   for j in range(2 * k + 1)], axis=0)
    np.testing.assert_array_equal(grow_mask(m, k), want)
  dot = jnp.zeros((1, 9, 9, 1)).at[0, 4, 4, 0].set(1.0)
  assert float(grow_mask(dot, 1).sum()) == 9.0 and float(grow_mask(dot, 2).sum()) == 25.0
  np.testing.assert_array_equal(grow_mask(m, 0), m)
  net = UNet(3, features=(8, 16), infill=True, draws=False, mask_grow=1, rngs=nnx.Rngs(0))
  net.mask_heads[0].bias[...] = jnp.full((1,), 4.0)  # half open everywhere: growing keeps it
  half = jnp.full(X.shape[:3] + (1,), 0.5)
  np.testing.assert_allclose(net(X), X + half * (surroundings(X, half) - X), atol=1e-5)
  with pytest.raises(ValueError, match="mask_grow needs a mask"):
    UNet(3, features=(8, 16), mask_grow=1, rngs=nnx.Rngs(0))


def test_fill_only_generator_can_only_replace_regions_by_their_surroundings():
  """With fill_only, source class 1's network has no residual: opened fully it returns the
  in-fill whatever its residual head says; class 0's network still draws."""
  from cfx_jax.models.generator import Generator
  gen = Generator(3, 2, features=(8, 16), infill=True, fill_only=(1,), rngs=nnx.Rngs(0))
  for net in gen.nets:
    net.heads[0].bias[...] = jnp.full((3,), 0.5)  # a residual that would brighten
    net.mask_heads[0].bias[...] = jnp.full((1,), 40.0)  # fully open
  m = jnp.ones(X.shape[:3] + (1,))
  np.testing.assert_allclose(gen.nets[1](X), surroundings(X, m), atol=1e-6)
  assert float(jnp.abs(gen.nets[0](X) - surroundings(X, m)).max()) > 0.5
  # Without the in-fill form for the others, they keep the plain residual form.
  plain = Generator(3, 2, features=(8, 16), fill_only=(1,), rngs=nnx.Rngs(0))
  assert (plain.nets[0].infill, len(plain.nets[0].mask_heads)) == (False, 0)
  assert (plain.nets[1].infill, plain.nets[1].draws) == (True, False)
  with pytest.raises(ValueError, match="needs one network per source class"):
    Generator(3, 3, features=(8, 16), infill=True, fill_only=(1,), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="needs the in-fill form"):
    UNet(3, features=(8, 16), draws=False, rngs=nnx.Rngs(0))


def test_fill_only_generators_pay_their_own_proximity_weights():
  """The in-fill-only groups' L1 and edited fraction go to fill_l1 and fill_l0, the drawing
  groups' to l1 and l0: each pair adds up to the term over all groups, and without
  fill_only the terms are the plain ones."""
  from cfx_jax.methods.conditional.cycle import proximity
  xs = jax.random.uniform(jax.random.key(0), (2, 3, 8, 8, 3), minval=-1, maxval=1)
  xa = xs + jnp.stack([jnp.full((3, 8, 8, 3), 0.1), jnp.full((3, 8, 8, 3), -0.4)])
  plain = proximity(xa, xs, (0, 1), (), 0.0)
  np.testing.assert_allclose(plain["l1"], losses.l1(xa, xs), rtol=1e-6)
  split = proximity(xa, xs, (0, 1), (1,), 0.0)
  np.testing.assert_allclose(split["l1"], 0.1 / 2, rtol=1e-5)  # group 0 only, over 2 groups
  np.testing.assert_allclose(split["fill_l1"], 0.4 / 2, rtol=1e-5)
  for name in ("l1", "l0"):
    np.testing.assert_allclose(split[name] + split["fill_" + name], plain[name], rtol=1e-5)
  cfg_weights = get_recipe("syce").weights(2, {})
  assert (cfg_weights["fill_l1"], cfg_weights["fill_l0"]) == (cfg_weights["l1"], cfg_weights["l0"])


def _features(net, x):
  """The decoder features the heads read (the U-Net's forward pass without its heads)."""
  skips, h = [], x
  for block in net.down:
    h = block(h)
    skips.append(h)
  for conv, block, skip in zip(net.up_convs, net.up_blocks, reversed(skips[:-1])):
    h = jax.nn.leaky_relu(conv(jax.image.resize(h, (h.shape[0], 2 * h.shape[1],
                                                    2 * h.shape[2], h.shape[3]), "nearest")),
                          0.2)
    h = block(jnp.concatenate([h, skip], axis=-1))
  return h


def test_edited_fraction_counts_pixels_not_amounts():
  x = jnp.zeros((1, 4, 4, 3))
  small = x.at[0, 0, 0].set(0.01)
  large = x.at[0, 0, 0].set(1.0)
  assert float(losses.edited_fraction(x, x)) == 0.0
  # One edited pixel of 16 costs about 1/16 whatever the amount, unlike L1.
  assert float(losses.edited_fraction(large, x)) == pytest.approx(1 / 16 * 3 / 3.05, rel=1e-5)
  assert float(losses.edited_fraction(large, x)) < 3 * float(losses.edited_fraction(small, x))
  assert float(losses.l1(large, x)) == pytest.approx(100 * float(losses.l1(small, x)))


def test_edit_variation_charges_speckle_not_a_flat_fill():
  """Erasing a disc to its background costs edges only; speckle of 0.4 times its
  amplitude on the same pixels costs more; a uniform shift of the image costs nothing."""
  yy, xx = np.mgrid[:16, :16]
  disc = ((yy - 8) ** 2 + (xx - 8) ** 2 < 16).astype(np.float32)[None, :, :, None]
  x = jnp.asarray(0.5 * disc * np.ones((1, 1, 1, 3), np.float32))
  erased = jnp.zeros_like(x)
  speckle = x + 0.2 * disc * jnp.asarray(
      np.random.default_rng(0).choice([-1.0, 1.0], x.shape), jnp.float32)
  tv = lambda a: float(losses.edit_variation(a, x))
  assert tv(x + 0.3) == pytest.approx(0.0, abs=1e-7)
  assert tv(speckle) > tv(erased) > 0
  assert float(losses.l1(speckle, x)) < float(losses.l1(erased, x))


@pytest.mark.parametrize("name", ["syce", "sagen"])
def test_step_with_every_option_is_finite_and_deterministic(name):
  w = np.linspace(-1, 1, 16 * 16 * 3).reshape(16, 16, 3).astype(np.float32)
  clf = as_classifier(lambda x: (x * w).sum(axis=(1, 2, 3)), (16, 16, 3))
  spec = ModelSpec(16, 3, 2, (8, 16), (8, 16, 16), mask=name == "syce",
                   infill=name == "sagen", hard_mask=name == "sagen", disc_kind="patch")
  x = X.reshape(2, 2, 16, 16, 3)

  def run():
    models, state = gan.init(get_recipe(name), spec, seed=0, lr=1e-3, b1=0.5, disc_lr_scale=2.0)
    step = jax.jit(gan.make_train_step(get_recipe(name), models, clf.apply,
                                       {"l0": 1.0, "tv": 1.0, "flip_partial": 0.5},
                                       disc_steps=2, disc_jitter=1.0, flip_jitter=1.0))
    for _ in range(2):
      state, metrics = step(state, clf.params, x)
    return state, metrics

  (s1, m1), (s2, _) = run(), run()
  assert all(np.isfinite(float(v)) for v in m1.values())
  assert int(s1.nonfinite_step) == -1
  for a, b in zip(jax.tree.leaves(s1.gen), jax.tree.leaves(s2.gen)):
    np.testing.assert_array_equal(a, b)
  with pytest.raises(ValueError, match="disc_steps"):
    gan.make_train_step(get_recipe(name), None, clf.apply, {}, disc_steps=0)
  with pytest.raises(ValueError, match="flip_partial"):
    gan.make_train_step(get_recipe(name), None, clf.apply, {"flip_partial": 1.0})


def test_partial_edit_scales_each_images_edit_by_one_share_in_range():
  start = jnp.asarray(X[:4])
  edited = start + jnp.asarray(np.random.default_rng(1).normal(size=start.shape), jnp.float32)
  out = np.asarray(gan.partial_edit(jax.random.key(0), start, edited, 0.4))
  diff = np.asarray(edited - start)
  shares = np.sum(diff * (out - np.asarray(start)), axis=(1, 2, 3)) / np.sum(diff ** 2, (1, 2, 3))
  np.testing.assert_allclose(out, np.asarray(start) + shares[:, None, None, None] * diff,
                             atol=1e-5)
  assert np.all((shares >= 0.6 - 1e-6) & (shares <= 1.0 + 1e-6))
  assert np.ptp(shares) > 0   # one draw per image, not one for the batch
  np.testing.assert_allclose(gan.partial_edit(jax.random.key(0), start, edited, 0.0), edited,
                             atol=1e-6)


def test_step_with_runner_up_targets_is_finite_and_deterministic():
  """Three classes, every image trained toward its runner-up class, two disc updates."""
  w = np.stack([np.linspace(-1, 1, 16 * 16 * 3), np.linspace(1, -1, 16 * 16 * 3),
                np.cos(np.arange(16 * 16 * 3))], -1).reshape(16, 16, 3, 3).astype(np.float32)
  clf = as_classifier(lambda x: jnp.einsum("nhwc,hwck->nk", x, w), (16, 16, 3))
  spec = ModelSpec(16, 3, 3, (8, 16), (8, 16, 16))
  x = np.concatenate([X, X[:2]]).reshape(3, 2, 16, 16, 3)

  def run():
    models, state = gan.init(get_recipe("syce"), spec, seed=0, lr=1e-3, b1=0.5)
    step = jax.jit(gan.make_train_step(get_recipe("syce"), models, clf.apply, {},
                                       disc_steps=2, runner_up_share=1.0))
    return step(state, clf.params, x)

  (s1, m1), (s2, _) = run(), run()
  assert all(np.isfinite(float(v)) for v in m1.values())
  assert int(s1.nonfinite_step) == -1
  for a, b in zip(jax.tree.leaves(s1.gen), jax.tree.leaves(s2.gen)):
    np.testing.assert_array_equal(a, b)
