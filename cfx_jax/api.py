"""The public entry points: fit an explainer of any method, load a saved one."""

from __future__ import annotations

import functools
import inspect
import os

import numpy as np

from cfx_jax import image_space, integrity, persistence, validation
from cfx_jax.baselines import BASELINES
from cfx_jax.classifier import Classifier, as_classifier, fingerprint_outputs, with_probe
from cfx_jax.engine import lock
from cfx_jax.engine import workdir as workdir_lib
from cfx_jax.explanation import Explanation
from cfx_jax import selection
from cfx_jax.methods import registry
from cfx_jax.methods.conditional import train as generator_train
from cfx_jax.methods.registry import Explainer


def _as_images(images) -> np.ndarray:
  """Arrays pass through; a data source (len + getitem of dicts) is read in full."""
  if hasattr(images, "shape"):
    return images
  if hasattr(images, "__len__") and hasattr(images, "__getitem__"):
    from cfx_jax import data as data_lib
    return data_lib.materialize(images)["image"]
  raise TypeError(f"images must be an array (N, H, W, C) or a data source, "
                  f"got {type(images).__name__}")


def fit_explainer(classifier, images, *, method: str = "syce", steps: int | None = None,
                  batch_size: int | None = None, seed: int = 0, workdir: str | None = None,
                  config=None, attributes=None, outputs: str = "logits", value_range=None,
                  variables=None, generator=None, select: bool | None = None,
                  restart: bool = False) -> Explainer:
  """Train a counterfactual explainer of `classifier` on `images`.

  `method`: one of `trainable_methods()`. Optimisation methods ("fido", "disc") train at
  most a helper model here: `config` holds their settings and `explain` optimises. The
  saliency baselines fit nothing: `explain_baseline` runs them.

  `classifier`: a JAX-traceable callable images -> outputs, `f(variables, images)` or a
  Flax Linen module with `variables`, or an NNX module (explained in eval mode).
  `outputs`: "logits" ((N, K) or one binary logit) or "probabilities" ((N, K) rows
  summing to 1, or the probability of class 1).
  `images`: (N, H, W, C) of any size and channel count, in `value_range` (default
  (-1, 1); (0, 255) for uint8). The classifier sees them in that range, and the
  explainer takes and returns images in it; sizes the method's networks cannot take are
  reflect-padded inside and cropped back.
  `select`: for the generator methods (syce, cyce, sagen), choose the setting by judges
  (`cfx_jax.selection`, docs/selection.md): a few candidate settings train side by side
  on 85% of `images`, an independent oracle judges their counterfactuals of the rest,
  and the explainer's `selection` holds every candidate's scores and a second judge's
  scores of the choice. None (the default) selects when no `config` is given or when the
  config's `select.enabled` is set; False fits the defaults (or `config`) as they are.
  `config`: a ConfigDict (`cfx_jax.explainer_config` for the generator methods) or a
  dict of overrides of the method's settings; `steps` and `batch_size` set the
  method's step count and batch size (see `cfx_jax.methods.registry`). With `workdir`,
  checkpoints are written there, an interrupted run resumes from them, and the fitted
  explainer is saved to `<workdir>/explainer`.
  `attributes`: (N, K) binary labels of the images, for methods that use them ("latent").
  `generator`: a pretrained generative model that "latent" uses as it is instead of
  training a VAE (see `cfx_jax.methods.latent.PretrainedGenerator`); it takes and
  returns images of the caller's size, in [-1, 1]. It is not saved with the explainer:
  `load_explainer` needs it again.
  `restart`: a `workdir` whose record shows a fit with other settings, images, seed or
  classifier is refused with what changed (docs/reliability.md); True deletes that
  fit's files there and starts over. Settings that change no result (log_every,
  checkpoint_every, keep_checkpoints, progress) and more steps resume as usual. One
  process at a time may use a `workdir` (a lock file names the one that does).
  Settings are checked before anything trains (`cfx_jax.validation.check_settings`):
  counts >= 1, rates positive and finite, a `batch_size` no larger than the images.
  """
  if method in BASELINES:
    raise ValueError(f"unknown method {method!r} for fit_explainer: it is a saliency "
                     f"baseline, which needs no fitting; call cfx_jax.explain_baseline("
                     f"{method!r}, classifier, images). Trainable methods: "
                     f"{trainable_methods()}")
  entry = registry.get(method)
  extra = {}
  if attributes is not None:
    if not entry.uses_attributes:
      raise ValueError(f"attributes are used only by method='latent', not {method!r}")
    extra["attributes"] = attributes
  if generator is not None:
    if not entry.uses_generator:
      raise ValueError(f"a pretrained generator is used only by method='latent', not "
                       f"{method!r}")
    extra["generator"] = generator
  # A pretrained generator takes the images at their own size: no padding to a grid.
  multiple, square = (1, False) if generator is not None else entry.grid(config)
  images = validation.batched(_as_images(images), single=False)
  settings = checked_settings(entry, config, steps, batch_size, len(images))
  generative = method in registry.GENERATOR_METHODS
  if select and not generative:
    raise ValueError(f"select=True chooses among settings of the generator methods "
                     f"{sorted(registry.GENERATOR_METHODS)}, not {method!r}")
  if select is None:
    select = generative and (config is None or _selects(config))
  space, clf, x = image_space.bind(classifier, images, outputs=outputs,
                                   value_range=value_range, variables=variables,
                                   multiple=multiple, square=square)
  clf = with_probe(as_classifier(clf, x.shape[1:]), x)
  with lock.held(workdir):
    if workdir:
      identity = {**settings, "method": method, "seed": int(seed), "select": bool(select),
                  "outputs": outputs, "value_range": list(space.value_range),
                  "images": workdir_lib.data_hash(x), "attributes":
                  None if attributes is None else workdir_lib.data_hash(attributes),
                  "classifier": fingerprint_outputs(clf.fingerprint())}
      workdir_lib.claim(os.path.abspath(workdir), "explainer", identity, restart=restart)
    return _fit(entry, method, clf, x, space, outputs, config, seed, steps, batch_size,
                workdir, select, generative, extra)


def checked_settings(entry, config, steps, batch_size, num_images: int) -> dict:
  """The fit's settings that identify its result, checked (`validation.check_settings`)
  before anything trains; a `batch_size` set larger than the images is refused."""
  resolved = entry.resolved(config, steps, batch_size)
  validation.check_settings(resolved, what=entry.name)
  given = batch_size if batch_size is not None else registry.setting(config, "batch_size")
  validation.check_settings({"batch_size": given}, what=entry.name, num_images=num_images)
  out = workdir_lib.settings_identity(resolved)
  for name in ("method", "seed", "select.enabled"):
    out.pop(name, None)
  return out


def _fit(entry, method, clf, x, space, outputs, config, seed, steps, batch_size, workdir,
         select, generative, extra) -> Explainer:
  """`fit_explainer` once its arguments are checked and its workdir claimed."""
  if select:
    entry.settings(config, steps, batch_size)  # raises where they disagree with config
    base = generator_train.resolve_config(method, config, seed=seed, steps=steps,
                                          batch_size=batch_size)
    base.select.enabled = True
    inner = selection.select(as_classifier(clf, x.shape[1:]), x, base, workdir)
  else:
    if generative and _selects(config):  # select=False wins over the config
      config = _without_selection(method, config)
    inner = entry.fit(clf, x, config=config, seed=seed, steps=steps, batch_size=batch_size,
                      workdir=workdir, **extra)
  if space.is_identity and outputs == "logits":
    return inner
  # The wrapper saves the outputs kind (and the space) that `load_explainer` needs: saved
  # again whole, since a sealed save takes no file added after it.
  explainer = InCallerSpace(inner, space, outputs)
  if workdir:
    explainer.save(os.path.join(workdir, "explainer"))
  return explainer


def _selects(config) -> bool:
  """Whether a generator method's config asks for its setting to be chosen by judges."""
  node = config.get("select") if hasattr(config, "get") else None
  return bool(node.get("enabled", False)) if hasattr(node, "get") else False


def _without_selection(method: str, config):
  c = generator_train.resolve_config(method, config)
  c.select.enabled = False
  return c


def load_explainer(path: str, classifier, *, outputs: str | None = None, variables=None,
                   generator=None) -> Explainer:
  """Load an explainer saved with `save`; checks it was made for `classifier`.

  The classifier is taken as at fit time (same outputs kind and value range, saved with
  the explainer); `outputs` overrides the saved kind. A Linen module or
  `f(variables, images)` needs its `variables` again, and a latent explainer fitted with
  a pretrained generator needs that `generator`.
  """
  path = os.path.abspath(path)
  with integrity.checked(path, "explainer"):
    return _load(path, classifier, outputs, variables, generator)


def _load(path, classifier, outputs, variables, generator) -> Explainer:
  """`load_explainer` of a folder that matches its manifest."""
  meta = persistence.read_meta(path, "explainer.json", "explainer")
  entry = registry.get(meta.get("method"))
  extra = {}
  if generator is not None:
    if not entry.uses_generator:
      raise ValueError(f"generator= is only for latent explainers, this one is "
                       f"{meta.get('method')!r}")
    extra["generator"] = generator
  space, saved = image_space.load(path)
  if outputs is None:
    # A Classifier returns logits whatever its own classifier returned.
    outputs = "logits" if isinstance(classifier, Classifier) else saved
  if space is None:
    shape = _saved_shape(meta)
    space = image_space.ImageSpace(image_space.DEFAULT_RANGE, shape, shape[:2])
  clf = as_classifier(classifier, space.shape, outputs=outputs,
                      value_range=space.value_range, variables=variables)
  inner = entry.load(meta, space.classifier(clf), path, **extra)
  if space.is_identity and outputs == "logits":
    return inner
  return InCallerSpace(inner, space, outputs)


def _saved_shape(meta: dict) -> tuple[int, int, int]:
  """The (H, W, C) a saved explainer takes, from its explainer.json."""
  if "image_shape" in meta:
    return tuple(int(d) for d in meta["image_shape"])
  spec = meta["spec"]
  return int(spec["image_size"]), int(spec["image_size"]), int(spec["channels"])


class InCallerSpace:
  """An explainer that takes and returns images in the caller's value range and size,
  around one that works in [-1, 1] on the networks' grid."""

  def __init__(self, inner: Explainer, space: image_space.ImageSpace, outputs: str):
    self.inner, self.space, self.outputs = inner, space, outputs
    self.image_shape = space.shape
    self.num_classes = inner.num_classes
    self.explain = _documented(self._explain, inner.explain)

  def _explain(self, images, target=None, **options) -> Explanation:
    """Counterfactuals and maps of `images`, in the caller's value range and size.

    Args:
      images: (N, H, W, C), or one (H, W, C) image, of the size, channel count and
        value range the explainer was fitted on.
      target: the class each counterfactual should reach, an int or (N,) ints, none of
        them the classifier's decision; None: the method's default.
      options: the method's own keywords (below), such as `ids` for FIDO and DISC.
    Returns:
      An `Explanation` whose maps are (N, H, W) and whose counterfactuals are in the
      images' value range and size, ready to compare with or plot over them.
    """
    x = validation.batched(images)
    validation.check_shape(x, self.image_shape)
    image_space.value_range_of(x, self.space.value_range)
    out = self.inner.explain(self.space.to_internal(x), target, **options)
    return self.space.explanation(out)  # every method's explain checks its outputs

  def save(self, path: str) -> None:
    """Write the explainer and its image space to the directory `path`, so that
    `load_explainer` gives it back, taking images as this one does."""
    with integrity.saving(path) as folder:
      self.inner.save(folder)
      self.space.save(folder, self.outputs)

  def __getattr__(self, name):
    return getattr(self.inner, name)


def _documented(method, wrapped):
  """`method`, with `wrapped`'s docstring after its own and `wrapped`'s signature: help()
  on a wrapped explainer's explain then shows the method's own arguments too."""

  @functools.wraps(wrapped, assigned=("__name__",))
  def call(*args, **kwargs):
    return method(*args, **kwargs)

  call.__qualname__ = f"{type(method.__self__).__name__}.{call.__name__}"
  own = inspect.getdoc(wrapped)
  call.__doc__ = inspect.getdoc(method) + (
      f"\n\n{wrapped.__qualname__}:\n{own}" if own else "")
  return call


def trainable_methods() -> list[str]:
  """Every method `fit_explainer` accepts."""
  return sorted(registry.METHODS)


__all__ = ["fit_explainer", "load_explainer", "trainable_methods"]
