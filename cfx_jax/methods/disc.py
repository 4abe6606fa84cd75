"""DISC: counterfactuals by deep model inversion (Thiagarajan et al., 2021, arXiv 2109.14274).

The counterfactual of a query x is not optimised pixel by pixel but through an image
prior: a small network g_theta that renders the whole image. Two parameterisations:

  "inr" (default): an implicit neural representation, a Fourier-feature MLP over the
        pixel coordinates (Tancik et al., 2020). Per pixel it is a few small matmuls,
        so a vmap over images is plain batched linear algebra, cheap on CPU.
  "dip": a deep image prior, a small conv net with a fixed noise input (Ulyanov et al.);
        its convolutions are written as patch matmuls so that per-image weights vmap
        into batched matmuls, but it is still several times slower than "inr" here.

theta is first fitted to x (`fit_steps` of Adam on the MSE), then optimised for

  CE_tau(target)                                   cross-entropy, hinged at confidence tau
  + bn   * sum_l w_l (|mu_l - m_l|^2 + |v_l - s_l|^2)   BatchNorm statistics (w_0 = bn_first)
  + tv   * (|x_h diff|_2 + |x_w diff|_2)           total variation (deep inversion's l2 form)
  + l2   * |x|_2                                   image norm
  + proximity * mean |x' - x|                      stay close to the query (L1)
  + manifold  * u_aux(x')                          uncertainty of the auxiliary model

BatchNorm statistics are per image: mu_l, v_l are the mean and (biased) variance over the
spatial positions of the single counterfactual, since each explanation is its own
optimisation (deep inversion synthesises a batch and uses batch statistics); they are
matched to the layer's running mean m_l and variance s_l. The spatial statistics of one
image differ from the population ones, so the term measures how *typical* the image's
feature statistics are, and it does not vanish at the query.

Progressive schedule: the target confidence tau is raised in stages (`confidence`, one
equal share of the steps each). The hinged CE, max(0, log tau - log p_target), stops
pushing once the current stage's confidence is reached, so the regularisers (proximity
above all) pull the image back to the smallest change that keeps it there before the next
stage asks for more; the last stage's tau (> 0.5) leaves a margin past the boundary.

Residual: with `keep_residual` (default) the counterfactual is g_theta + (x - g_theta_fit),
the fit's residual added back as a constant, so the optimisation starts exactly at the
query and the map |x' - x| shows only what the inversion changed; the prior still shapes
every change, since g_theta is what moves. Without it the counterfactual is g_theta alone
and carries the fit's error everywhere.

The whole optimisation of a chunk of images is one compiled program: jax.vmap over images
of two jax.lax.scans (fit, then inversion). Image i of a call draws its prior's
initialisation (and its jitter) from fold_in(key, ids[i]), as in FIDO, so its result does
not depend on the batch or chunk it is optimised in.

Defaults: the paper runs ~2-3k iterations on GPU; 300 inversion steps after a 200-step fit
are enough on the small images here and keep a CPU run short. BN weight 0.01 (first layer
x10), TV 1e-4 and l2 1e-5 are deep inversion's reference values. TV and l2 are weak on
small images; the per-image BN term is not (tens to hundreds at a real image, mostly from
the deeper layers, whose per-image variance sits below the population's), so it moves
pixels away from the query everywhere - `benchmarks/disc_ablation.py` measures what it
costs in proximity and localisation. Proximity 5 and manifold 1 were chosen on the lesion
set so that both terms act against a cross-entropy of a few nats.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from cfx_jax import validation
from cfx_jax.batching import map_in_chunks
from cfx_jax.classifier import Classifier, as_classifier
from cfx_jax.explanation import Explanation
from cfx_jax.methods import optimised
from cfx_jax.methods.fido import image_keys, other_class_on

PARAMETERISATIONS = ("inr", "dip")
# Adam learning rates (fit, inversion) per parameterisation, when the config leaves them unset.
DEFAULT_LEARNING_RATES = {"inr": (1e-2, 2e-3), "dip": (1e-2, 2e-3)}


def disc_config(**overrides) -> ml_collections.ConfigDict:
  """Deep-inversion reference weights, a CPU-sized schedule; overrides on top (unknown raise)."""
  c = ml_collections.ConfigDict()
  c.parameterisation = "inr"    # "inr" (Fourier-feature MLP) or "dip" (conv net on noise)
  c.fit_steps = 200             # Adam steps of MSE to the query before the inversion
  c.fit_learning_rate = ml_collections.FieldReference(None, field_type=float)
  c.steps = 300                 # inversion steps
  c.learning_rate = ml_collections.FieldReference(None, field_type=float)
  c.keep_residual = True        # add the fit's residual back (start exactly at the query)
  c.inr_frequencies = 64        # Fourier features (each gives a sine and a cosine)
  c.inr_scale = 0.25            # frequency std, x side: 8 cycles per image at 32 px
  c.inr_width = 64
  c.inr_depth = 2               # hidden layers
  c.dip_width = 32
  c.dip_depth = 3               # 3x3 conv layers before the 1x1 output layer
  c.dip_noise = 8               # channels of the fixed noise input
  c.confidence = (0.6, 0.75, 0.9)  # target confidence per stage (progressive schedule)
  c.bn = 0.01                   # BatchNorm-statistics weight (0: off)
  c.bn_first = 10.0             # multiplier of the first BatchNorm layer
  c.tv = 1e-4
  c.l2 = 1e-5
  c.proximity = 5.0             # weight of mean |x' - x|
  c.manifold = 1.0              # weight of the auxiliary model's uncertainty (0: off)
  c.jitter = 0                  # random shifts of up to this many pixels (0: off)
  c.flip = False                # random horizontal flips of what the classifier sees
  c.chunk_size = 64             # images per compiled call
  c.seed = 0
  c.warn_failures = True        # warn, listing indices, when a counterfactual misses its target
  return optimised.settings("DISC", c, overrides, check_config)


def check_config(cfg) -> None:
  """Fail before compiling on settings the optimiser cannot use."""
  if cfg.parameterisation not in PARAMETERISATIONS:
    raise ValueError(f"unknown DISC parameterisation {cfg.parameterisation!r}; available: "
                     f"{list(PARAMETERISATIONS)}")
  for name in ("steps", "inr_frequencies", "inr_width", "dip_width", "dip_depth", "dip_noise",
               "chunk_size"):
    if int(cfg[name]) < 1:
      raise ValueError(f"{name} must be at least 1, got {cfg[name]}")
  for name in ("fit_steps", "inr_depth", "jitter"):
    if int(cfg[name]) < 0:
      raise ValueError(f"{name} must be non-negative, got {cfg[name]}")
  for name in ("bn", "bn_first", "tv", "l2", "proximity", "manifold"):
    if not cfg[name] >= 0:
      raise ValueError(f"{name} must be non-negative, got {cfg[name]}")
  for name in ("fit_learning_rate", "learning_rate"):
    if cfg[name] is not None and not cfg[name] > 0:
      raise ValueError(f"{name} must be positive, got {cfg[name]}")
  if not cfg.inr_scale > 0:
    raise ValueError(f"inr_scale must be positive, got {cfg.inr_scale}")
  stages = tuple(cfg.confidence)
  if (not stages or any(not 0 < t < 1 for t in stages)
      or any(b < a for a, b in zip(stages, stages[1:]))):
    raise ValueError(f"confidence must be a non-empty, non-decreasing sequence in (0, 1), "
                     f"got {stages}")
  if len(stages) > int(cfg.steps):
    raise ValueError(f"{len(stages)} confidence stages need at least as many steps, "
                     f"got {cfg.steps}")


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
  image_shape = tuple(images.shape[1:])
  ids = jnp.arange(n) if ids is None else jnp.asarray(ids)
  fit_steps, steps = int(cfg.fit_steps), int(cfg.steps)
  fit_lr, lr = learning_rates(cfg)
  fit_opt = optax.adam(optax.cosine_decay_schedule(fit_lr, max(fit_steps, 1), alpha=0.1))
  opt = optax.adam(optax.cosine_decay_schedule(lr, steps, alpha=0.1))

  def one_image(x, t, k):
    prior_key, aug_key = jax.random.split(k)
    fixed, params = init_prior(prior_key, cfg, image_shape)

    def draw(p):
      return render(cfg, image_shape, fixed, p)

    def fit_body(carry, _):
      p, state = carry
      mse, grad = jax.value_and_grad(lambda q: jnp.mean(jnp.square(draw(q) - x)))(p)
      updates, state = fit_opt.update(grad, state, p)
      return (optax.apply_updates(p, updates), state), mse

    (params, _), fit_trace = jax.lax.scan(fit_body, (params, fit_opt.init(params)), None,
                                          length=fit_steps)
    residual = (jax.lax.stop_gradient(x - draw(params)) if cfg.keep_residual
                else jnp.zeros_like(x))

    def counterfactual(p):
      return jnp.clip(draw(p) + residual, -1.0, 1.0)

    def loss(p, step):
      return disc_loss(counterfactual(p), x, t, stage_confidence(cfg, step),
                       jax.random.fold_in(aug_key, step), logits_fn=logits_fn, cfg=cfg,
                       bn_fn=bn_fn, uncertainty_fn=uncertainty_fn)[0]

    def body(carry, step):
      p, state = carry
      value, grad = jax.value_and_grad(loss)(p, step)
      updates, state = opt.update(grad, state, p)
      return (optax.apply_updates(p, updates), state), value

    (params, _), trace = jax.lax.scan(body, (params, opt.init(params)), jnp.arange(steps))
    return counterfactual(params), {"fit": fit_trace, "loss": trace}

  return jax.vmap(one_image)(images, jnp.asarray(targets), image_keys(key, ids))


class DiscExplainer(optimised.ClassifierBound):
  """DISC counterfactuals (and their difference maps) for a batch of images.

  counterfactual: the optimised image. maps: |counterfactual - query| summed over
  channels, (N, H, W). target: the `target` passed to `explain`, or else the most likely
  class other than the predicted one on the query. `Explanation.flipped` is True where the
  counterfactual is classified as its target; `report_failures` lists the others.

  auxiliary: an `AuxiliaryModel` (cfx_jax.methods.auxiliary) trained on the classifier's
  data; required while `manifold > 0`. The BatchNorm term needs a classifier that exposes
  `bn_features` (the reference CNN does); set `bn=0` for any other.
  """

  def __init__(self, classifier, config=None, *, auxiliary=None, image_shape=None):
    config = optimised.as_settings(config, disc_config)
    check_config(config)
    self.classifier = optimised.bind_classifier(classifier, image_shape)
    self.config = config
    if config.bn > 0 and self.classifier.bn_features is None:
      raise ValueError(
          f"the BatchNorm-statistics term (bn={config.bn}) needs a classifier that exposes its "
          "BatchNorm layers as `bn_features` (e.g. a CNNClassifier wrapped by from_module); "
          "this one has none: set bn=0")
    if config.manifold > 0:
      if auxiliary is None:
        raise ValueError(
            f"the manifold term (manifold={config.manifold}) needs an auxiliary model: pass "
            "auxiliary=train_auxiliary(...) (cfx_jax.methods.auxiliary) or set manifold=0")
      if tuple(auxiliary.image_shape) != self.image_shape:
        raise ValueError(f"auxiliary model was built for images of shape "
                         f"{tuple(auxiliary.image_shape)}, the classifier for {self.image_shape}")
      if auxiliary.num_classes != self.num_classes:
        raise ValueError(f"auxiliary model has {auxiliary.num_classes} classes, the classifier "
                         f"{self.num_classes}: train it on the classifier's data")
    self.auxiliary = auxiliary if config.manifold > 0 else None
    self._program = jax.jit(self._explain_chunk)

  @classmethod
  def fit(cls, classifier, images, *, seed: int = 0, config=None, workdir=None) -> DiscExplainer:
    """Trains only the auxiliary uncertainty model, on `images` labelled by the
    classifier's decisions (what the classifier treats as each class); `explain` optimises."""
    from cfx_jax.methods.auxiliary import auxiliary_config, train_auxiliary

    cfg = optimised.as_settings(config, disc_config)
    cfg.seed = int(seed)
    images = np.asarray(images)
    clf = as_classifier(classifier, images.shape[1:])
    aux = None
    if cfg.manifold > 0:
      aux, _ = train_auxiliary(auxiliary_config(seed=int(seed)),
                               {"image": images, "label": clf.predict(images)})
    return cls(clf, cfg, auxiliary=aux)

  def save(self, path: str) -> None:
    """The config, the classifier's fingerprint and the auxiliary model."""
    from cfx_jax.methods.auxiliary import save_auxiliary

    if self.auxiliary is not None:
      save_auxiliary(os.path.join(path, "auxiliary"), self.auxiliary)
    optimised.save_settings(path, "disc", self)

  @classmethod
  def from_meta(cls, meta: dict, classifier: Classifier, path: str) -> DiscExplainer:
    from cfx_jax.methods.auxiliary import load_auxiliary

    cfg = disc_config(**{k: tuple(v) if isinstance(v, list) else v
                         for k, v in meta["config"].items()})
    aux = load_auxiliary(os.path.join(path, "auxiliary")) if cfg.manifold > 0 else None
    return cls(classifier, cfg, auxiliary=aux)

  def _explain_chunk(self, params, aux_params, key, x, t, ids):
    clf, aux = self.classifier, self.auxiliary
    probs = jax.nn.softmax(clf.apply(params, x), axis=-1)
    predicted = jnp.argmax(probs, axis=-1)
    t = jnp.where(t < 0, other_class_on(probs, predicted), t).astype(jnp.int32)
    bn_fn = (lambda im: clf.bn_features(params, im)) if self.config.bn > 0 else None
    unc_fn = (lambda im: aux.uncertainty_fn(aux_params, im)) if aux is not None else None
    cf, _ = optimise_counterfactuals(x, t, key, self.config,
                                     logits_fn=lambda im: clf.apply(params, im),
                                     bn_fn=bn_fn, uncertainty_fn=unc_fn, ids=ids)
    cf_probs = jax.nn.softmax(clf.apply(params, cf), axis=-1)
    maps = jnp.sum(jnp.abs(cf - x), axis=-1)
    return Explanation(maps=maps, target=t, probs=probs, counterfactual=cf, cf_probs=cf_probs)

  def explain(self, images, target=None, *, ids=None) -> Explanation:
    """Counterfactuals of every image, in compiled chunks.

    target: the class each counterfactual should reach (int or (N,), not the predicted
    class); default: the most likely other class. ids: integers that seed each image's
    prior (default 0..N-1); pass dataset indices to get the same explanation of an image
    whatever call it is in.
    """
    x = validation.check_images(images, self.image_shape)
    n = len(x)
    ids = optimised.image_ids(ids, n)
    if target is None:
      t = np.full((n,), -1, np.int32)
    else:
      t = validation.check_target(target, n, self.num_classes,
                                  self.classifier.predict(x, int(self.config.chunk_size)))
    key = jax.random.key(int(self.config.seed))
    aux_params = self.auxiliary.params if self.auxiliary is not None else None
    out = map_in_chunks(
        lambda xb, tb, ib: self._program(self.classifier.params, aux_params, key, xb, tb, ib),
        [x, t, ids], int(self.config.chunk_size))
    if self.config.warn_failures:
      self.report_failures(out, stacklevel=3)
    return out

  def report_failures(self, explanation: Explanation, *, stacklevel: int = 2) -> np.ndarray:
    """Indices whose counterfactual is not classified as its target, with a warning."""
    return optimised.report_failures("DISC", explanation, "did not reach the target class",
                                     stacklevel)
