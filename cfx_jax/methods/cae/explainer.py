"""CAE: counterfactuals by moving a class-associated code (Xie et al., 2024, arXiv 2406.07961).

CAE learns, without the classifier's gradients, to split an image x into a short
class-associated code s and a spatial individual code c (`models/cae.py`, trained by
`methods/cae/train.py`). Only labels are needed; here they are the classifier's decisions
on the training images, so s encodes what *the classifier* treats as each class, not
what the ground truth says.

To explain x towards a class t, s walks a straight path to a reference code of t,

  s(a) = s + a (r_t - s),   a = step, 2 step, ..., max_fraction   (0.2, 0.4, ..., 2.0)

with c held fixed; each point is decoded, x~(a) = dec(s(a), c), and the counterfactual is
the first point the black box classifies as t (the last point when none does; those
images are reported by index). a = 1 is the reference code itself; beyond it the path
keeps going in the same direction, exaggerating the class difference for images the
prototype alone does not flip. The map is |x~ - x| averaged over the channels.

Reference code: the class prototype r_t, the mean s of the training images the classifier
assigns to t, computed once at fit time. The alternative, the nearest training code of
class t, ties every explanation to one training image: near the boundary that image is
often one the classifier barely assigns to t (or one it gets wrong), and whatever of its
own individual traits leaked into s travels with it. The mean averages those out, is a
single deterministic code per class (K x style_dim numbers to save, nothing to search at
explain time) and gives every image of a class the same direction of change, so paths
are comparable across images.

Residual (`keep_residual`, off by default): the decoder reconstructs a textured image only
roughly (L1 0.10-0.12 per value on the lesion set), so a path point decoded as it is
redraws the whole image. With the residual, each point is x + dec(s(a), c) - dec(s, c),
the query plus what moving the class code changes in the decoding. That keeps the image
only where the class code acts locally; here it does not (s drives every AdaIN layer, so
moving it re-renders the whole decoding): on the lesion set the residual form changed
0.24 per value outside the lesion against 0.11 without, and flipped 0.47 of the images
(docs/leaderboards.md, "CAE: what keeps the image").

All path points of a chunk of images are decoded and classified in one compiled program
(`map_in_chunks`, padded to a few bucket sizes); `explain_path` returns the whole path.
"""

from __future__ import annotations

import dataclasses
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from cfx_jax import integrity, persistence, validation
from cfx_jax.batching import map_in_chunks
from cfx_jax.classifier import Classifier, as_classifier
from cfx_jax.explanation import Explanation
from cfx_jax.methods import common
from cfx_jax.models.cae import build_autoencoder
from cfx_jax.methods.cae import train as cae_train

META_FILE = "cae.json"
TREE_DIR = "network"
FIGURE_FILE = "cae_code_space.png"
# Settings of the explanation path (the rest of `cae_config` trains the networks).
# The paper's decoder has no skip path (`cfx_jax.paper_form("cae")`).
PAPER_FORM = {"model": {"skip": 0}}
PATH_SETTINGS = ("path_step", "max_fraction", "keep_residual", "warn_failures")


def cae_config(**overrides) -> ml_collections.ConfigDict:
  """Training settings of `cae_train.cae_train_config` plus the path; overrides on top.

  Nested settings (`weights`, `model`) take dicts of the entries to change.
  """
  c = cae_train.cae_train_config()
  c.chunk_size = 64            # images per compiled explain call (each decodes every point)
  c.path_step = 0.2            # fraction of the way from s to the reference per path point
  c.max_fraction = 2.0         # last point: 1.0 is the reference code, beyond it exaggerates
  c.keep_residual = False      # True: x + dec(s(a), c) - dec(s, c); False: dec(s(a), c)
  c.warn_failures = True       # warn, listing indices, when no path point reaches the target
  return common.settings("CAE", c, overrides, check_config)


def check_config(cfg) -> None:
  """Fail before training or compiling on settings CAE cannot use."""
  cae_train.check_train_config(cfg)
  if not cfg.path_step > 0:
    raise ValueError(f"path_step must be positive, got {cfg.path_step}")
  if not cfg.max_fraction >= cfg.path_step:
    raise ValueError(f"max_fraction ({cfg.max_fraction}) must be at least path_step "
                     f"({cfg.path_step})")
  if len(path_fractions(cfg)) > 200:
    raise ValueError(f"{len(path_fractions(cfg))} path points are too many; raise path_step "
                     "or lower max_fraction")


def path_fractions(cfg) -> np.ndarray:
  """step, 2 step, ... up to max_fraction (the largest multiple of step not above it)."""
  count = int(np.floor(float(cfg.max_fraction) / float(cfg.path_step) + 1e-6))
  return (float(cfg.path_step) * np.arange(1, count + 1)).astype(np.float32)


def training_config(cfg) -> ml_collections.ConfigDict:
  """The training part of the explainer's settings, as `cae_train.train_cae` takes it."""
  train = cae_train.cae_train_config()
  train.update({k: cfg[k] for k in train.keys()})
  return train


def class_prototypes(codes: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
  """(K, style_dim) mean code of each class; a class without images raises."""
  codes = np.asarray(codes, np.float64)
  labels = np.asarray(labels)
  counts = np.bincount(labels, minlength=num_classes)
  if np.any(counts == 0):
    raise ValueError(f"no image of class(es) {np.flatnonzero(counts == 0).tolist()}: "
                     "their prototype codes are undefined")
  sums = np.zeros((num_classes, codes.shape[1]))
  np.add.at(sums, labels, codes)
  return (sums / counts[:, None]).astype(np.float32)


def first_flip(path_probs: jax.Array, target: jax.Array) -> jax.Array:
  """Index of the first path point classified as the target, -1 where none is.

  path_probs (N, P, K), target (N,) -> (N,) int32.
  """
  hit = jnp.argmax(path_probs, axis=-1) == target[:, None]
  return jnp.where(jnp.any(hit, axis=1), jnp.argmax(hit, axis=1), -1).astype(jnp.int32)


def chosen_point(flip: jax.Array, num_points: int) -> jax.Array:
  """The path point that is the counterfactual: the first flip, else the last point."""
  return jnp.where(flip >= 0, flip, num_points - 1)


def pca_2d(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(mean, components (2, d), explained variance ratios (2,)) of the codes, in NumPy.

  A code space of one dimension gets a zero second component.
  """
  codes = np.asarray(codes, np.float64)
  mean = codes.mean(axis=0)
  _, sing, vt = np.linalg.svd(codes - mean, full_matrices=False)
  var = sing ** 2
  ratio = var / var.sum() if var.sum() > 0 else np.zeros_like(var)
  comps = np.zeros((2, codes.shape[1]))
  ratios = np.zeros(2)
  m = min(2, vt.shape[0])
  comps[:m], ratios[:m] = vt[:m], ratio[:m]
  return mean, comps, ratios


@dataclasses.dataclass(frozen=True)
class CaePath:
  """The decoded path of every image and where the classifier's decision flips.

  images:    (N, P, H, W, C) path points, dec(s + a (r_t - s), c) (plus the residual
             x - dec(s, c) with `keep_residual`).
  fractions: (P,) the a of each point (0.2, 0.4, ...).
  probs:     (N, P, K) classifier probabilities at each point.
  flip:      (N,) index of the first point classified as the target, -1 if none.
  target:    (N,) the class each path heads for.
  """

  images: np.ndarray
  fractions: np.ndarray
  probs: np.ndarray
  flip: np.ndarray
  target: np.ndarray

  def __len__(self) -> int:
    return int(self.images.shape[0])

  @property
  def flip_fraction(self) -> np.ndarray:
    """The a at which each image first flips; NaN where it never does."""
    return np.where(self.flip >= 0, self.fractions[np.maximum(self.flip, 0)], np.nan)


class CaeExplainer(common.ClassifierBound):
  """CAE counterfactuals: the class code moved towards the target class's prototype.

  counterfactual: the path point (see `keep_residual`) that the classifier first assigns
  to the target (the last point if none). maps: |counterfactual - query| averaged over
  channels, (N, H, W). target: the `target` passed to `explain`, or else the most
  likely class other than the predicted one (the other class for two classes).
  `Explanation.flipped` is False where no point reached the target; `report_failures`
  lists those.
  """

  def __init__(self, classifier, config=None, *, model: cae_train.CaeModel,
               prototypes, image_shape=None):
    config = common.as_settings(config, cae_config)
    check_config(config)
    self.classifier = common.bind_classifier(classifier, image_shape)
    self.config = config
    if tuple(model.image_shape) != self.image_shape:
      raise ValueError(f"CAE networks were trained on images of shape {model.image_shape}, "
                       f"the classifier takes {self.image_shape}")
    if model.num_classes != self.num_classes:
      raise ValueError(f"CAE networks were trained for {model.num_classes} classes, the "
                       f"classifier has {self.num_classes}")
    prototypes = np.asarray(prototypes, np.float32)
    style_dim = int(config.model.style_dim)
    if prototypes.shape != (self.num_classes, style_dim):
      raise ValueError(f"prototypes must have shape ({self.num_classes}, {style_dim}), got "
                       f"{prototypes.shape}")
    self.model = model
    self.prototypes = prototypes
    self.fractions = path_fractions(config)
    self._programs = jax.jit(self._program, static_argnames="full")

  @classmethod
  def fit(cls, classifier, images, *, seed: int = 0, config=None, workdir=None) -> CaeExplainer:
    """Train CAE on `images` labelled by the classifier's decisions; store the prototypes.

    With `workdir`, training checkpoints go to `<workdir>/cae_checkpoints` and an
    interrupted fit resumes from them.
    """
    cfg = common.as_settings(config, cae_config)
    cfg.seed = int(seed)
    check_config(cfg)
    x = validation.check_images(images)
    clf = as_classifier(classifier, x.shape[1:])
    labels = clf.predict(x, int(cfg.chunk_size))
    model = cae_train.train_cae(x, labels, training_config(cfg), workdir,
                               num_classes=clf.num_classes)
    codes, _ = model.encode(x, int(cfg.chunk_size))
    return cls(clf, cfg, model=model, prototypes=class_prototypes(codes, labels,
                                                                   clf.num_classes))

  def save(self, path: str) -> None:
    """Settings and classifier fingerprint (explainer.json), the autoencoder, the prototypes."""
    meta = {"image_shape": list(self.image_shape), "num_classes": self.num_classes,
            "style_dim": int(self.config.model.style_dim),
            "final_metrics": self.model.history[-1] if self.model.history else {}}
    with integrity.saving(path) as folder:
      persistence.save(folder, META_FILE, meta, TREE_DIR,
                       {"autoencoder": self.model.params, "prototypes": self.prototypes})
      common.save_settings(folder, "cae", self)

  @classmethod
  def from_meta(cls, meta: dict, classifier: Classifier, path: str) -> CaeExplainer:
    saved = dict(meta["config"])
    # Saved before the skip path existed: the decoder had none.
    saved["model"] = {"skip": 0, **saved.get("model", {})}
    cfg = cae_config(**saved)
    saved = persistence.read_meta(path, META_FILE, "CAE network")
    shape = tuple(int(d) for d in saved["image_shape"])
    k = int(saved["num_classes"])
    graphdef, abstract = nnx.split(nnx.eval_shape(
        lambda: build_autoencoder(shape, cfg.model, nnx.Rngs(0))))
    tree = persistence.restore(path, TREE_DIR, {
        "autoencoder": abstract,
        "prototypes": jax.ShapeDtypeStruct((k, int(cfg.model.style_dim)), jnp.float32)})
    model = cae_train.CaeModel(graphdef, tree["autoencoder"], shape, k,
                              training_config(cfg).to_dict())
    return cls(classifier, cfg, model=model, prototypes=np.asarray(tree["prototypes"]))

  def with_path_settings(self, **settings) -> CaeExplainer:
    """The same networks and prototypes under other settings of the path (`PATH_SETTINGS`),
    e.g. `keep_residual=True`, without training again."""
    unknown = sorted(set(settings) - set(PATH_SETTINGS))
    if unknown:
      raise ValueError(f"{unknown} would need CAE trained again; the path's settings are "
                       f"{list(PATH_SETTINGS)}")
    return CaeExplainer(self.classifier, cae_config(**{**self.config.to_dict(), **settings}),
                        model=self.model, prototypes=self.prototypes)

  # Compiled path ------------------------------------------------------------------------

  def _program(self, gen_params, prototypes, clf_params, x, t, *, full: bool):
    apply = self.classifier.apply
    net = nnx.merge(self.model.graphdef, gen_params)
    n = x.shape[0]
    fractions = jnp.asarray(self.fractions)
    p = fractions.shape[0]
    probs = jax.nn.softmax(apply(clf_params, x), axis=-1)
    t = jnp.where(t < 0, common.other_class_on(probs, jnp.argmax(probs, axis=-1)), t)
    t = t.astype(jnp.int32)
    s, c = net.encode(x)
    codes = s[:, None] + fractions[None, :, None] * (prototypes[t] - s)[:, None]
    content = jnp.repeat(c, p, axis=0)
    path = net.decode(codes.reshape((n * p, -1)), content)
    if self.config.keep_residual:
      residual = jnp.repeat(x - net.decode(s, c), p, axis=0)
      path = jnp.clip(path + residual, -1.0, 1.0)
    path_probs = jax.nn.softmax(apply(clf_params, path), axis=-1).reshape(n, p, -1)
    path = path.reshape((n, p) + x.shape[1:])
    flip = first_flip(path_probs, t)
    idx = chosen_point(flip, p)
    cf = jnp.take_along_axis(path, idx[:, None, None, None, None], axis=1)[:, 0]
    cf_probs = jnp.take_along_axis(path_probs, idx[:, None, None], axis=1)[:, 0]
    out = Explanation(maps=jnp.mean(jnp.abs(cf - x), axis=-1), target=t, probs=probs,
                      counterfactual=cf, cf_probs=cf_probs)
    if full:
      return out, {"images": path, "probs": path_probs, "flip": flip}
    return out

  def _run(self, images, target, full: bool):
    x = validation.check_images(images, self.image_shape)
    n = len(x)
    chunk = int(self.config.chunk_size)
    if target is None:
      t = np.full((n,), -1, np.int32)
    else:
      t = validation.check_target(target, n, self.num_classes,
                                  self.classifier.predict(x, chunk))
    return map_in_chunks(
        lambda xb, tb: self._programs(self.model.params, self.prototypes,
                                      self.classifier.params, xb, tb, full=full),
        [x, t], chunk)

  def explain(self, images, target=None) -> Explanation:
    """Counterfactuals and maps of every image, in compiled chunks.

    target: the class each counterfactual should reach (int or (N,), not the predicted
    class); default: the most likely other class.
    """
    out = self._run(images, target, full=False)
    return self.checked(out)

  def explain_path(self, images, target=None) -> CaePath:
    """The whole decoded path of every image, its probabilities and first flip."""
    out, path = self._run(images, target, full=True)
    return CaePath(images=path["images"], fractions=self.fractions.copy(),
                   probs=path["probs"], flip=path["flip"], target=out.target)

  def codes(self, images) -> np.ndarray:
    """Class-associated codes s (N, style_dim) of images in [-1, 1]."""
    return self.model.encode(images, int(self.config.chunk_size))[0]

  def report_failures(self, explanation: Explanation, *, stacklevel: int = 2) -> np.ndarray:
    """Indices whose path never reached the target class, with a warning."""
    return common.report_failures(
        "CAE", explanation,
        f"did not reach the target class by fraction {float(self.fractions[-1]):g} of the "
        "path", stacklevel)

  # Figure -------------------------------------------------------------------------------

  def report(self, workdir: str, images, labels=None) -> str:
    """`<workdir>/cae_code_space.png`: the codes s of `images` in their first two
    principal components (PCA of these codes), coloured by `labels` and by the
    classifier's decision, with the class prototypes marked. Returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = validation.check_images(images, self.image_shape)
    decided = self.classifier.predict(x, int(self.config.chunk_size))
    panels = [("classifier's decision", decided)]
    if labels is not None:
      labels = np.asarray(labels)
      if labels.shape != (len(x),):
        raise ValueError(f"labels must have shape ({len(x)},) to match the images, got "
                         f"{labels.shape}")
      panels.insert(0, ("label", labels.astype(np.int64)))
    codes = self.codes(x)
    mean, comps, ratios = pca_2d(codes)
    points = (codes - mean) @ comps.T
    protos = (self.prototypes - mean) @ comps.T
    cmap = plt.get_cmap("tab10")
    fig, axes = plt.subplots(1, len(panels), figsize=(5.0 * len(panels), 4.4), squeeze=False)
    for ax, (title, classes) in zip(axes[0], panels):
      for k in range(max(self.num_classes, int(classes.max()) + 1)):
        sel = classes == k
        if sel.any():
          ax.scatter(points[sel, 0], points[sel, 1], s=8, alpha=0.5, color=cmap(k % 10),
                     label=f"class {k} ({int(sel.sum())})")
      for k, (px, py) in enumerate(protos):
        ax.scatter([px], [py], marker="*", s=260, color=cmap(k % 10), edgecolors="black",
                   linewidths=1.2, zorder=3, label=f"prototype {k}")
      ax.set_title(f"class code s, coloured by {title}", fontsize=10)
      ax.set_xlabel(f"PC 1 ({100 * ratios[0]:.0f}% of variance)")
      ax.set_ylabel(f"PC 2 ({100 * ratios[1]:.0f}% of variance)")
      ax.legend(fontsize=7, loc="best")
    from cfx_jax import report
    return report.save_figure(fig, os.path.join(os.path.abspath(workdir), FIGURE_FILE))
