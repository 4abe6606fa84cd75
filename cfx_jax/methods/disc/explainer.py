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
are enough on the small images here and keep a CPU run short. Deep inversion's reference
weights (`PAPER_FORM`) are BN 0.01 (first layer x10), TV 1e-4 and l2 1e-5. TV and l2 are
weak on small images; the per-image BN term is not (tens to hundreds at a real image,
mostly from the deeper layers, whose per-image variance sits below the population's), so
it moves pixels away from the query everywhere: speckle over the whole image. The
defaults turn it off and charge the total variation at 0.03 instead, so that what changes
is a smooth region rather than scattered pixels (`studies/disc_ablation.py`, lesion maps'
pixel AUROC 0.821 with the reference weights, 0.968 with these on 15 lesion images;
0.837 and 0.968 on 37 others; docs/leaderboards.md). Without the BN term DISC also explains
classifiers that have no BatchNorm. Proximity 5 and manifold 1 were chosen on the lesion
set so that both terms act against a cross-entropy of a few nats.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from cfx_jax import integrity, validation
from cfx_jax.batching import map_in_chunks
from cfx_jax.classifier import Classifier, as_classifier
from cfx_jax.explanation import Explanation
from cfx_jax.methods import common
from cfx_jax.methods.disc.optimise import PARAMETERISATIONS, optimise_counterfactuals



# Deep inversion's reference weights, which the paper keeps: the BatchNorm-statistics term
# on and a faint total variation (`cfx_jax.paper_form("disc")`).
PAPER_FORM = {"bn": 0.01, "tv": 1e-4}


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
  c.bn = 0.0                    # BatchNorm-statistics weight (0: off; the paper's 0.01)
  c.bn_first = 10.0             # multiplier of the first BatchNorm layer
  c.tv = 0.03                   # the paper's 1e-4
  c.l2 = 1e-5
  c.proximity = 5.0             # weight of mean |x' - x|
  c.manifold = 1.0              # weight of the auxiliary model's uncertainty (0: off)
  c.jitter = 0                  # random shifts of up to this many pixels (0: off)
  c.flip = False                # random horizontal flips of what the classifier sees
  c.chunk_size = 64             # images per compiled call
  c.seed = 0
  c.warn_failures = True        # warn, listing indices, when a counterfactual misses its target
  c.progress = True             # show images done per compiled chunk (a bar on a terminal)
  return common.settings("DISC", c, overrides, check_config)


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


class DiscExplainer(common.ClassifierBound):
  """DISC counterfactuals (and their difference maps) for a batch of images.

  counterfactual: the optimised image. maps: |counterfactual - query| summed over
  channels, (N, H, W). target: the `target` passed to `explain`, or else the most likely
  class other than the predicted one on the query. `Explanation.flipped` is True where the
  counterfactual is classified as its target; `report_failures` lists the others.

  auxiliary: an `AuxiliaryModel` (cfx_jax.methods.disc.auxiliary) trained on the classifier's
  data; required while `manifold > 0`. The BatchNorm term needs a classifier that exposes
  `bn_features` (the reference CNN does); set `bn=0` for any other.
  """

  def __init__(self, classifier, config=None, *, auxiliary=None, image_shape=None):
    config = common.as_settings(config, disc_config)
    check_config(config)
    self.classifier = common.bind_classifier(classifier, image_shape)
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
            "auxiliary=train_auxiliary(...) (cfx_jax.methods.disc.auxiliary) or set manifold=0")
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
    from cfx_jax.methods.disc.auxiliary import auxiliary_config, train_auxiliary

    cfg = common.as_settings(config, disc_config)
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
    from cfx_jax.methods.disc.auxiliary import save_auxiliary

    with integrity.saving(path) as folder:
      if self.auxiliary is not None:
        save_auxiliary(os.path.join(folder, "auxiliary"), self.auxiliary)
      common.save_settings(folder, "disc", self)

  @classmethod
  def from_meta(cls, meta: dict, classifier: Classifier, path: str) -> DiscExplainer:
    from cfx_jax.methods.disc.auxiliary import load_auxiliary

    cfg = disc_config(**{k: tuple(v) if isinstance(v, list) else v
                         for k, v in meta["config"].items()})
    aux = load_auxiliary(os.path.join(path, "auxiliary")) if cfg.manifold > 0 else None
    return cls(classifier, cfg, auxiliary=aux)

  def _explain_chunk(self, params, aux_params, key, x, t, ids):
    clf, aux = self.classifier, self.auxiliary
    probs = jax.nn.softmax(clf.apply(params, x), axis=-1)
    predicted = jnp.argmax(probs, axis=-1)
    t = jnp.where(t < 0, common.other_class_on(probs, predicted), t).astype(jnp.int32)
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
    ids = common.image_ids(ids, n)
    if target is None:
      t = np.full((n,), -1, np.int32)
    else:
      t = validation.check_target(target, n, self.num_classes,
                                  self.classifier.predict(x, int(self.config.chunk_size)))
    key = jax.random.key(int(self.config.seed))
    aux_params = self.auxiliary.params if self.auxiliary is not None else None
    out = map_in_chunks(
        lambda xb, tb, ib: self._program(self.classifier.params, aux_params, key, xb, tb, ib),
        [x, t, ids], int(self.config.chunk_size),
        on_chunk=common.chunk_progress("DISC", n, bool(self.config.progress)))
    return self.checked(out)

  def report_failures(self, explanation: Explanation, *, stacklevel: int = 2) -> np.ndarray:
    """Indices whose counterfactual is not classified as its target, with a warning."""
    return common.report_failures("DISC", explanation, "did not reach the target class",
                                     stacklevel)
