"""DISC's optimisation: the image prior that renders a counterfactual, the loss terms,
and the batched optimiser (vmapped over images, one compiled program per chunk).
The method and its loss are described in `cfx_jax.methods.disc.explainer`."""

from __future__ import annotations


import jax
import jax.numpy as jnp
import optax

from cfx_jax.methods import common


PARAMETERISATIONS = ("inr", "dip")
# Adam learning rates (fit, inversion) per parameterisation, when the config leaves them unset.
DEFAULT_LEARNING_RATES = {"inr": (1e-2, 2e-3), "dip": (1e-2, 2e-3)}


def learning_rates(cfg) -> tuple[float, float]:
  fit, inv = DEFAULT_LEARNING_RATES[cfg.parameterisation]
  return (float(cfg.fit_learning_rate if cfg.fit_learning_rate is not None else fit),
          float(cfg.learning_rate if cfg.learning_rate is not None else inv))


# Image priors ---------------------------------------------------------------------------


def init_prior(key, cfg, image_shape) -> tuple[jax.Array, dict]:
  """(fixed input, trainable params) of the image prior of one image.

  inr: the input is the Fourier encoding (H * W, 2F) of the pixel centres in [0, 1]^2,
  with frequencies ~ N(0, (inr_scale * side)^2) cycles per image; params an MLP.
  dip: the input is uniform noise (H, W, dip_noise) scaled by 0.1; params 3x3 convs.
  """
  height, width, channels = image_shape
  enc_key, init_key = jax.random.split(key)
  keys = iter(jax.random.split(init_key, 16))
  he = jax.nn.initializers.he_normal()
  glorot = jax.nn.initializers.glorot_normal()
  if cfg.parameterisation == "inr":
    ys = (jnp.arange(height) + 0.5) / height
    xs = (jnp.arange(width) + 0.5) / width
    coords = jnp.stack(jnp.meshgrid(ys, xs, indexing="ij"), -1).reshape(-1, 2)
    scale = float(cfg.inr_scale) * jnp.array([height, width], jnp.float32)
    freqs = jax.random.normal(enc_key, (2, int(cfg.inr_frequencies))) * scale[:, None]
    proj = 2.0 * jnp.pi * coords @ freqs
    fixed = jnp.concatenate([jnp.sin(proj), jnp.cos(proj)], axis=-1)
    sizes = [fixed.shape[-1]] + [int(cfg.inr_width)] * int(cfg.inr_depth)
    layers = [{"w": he(next(keys), (a, b)), "b": jnp.zeros((b,))}
              for a, b in zip(sizes, sizes[1:])]
    layers.append({"w": glorot(next(keys), (sizes[-1], channels)), "b": jnp.zeros((channels,))})
    return fixed, {"layers": layers}
  fixed = 0.1 * jax.random.uniform(enc_key, (height, width, int(cfg.dip_noise)))
  sizes = [int(cfg.dip_noise)] + [int(cfg.dip_width)] * int(cfg.dip_depth)
  layers = [{"w": he(next(keys), (3, 3, a, b)), "b": jnp.zeros((b,))}
            for a, b in zip(sizes, sizes[1:])]
  layers.append({"w": glorot(next(keys), (1, 1, sizes[-1], channels)),
                 "b": jnp.zeros((channels,))})
  return fixed, {"layers": layers}


def render(cfg, image_shape, fixed, params) -> jax.Array:
  """The prior's image (H, W, C) in (-1, 1)."""
  layers = params["layers"]
  if cfg.parameterisation == "inr":
    h = fixed
    for layer in layers[:-1]:
      h = jax.nn.relu(h @ layer["w"] + layer["b"])
    out = h @ layers[-1]["w"] + layers[-1]["b"]
    return jnp.tanh(out).reshape(image_shape)
  h = fixed
  for i, layer in enumerate(layers):
    h = conv_same(h, layer["w"]) + layer["b"]
    if i < len(layers) - 1:
      h = jax.nn.leaky_relu(h, 0.2)
  return jnp.tanh(h)


def conv_same(h: jax.Array, w: jax.Array) -> jax.Array:
  """'SAME' stride-1 convolution of one image (H, W, Cin) with w (kh, kw, Cin, Cout).

  As patches times a matrix: under jax.vmap over images, whose weights differ, this is a
  batched matmul, where lax.conv would become a grouped convolution (slow on XLA:CPU).
  """
  kh, kw = w.shape[:2]
  height, width = h.shape[:2]
  padded = jnp.pad(h, ((kh // 2, (kh - 1) // 2), (kw // 2, (kw - 1) // 2), (0, 0)))
  patches = jnp.concatenate([padded[i:i + height, j:j + width]
                             for i in range(kh) for j in range(kw)], axis=-1)
  return patches @ w.reshape(-1, w.shape[-1])


# Loss terms -----------------------------------------------------------------------------


def bn_statistics_loss(layers, first_multiplier: float = 10.0) -> jax.Array:
  """sum_l w_l (|mean - running_mean|^2 + |var - running_var|^2), w_0 = first_multiplier.

  layers: (features (..., C), running mean (C,), running var (C,)) per BatchNorm layer;
  mean and biased variance are taken over every axis but the channels - for a single
  image (1, h, w, C), over its spatial positions.
  """
  total = 0.0
  for i, (f, mean, var) in enumerate(layers):
    axes = tuple(range(f.ndim - 1))
    mu = jnp.mean(f, axis=axes)
    v = jnp.mean(jnp.square(f - mu), axis=axes)
    term = jnp.sum(jnp.square(mu - mean)) + jnp.sum(jnp.square(v - var))
    total = total + (first_multiplier if i == 0 else 1.0) * term
  return jnp.asarray(total)


def total_variation(image: jax.Array) -> jax.Array:
  """Deep inversion's l2 total variation of (H, W, C): |vertical diffs|_2 + |horizontal diffs|_2."""
  dh = image[1:] - image[:-1]
  dw = image[:, 1:] - image[:, :-1]
  return jnp.sqrt(jnp.sum(jnp.square(dh))) + jnp.sqrt(jnp.sum(jnp.square(dw)))


def l2_norm(image: jax.Array) -> jax.Array:
  return jnp.sqrt(jnp.sum(jnp.square(image)))


def stage_confidence(cfg, step) -> jax.Array:
  """Target confidence tau of the stage `step` is in: equal shares of the steps."""
  stages = jnp.asarray(tuple(cfg.confidence), jnp.float32)
  n, steps = len(cfg.confidence), int(cfg.steps)
  return stages[jnp.minimum(jnp.asarray(step) * n // steps, n - 1)]


def augment(image: jax.Array, key, cfg) -> jax.Array:
  """Random shift (circular, up to `jitter` pixels) and horizontal flip, when enabled."""
  if int(cfg.jitter) > 0:
    j = int(cfg.jitter)
    shift = jax.random.randint(key, (2,), -j, j + 1)
    image = jnp.roll(image, (shift[0], shift[1]), axis=(0, 1))
  if cfg.flip:
    image = jnp.where(jax.random.bernoulli(jax.random.fold_in(key, 1)), image[:, ::-1], image)
  return image


def disc_loss(cf, x, target, tau, key, *, logits_fn, cfg, bn_fn=None, uncertainty_fn=None):
  """DISC objective of one counterfactual cf (H, W, C) for query x and class `target`.

  logits_fn(images (1, H, W, C)) -> (1, K); bn_fn(images) -> (logits, BatchNorm triples)
  from one forward pass (see `bn_statistics_loss`), used instead of logits_fn while
  bn > 0; uncertainty_fn(images) -> (1,). tau: the confidence at which the
  cross-entropy stops pushing. Returns (total, dict of the unweighted terms).
  """
  seen = augment(cf, key, cfg)[None]
  if cfg.bn > 0:
    logits, layers = bn_fn(seen)
  else:
    logits = logits_fn(seen)
  logp = jax.nn.log_softmax(logits[0])[target]
  terms = {"ce": jax.nn.relu(jnp.log(tau) - logp), "tv": total_variation(cf), "l2": l2_norm(cf),
           "proximity": jnp.mean(jnp.abs(cf - x))}
  total = terms["ce"] + cfg.tv * terms["tv"] + cfg.l2 * terms["l2"]
  total = total + cfg.proximity * terms["proximity"]
  if cfg.bn > 0:
    terms["bn"] = bn_statistics_loss(layers, cfg.bn_first)
    total = total + cfg.bn * terms["bn"]
  if cfg.manifold > 0:
    terms["manifold"] = uncertainty_fn(seen)[0]
    total = total + cfg.manifold * terms["manifold"]
  return total, terms


# Optimisation ---------------------------------------------------------------------------


def optimise_counterfactuals(images, targets, key, cfg, *, logits_fn, bn_fn=None,
                             uncertainty_fn=None, ids=None):
  """Fit a prior to every image, then invert it; returns (counterfactuals, traces).

  jax.vmap over images of a fit scan and an inversion scan. traces: "fit" (N, fit_steps)
  MSE and "loss" (N, steps) DISC objective. `ids` (N,) seed each image's prior and jitter
  (default 0..N-1); pass global indices when optimising a chunk.
  """
  images = jnp.asarray(images)
  n = images.shape[0]
  ids = jnp.arange(n) if ids is None else jnp.asarray(ids)
  fit_opt, opt = optimisers(cfg)

  def one_image(x, t, k):
    params, fit_loss, residual_of, inversion = image_stages(
        x, t, k, cfg, logits_fn=logits_fn, bn_fn=bn_fn, uncertainty_fn=uncertainty_fn)
    params, fit_trace = common.minimise(fit_loss, params, fit_opt, int(cfg.fit_steps))
    loss, counterfactual = inversion(residual_of(params))
    params, trace = common.minimise(loss, params, opt, int(cfg.steps))
    return counterfactual(params), {"fit": fit_trace, "loss": trace}

  return jax.vmap(one_image)(images, jnp.asarray(targets), common.image_keys(key, ids))


def optimisers(cfg) -> tuple[optax.GradientTransformation, optax.GradientTransformation]:
  """Adam of the prior fit and of the inversion."""
  fit_lr, lr = learning_rates(cfg)
  return (optax.adam(optax.cosine_decay_schedule(fit_lr, max(int(cfg.fit_steps), 1),
                                                 alpha=0.1)),
          optax.adam(optax.cosine_decay_schedule(lr, int(cfg.steps), alpha=0.1)))


def image_stages(x, t, key, cfg, *, logits_fn, bn_fn=None, uncertainty_fn=None):
  """The two optimisations `optimise_counterfactuals` runs for image x (H, W, C), target t
  and key `key` (see `common.image_keys`): (initial prior params, fit_loss(p, step),
  residual_of(fitted params), inversion(residual) -> (loss(p, step), counterfactual(p)))."""
  image_shape = tuple(x.shape)
  prior_key, aug_key = jax.random.split(key)
  fixed, params = init_prior(prior_key, cfg, image_shape)

  def draw(p):
    return render(cfg, image_shape, fixed, p)

  def fit_loss(p, _):
    return jnp.mean(jnp.square(draw(p) - x))

  def residual_of(p):
    return (jax.lax.stop_gradient(x - draw(p)) if cfg.keep_residual else jnp.zeros_like(x))

  def inversion(residual):
    def counterfactual(p):
      return jnp.clip(draw(p) + residual, -1.0, 1.0)

    def loss(p, step):
      return disc_loss(counterfactual(p), x, t, stage_confidence(cfg, step),
                       jax.random.fold_in(aug_key, step), logits_fn=logits_fn, cfg=cfg,
                       bn_fn=bn_fn, uncertainty_fn=uncertainty_fn)[0]

    return loss, counterfactual

  return params, fit_loss, residual_of, inversion
