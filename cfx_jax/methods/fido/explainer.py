"""FIDO: saliency by counterfactual in-filling (Chang et al., 2019, arXiv 1807.08024).

Per image, FIDO learns Bernoulli *drop* probabilities sigmoid(theta) on a coarse grid.
Each step draws relaxed-Bernoulli (concrete) masks, upsamples them bilinearly to the
image, in-fills the dropped pixels (`x~ = z * x + (1 - z) * fill`, z the keep mask) and
scores the result with the class log-odds `s_c = logit_c - logsumexp_{k != c} logit_k`:

  SSR (smallest sufficient region): minimise  -s_c(x~) + lambda * mean(keep prob)
  SDR (smallest destroying region): minimise   s_c(x~) + lambda * mean(drop prob)

plus an optional total-variation term on the upsampled probabilities. The original code
optimises one image at a time in a Python loop; here a chunk of images is optimised
together: `jax.vmap` over images of the step. On accelerators the steps are a
`jax.lax.scan`, so the whole optimisation is one compiled program; on the CPU the same
batched step is dispatched from Python once per step (`loop`), because XLA:CPU emits the
classifier's convolutions inside a compiled loop as plain loops (benchmarks/step_forms.py;
in benchmarks/optimiser_throughput.py chunks of 4 stepped from Python ran 3.5x the scan).

Randomness is per image: image i of a call draws from `fold_in(key, ids[i])` (ids default
to 0..N-1), so its result does not depend on the batch or chunk it is optimised in.
"""

from __future__ import annotations


import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from cfx_jax import integrity, validation
from cfx_jax.batching import map_in_chunks
from cfx_jax.classifier import Classifier
from cfx_jax.explanation import Explanation
from cfx_jax.methods import common
from cfx_jax.methods.fido.infillers import INFILLERS, Infiller, get_infiller

OBJECTIVES = ("ssr", "sdr")
LOOPS = ("auto", "scan", "host")
# The paper's lambda = 1e-3 multiplies a *sum* over a 56 x 56 grid (224-pixel images, grid
# side = image side / 4). We regularise the *mean* over the grid, which does not depend on
# the grid size; the same penalty for dropping (or keeping) the whole image is
# 1e-3 * 56 * 56 = 3.136 nats of log-odds.
PAPER_SPARSITY = 1e-3 * 56 * 56
# Initial keep probability when the config leaves it unset. SDR starts from the intact
# image (few pixels dropped) and grows the destroying region; SSR starts undecided.
DEFAULT_INIT_KEEP = {"sdr": 0.9, "ssr": 0.5}
# The paper's counterfactual: one threshold (`cfx_jax.paper_form("fido")`).
PAPER_FORM = {"thresholds": ()}


def fido_config(**overrides) -> ml_collections.ConfigDict:
  """Defaults of the paper's code but the widening region of `thresholds` (the paper's form:
  `PAPER_FORM`); keyword overrides on top (unknown names raise)."""
  c = ml_collections.ConfigDict()
  c.objective = "sdr"          # "sdr" (destroy class evidence) or "ssr" (keep just enough)
  c.grid = ml_collections.FieldReference(None, field_type=int)  # None: image side / 4
  c.temperature = 0.1          # of the concrete (relaxed Bernoulli) samples
  c.samples = 8                # mask samples per step
  c.steps = 300
  c.learning_rate = 0.05       # Adam, decayed linearly to 0 over the steps
  c.sparsity = PAPER_SPARSITY  # lambda on the grid *mean* of keep (SSR) / drop (SDR) prob
  c.tv = 0.0                   # weight of the total variation of the upsampled probability
  c.warmup = 30                # steps over which the regularisers ramp up linearly from 0
  c.init_keep = ml_collections.FieldReference(None, field_type=float)  # None: by objective
  c.infiller = "blur"          # a name in INFILLERS (or pass a callable to FidoExplainer)
  c.threshold = 0.5            # counterfactual drops pixels whose drop prob exceeds this
  # Thresholds tried in turn, the paper's first, then ever larger in-filled regions; the
  # counterfactual is the first whose in-fill reaches its target, else the last. Empty:
  # `threshold` alone (the paper's). See `FidoExplainer`.
  c.thresholds = (0.5, 0.4, 0.3, 0.2, 0.1)
  # Images optimised together; each carries `samples` copies. None: 4 on the CPU, where
  # small batches stepped from Python run fastest (docs/performance.md), 64 elsewhere.
  c.chunk_size = ml_collections.FieldReference(None, field_type=int)
  c.loop = "auto"              # "scan" (one compiled loop), "host" (a compiled step per
                               # step) or "auto": host on the CPU, scan elsewhere
  c.seed = 0
  c.warn_failures = True       # warn, listing indices, when a counterfactual misses its target
  c.progress = True            # show images done per compiled chunk (a bar on a terminal)
  return common.settings("FIDO", c, overrides, check_config)


def check_config(cfg) -> None:
  """Fail before compiling on settings the optimiser cannot use."""
  if cfg.objective not in OBJECTIVES:
    raise ValueError(f"unknown FIDO objective {cfg.objective!r}; available: {list(OBJECTIVES)}")
  for name in ("temperature", "learning_rate"):
    if not cfg[name] > 0:
      raise ValueError(f"{name} must be positive, got {cfg[name]}")
  for name in ("samples", "steps"):
    if int(cfg[name]) < 1:
      raise ValueError(f"{name} must be at least 1, got {cfg[name]}")
  for name in ("sparsity", "tv", "warmup"):
    if cfg[name] < 0:
      raise ValueError(f"{name} must be non-negative, got {cfg[name]}")
  if cfg.grid is not None and int(cfg.grid) < 1:
    raise ValueError(f"grid must be a positive side length, got {cfg.grid}")
  if cfg.init_keep is not None and not 0 < cfg.init_keep < 1:
    raise ValueError(f"init_keep must lie in (0, 1), got {cfg.init_keep}")
  if cfg.chunk_size is not None and int(cfg.chunk_size) < 1:
    raise ValueError(f"chunk_size must be at least 1, got {cfg.chunk_size}")
  if cfg.loop not in LOOPS:
    raise ValueError(f"unknown loop {cfg.loop!r}; available: {list(LOOPS)}")
  for t in (cfg.threshold, *cfg.thresholds):
    if not 0 < t < 1:
      raise ValueError(f"thresholds must lie in (0, 1), got {t}")
  get_infiller(cfg.infiller)


def grid_shape(cfg, image_shape) -> tuple[int, int]:
  """The coarse mask grid: `cfg.grid` square, or a quarter of the image in each direction."""
  if cfg.grid is not None:
    return int(cfg.grid), int(cfg.grid)
  return max(1, image_shape[0] // 4), max(1, image_shape[1] // 4)


def initial_theta(cfg, shape, dtype=jnp.float32) -> jax.Array:
  keep = cfg.init_keep if cfg.init_keep is not None else DEFAULT_INIT_KEEP[cfg.objective]
  return jnp.full(shape, np.log((1.0 - keep) / keep), dtype)  # drop logit


def log_odds(logits: jax.Array, c) -> jax.Array:
  """s_c = logit_c - logsumexp_{k != c} logit_k, for logits (..., K); equals s for binary."""
  own = jax.nn.one_hot(c, logits.shape[-1], dtype=bool)
  others = jnp.where(own, -jnp.inf, logits)
  return jnp.sum(jnp.where(own, logits, 0.0), axis=-1) - jax.nn.logsumexp(others, axis=-1)


def upsample(grid: jax.Array, height: int, width: int) -> jax.Array:
  """Bilinear upsampling of (..., h, w) to (..., height, width)."""
  return jax.image.resize(grid, grid.shape[:-2] + (height, width), "bilinear")


def total_variation(maps: jax.Array) -> jax.Array:
  """Mean absolute difference of neighbouring pixels of (..., H, W): penalises ragged masks."""
  dh = jnp.abs(jnp.diff(maps, axis=-2))
  dw = jnp.abs(jnp.diff(maps, axis=-1))
  return (jnp.mean(dh) if dh.size else 0.0) + (jnp.mean(dw) if dw.size else 0.0)


def regulariser_ramp(step, warmup) -> jax.Array:
  """Linear warm-up of the regularisers: the data term alone shapes the first steps."""
  if warmup <= 0:
    return jnp.asarray(1.0)
  return jnp.minimum(1.0, (jnp.asarray(step, jnp.float32) + 1.0) / warmup)


def fido_loss(theta, x, c, key, step, *, score_fn, infill, cfg):
  """FIDO objective of one image: theta (h, w) drop logits, x (H, W, C), c its class.

  score_fn(images (S, H, W, C), c) -> (S,) log-odds of class c; infill is an `Infiller`.
  The concrete samples are reparameterised, so for a fixed key this is a smooth,
  deterministic function of theta.
  """
  height, width = x.shape[0], x.shape[1]
  samples = int(cfg.samples)
  mask_key, fill_key = jax.random.split(key)
  noise = jax.random.logistic(mask_key, (samples,) + theta.shape, theta.dtype)
  drop = jax.nn.sigmoid((theta + noise) / cfg.temperature)
  keep = (1.0 - upsample(drop, height, width))[..., None]
  xs = jnp.broadcast_to(x, (samples,) + x.shape)
  fills = infill(xs, keep, fill_key)
  filled = keep * xs + (1.0 - keep) * fills
  score = jnp.mean(score_fn(filled, c))
  drop_prob = jax.nn.sigmoid(theta)
  if cfg.objective == "ssr":
    data, area = -score, jnp.mean(1.0 - drop_prob)
  else:
    data, area = score, jnp.mean(drop_prob)
  reg = cfg.sparsity * area
  if cfg.tv > 0:
    reg = reg + cfg.tv * total_variation(upsample(drop_prob, height, width))
  return data + regulariser_ramp(step, cfg.warmup) * reg


def optimise_masks(score_fn, infill, images, classes, key, cfg, *, ids=None):
  """Optimise every image's drop logits; returns (theta (N, h, w), loss trace (N, steps)).

  jax.vmap over images of a jax.lax.scan over the Adam steps. `ids` (N,) seed each
  image's randomness (default 0..N-1); pass global indices when optimising a chunk.
  """
  images = jnp.asarray(images)
  n, height, width = images.shape[:3]
  ids = jnp.arange(n) if ids is None else jnp.asarray(ids)
  opt = mask_optimiser(cfg)
  theta0 = initial_theta(cfg, grid_shape(cfg, (height, width)), images.dtype)

  def one_image(x, c, k):
    return common.minimise(image_loss(score_fn, infill, x, c, k, cfg), theta0, opt,
                           int(cfg.steps))

  return jax.vmap(one_image)(images, jnp.asarray(classes), common.image_keys(key, ids))


def initial_carry(cfg, images):
  """(drop logits, Adam state) of every image before its first step, as `mask_step` takes
  them."""
  theta0 = initial_theta(cfg, grid_shape(cfg, images.shape[1:3]), images.dtype)
  thetas = jnp.broadcast_to(theta0, (images.shape[0],) + theta0.shape)
  return jax.vmap(lambda t: (t, mask_optimiser(cfg).init(t)))(thetas)


def mask_step(score_fn, infill, images, classes, key, cfg, ids, carry, step):
  """Step `step` of `optimise_masks` for every image: the carry after it. Called once per
  step from Python, the steps give `optimise_masks`' drop logits (up to rounding)."""
  opt = mask_optimiser(cfg)

  def one_image(x, c, k, carry):
    return common.update(image_loss(score_fn, infill, x, c, k, cfg), opt)(carry, step)[0]

  return jax.vmap(one_image)(images, classes, common.image_keys(key, ids), carry)


def mask_optimiser(cfg) -> optax.GradientTransformation:
  return optax.adam(optax.linear_schedule(cfg.learning_rate, 0.0, int(cfg.steps)))


def image_loss(score_fn, infill, x, c, key, cfg):
  """loss(theta, step) that `optimise_masks` minimises for image x (H, W, C) of class c,
  whose key is `key` (see `common.image_keys`)."""
  infill = get_infiller(infill)
  fill = infill
  if not (infill.uses_mask or infill.uses_key):
    # Mask- and key-free fills are computed once, outside the step loop.
    fixed = infill(x[None], jnp.ones((1,) + x.shape[:2] + (1,), x.dtype), key)[0]
    fill = Infiller(lambda imgs, m, kk: jnp.broadcast_to(fixed, imgs.shape), infill.name,
                    uses_mask=False, uses_key=False)

  def loss(theta, step):
    return fido_loss(theta, x, c, jax.random.fold_in(key, step), step,
                     score_fn=score_fn, infill=fill, cfg=cfg)

  return loss


class FidoExplainer(common.ClassifierBound):
  """FIDO saliency maps and in-filled counterfactuals for a batch of images.

  maps: the keep probability (SSR) or drop probability (SDR), upsampled to (N, H, W).
  counterfactual: the image with the pixels whose upsampled drop probability exceeds a
  threshold in-filled (the mode of the learned mask, so it is a real removal rather
  than a blend). For SDR that removes the destroying region; for SSR it removes
  everything outside the sufficient region. The paper thresholds at one value
  (`threshold`, 0.5); where the in-fill of that region does not yet flip the classifier
  (the optimisation ranks the pixels, but a region of probability 0.4 may be what
  destroys the evidence), the counterfactual fails although the mask holds the answer.
  So by default the thresholds of `thresholds` are tried in turn, each in-filled and
  classified in the same compiled call, and the counterfactual is the first that
  reaches its target (the last where none does): for SDR, the paper's region, widened
  along the learned ranking until its in-fill flips the decision. (Starting from a
  higher threshold finds smaller flipping regions, but on the lesion set those remove
  less of the lesion: twin removal 0.15 against 0.35.) `thresholds=()` is the paper's
  form.
  target: SDR - the class the counterfactual should reach: the `target` passed to
  `explain`, or else the most likely class other than the explained one on the
  counterfactual (for a binary classifier, the other class). SSR - the explained class,
  which the counterfactual should keep. `Explanation.flipped` is True where the
  counterfactual is classified as its target; `report_failures` lists the others.
  """

  def __init__(self, classifier, config=None, *, image_shape=None, infiller=None):
    config = common.as_settings(config, fido_config)
    check_config(config)
    self.classifier = common.bind_classifier(classifier, image_shape)
    self.config = config
    self.infiller = get_infiller(config.infiller if infiller is None else infiller)
    self._programs = jax.jit(self._program, static_argnames="targeted")
    self._start = jax.jit(self._resolve)
    self._init = jax.jit(lambda x: initial_carry(self.config, x))
    self._step = jax.jit(self._mask_step, static_argnames="targeted", donate_argnums=6)
    self._finish = jax.jit(self._counterfactuals, static_argnames="targeted")

  @classmethod
  def fit(cls, classifier, images, *, seed: int = 0, config=None, workdir=None) -> FidoExplainer:
    """Nothing to train: binds the classifier and the in-filler; `explain` optimises."""
    cfg = common.as_settings(config, fido_config)
    cfg.seed = int(seed)
    return cls(classifier, cfg, image_shape=np.asarray(images).shape[1:])

  def save(self, path: str) -> None:
    """The config and the classifier's fingerprint (there are no weights)."""
    if self.config.infiller not in INFILLERS:
      raise ValueError("an explainer with a custom in-filler cannot be saved by name; "
                       "save the in-filler itself and pass it again when loading")
    with integrity.saving(path) as folder:
      common.save_settings(folder, "fido", self)

  @classmethod
  def from_meta(cls, meta: dict, classifier: Classifier, path: str) -> FidoExplainer:
    return cls(classifier, fido_config(**meta["config"]))

  def _resolve(self, params, x, c):
    """(the class each image is explained for: `c`, or the predicted one where c < 0,
    the classifier's probabilities)."""
    logits = self.classifier.apply(params, x)
    c = jnp.where(c < 0, jnp.argmax(logits, axis=-1), c).astype(jnp.int32)
    return c, jax.nn.softmax(logits, axis=-1)

  def _score_fn(self, params, targeted: bool):
    # A requested SDR target t is reached by raising s_t (for two classes, s_t = -s_c).
    sign = -1.0 if targeted and self.config.objective == "sdr" else 1.0
    return lambda images, k: sign * log_odds(self.classifier.apply(params, images), k)

  def _mask_step(self, params, key, x, c, ids, step, carry, *, targeted: bool):
    return mask_step(self._score_fn(params, targeted), self.infiller, x, c, key, self.config,
                     ids, carry, step)

  def _program(self, params, key, x, c, ids, *, targeted: bool):
    """The whole chunk in one compiled program (loop "scan")."""
    c, probs = self._resolve(params, x, c)
    theta, _ = optimise_masks(self._score_fn(params, targeted), self.infiller, x, c, key,
                              self.config, ids=ids)
    return self._counterfactuals(params, key, x, c, ids, probs, theta, targeted=targeted)

  def _host_program(self, params, key, x, c, ids, *, targeted: bool):
    """The same chunk with one compiled step dispatched per step (loop "host")."""
    c, probs = self._start(params, x, c)
    carry = self._init(x)
    for step in range(int(self.config.steps)):
      carry = self._step(params, key, x, c, ids, jnp.asarray(step), carry, targeted=targeted)
    return self._finish(params, key, x, c, ids, probs, carry[0], targeted=targeted)

  def _counterfactuals(self, params, key, x, c, ids, probs, theta, *, targeted: bool):
    """The explanation from the optimised drop logits: maps, the thresholded in-fill and
    its target."""
    cfg, apply, infill = self.config, self.classifier.apply, self.infiller
    height, width = x.shape[1:3]
    drop = upsample(jax.nn.sigmoid(theta), height, width)
    # Step index `steps` is never drawn during optimisation: a fresh key for the fill.
    cf_keys = jax.vmap(lambda k: jax.random.fold_in(k, int(cfg.steps)))(
        common.image_keys(key, ids))

    def filled_at(threshold):
      keep = (drop <= threshold).astype(x.dtype)[..., None]
      fills = jax.vmap(lambda xi, mi, ki: infill(xi[None], mi[None], ki)[0])(x, keep, cf_keys)
      cf = keep * x + (1.0 - keep) * fills
      cf_probs = jax.nn.softmax(apply(params, cf), axis=-1)
      if cfg.objective == "ssr" or targeted:
        target = c
      else:
        target = common.other_class_on(cf_probs, c)
      return cf, cf_probs, target

    thresholds = jnp.asarray(tuple(cfg.thresholds) or (cfg.threshold,), jnp.float32)
    cfs, cf_probs, targets = jax.lax.map(filled_at, thresholds)  # (T, N, ...) each
    reached = jnp.argmax(cf_probs, axis=-1) == targets
    first = jnp.where(jnp.any(reached, axis=0), jnp.argmax(reached, axis=0),
                      len(thresholds) - 1)
    pick = lambda a: jnp.take_along_axis(
        a, first.reshape((1, -1) + (1,) * (a.ndim - 2)), axis=0)[0]
    cf, cf_probs, target = pick(cfs), pick(cf_probs), pick(targets)
    maps = 1.0 - drop if cfg.objective == "ssr" else drop
    return Explanation(maps=maps, target=target, probs=probs, counterfactual=cf,
                       cf_probs=cf_probs)

  def explain(self, images, target=None, *, ids=None) -> Explanation:
    """Maps and in-filled counterfactuals of every image, in compiled chunks.

    target: SDR - the class each counterfactual should reach (int or (N,), not the
    predicted class); default: destroy the predicted class. SSR - the class whose
    sufficient region is sought (any class); default: the predicted class.
    ids: integers that seed each image's randomness (default 0..N-1); pass dataset
    indices to get the same explanation of an image whatever call it is in.
    """
    x = validation.check_images(images, self.image_shape)
    n = len(x)
    ids = common.image_ids(ids, n)
    cpu = jax.default_backend() == "cpu"
    chunk = self.config.chunk_size or (4 if cpu else 64)
    if target is None:
      c = np.full((n,), -1, np.int32)
    elif self.config.objective == "sdr":
      c = validation.check_target(target, n, self.num_classes, self.classifier.predict(x))
    else:
      # Any class may be explained by its sufficient region: no "differs from" check.
      c = validation.check_target(target, n, self.num_classes, np.full((n,), -1))
    key = jax.random.key(int(self.config.seed))
    loop = self.config.loop
    if loop == "auto":
      loop = "host" if cpu else "scan"
    program = self._host_program if loop == "host" else self._programs
    out = map_in_chunks(
        lambda xb, cb, ib: program(self.classifier.params, key, xb, cb, ib,
                                   targeted=target is not None),
        [x, c, ids], int(chunk),
        on_chunk=common.chunk_progress("FIDO", n, bool(self.config.progress)))
    return self.checked(out)

  def report_failures(self, explanation: Explanation, *, stacklevel: int = 2) -> np.ndarray:
    """Indices whose counterfactual is not classified as its target, with a warning."""
    what = ("did not keep the explained class" if self.config.objective == "ssr"
            else "did not reach the target class")
    return common.report_failures(f"FIDO {self.config.objective.upper()}", explanation,
                                     what, stacklevel)
