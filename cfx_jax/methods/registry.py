"""Every explanation method by name, behind one interface: fit one, load a saved one.

`METHODS` is the one table of methods: the API, the train job and the leaderboard only
ever look a method up here, and every entry is fitted the same way (`Entry.fit`); only
the API's choice of a setting by judges asks which methods are `GENERATOR_METHODS`.

`fit(steps=, batch_size=)` set these settings of each method (a config that sets one of
them to another value raises):

| method | `steps` | `batch_size` |
|---|---|---|
| syce, cyce, sagen | `steps`: generator training steps | `batch_size`: images per step, all classes |
| cae | `steps`: autoencoder training steps | `batch_size`: images per step, all classes |
| latent | `vae_steps`, `predictor_steps`, `shift_steps`: each network's training steps (`vae_steps` unused with a pretrained `generator=`) | `batch_size`: images per step |
| fido | `steps`: mask optimisation steps per image in `explain` | `chunk_size`: images optimised together in `explain` |
| disc | `steps`: inversion steps per image in `explain` (`fit_steps`, the prior's fit to the query, stays) | `chunk_size`: images optimised together in `explain` |
"""

from __future__ import annotations

import dataclasses
import os
from typing import Callable, Protocol

import ml_collections
import numpy as np

from cfx_jax import validation
from cfx_jax.classifier import as_classifier, check_fingerprint
from cfx_jax.explanation import Explanation
from cfx_jax.methods.cae import CaeExplainer
from cfx_jax.methods.cae.explainer import PAPER_FORM as CAE_PAPER_FORM
from cfx_jax.methods.cae.explainer import cae_config
from cfx_jax.methods.conditional import RECIPES, get_recipe
from cfx_jax.methods.conditional import config as config_lib
from cfx_jax.methods.conditional import explainer as generator_explainer
from cfx_jax.methods.conditional import train as generator_train
from cfx_jax.methods.disc import DiscExplainer
from cfx_jax.methods.disc.explainer import PAPER_FORM as DISC_PAPER_FORM
from cfx_jax.methods.disc.explainer import disc_config
from cfx_jax.methods.fido import FidoExplainer
from cfx_jax.methods.fido.explainer import PAPER_FORM as FIDO_PAPER_FORM
from cfx_jax.methods.fido.explainer import fido_config
from cfx_jax.methods.latent import LatentExplainer
from cfx_jax.methods.latent.config import latent_config


class Explainer(Protocol):
  """What every fitted explainer offers, whatever its method."""

  image_shape: tuple[int, int, int]
  num_classes: int

  def explain(self, images, target=None) -> Explanation:
    """Counterfactuals and maps of `images`: the one call every method answers, so a
    caller can swap methods without changing code.

    Args:
      images: (N, H, W, C), or one (H, W, C) image, of the shape and value range the
        explainer was fitted on.
      target: the class each counterfactual should reach, an int or (N,) ints, none of
        them the classifier's decision; None: the method's default (for most, the most
        likely other class).
    Returns:
      An `Explanation`: maps (N, H, W), the counterfactuals in the images' value range,
      their targets and the classifier's probabilities on the images and on them.
    """
    ...

  def save(self, path: str) -> None:
    """Write the explainer to the directory `path`, so that `cfx_jax.load_explainer`
    gives it back without fitting again."""
    ...


@dataclasses.dataclass(frozen=True)
class Entry:
  """One method: how to fit it, how to load it, and what its fit takes.

  train(classifier, images, *, config, seed, settings, workdir[, attributes]
  [, generator]): the family's training, given the settings `steps` and `batch_size`
  stand for; with `workdir` it checkpoints there, resumes, and saves the fitted explainer
  to `<workdir>/explainer`.
  load(meta, classifier, path[, generator]): the explainer saved at `path`, whose
  explainer.json is `meta`, checked against `classifier`.
  """

  name: str
  family: str                     # the package under cfx_jax/methods that implements it
  defaults: Callable[[], ml_collections.ConfigDict]  # the method's default settings
  train: Callable[..., Explainer]
  load: Callable[[dict, object, str], Explainer]
  steps_settings: tuple[str, ...] = ("steps",)       # what `steps` sets
  batch_settings: tuple[str, ...] = ("batch_size",)  # what `batch_size` sets
  optimises_per_image: bool = False  # `explain` runs an optimisation for every image
  uses_attributes: bool = False      # `fit` takes attribute labels of the images
  uses_generator: bool = False       # `fit` and `load` take a pretrained generator
  # grid(config) -> (multiple, square): image sides the method's networks take are
  # multiples of `multiple`, and equal if `square` (the API pads other sizes).
  grid: Callable[[object], tuple[int, bool]] = lambda config: (1, False)
  # Overrides of `defaults()` that give the method's paper form, where our defaults
  # differ from it (`paper_form`); empty where they are the paper's.
  paper: dict = dataclasses.field(default_factory=dict)

  def settings(self, config, steps=None, batch_size=None) -> dict:
    """{setting: value} that `steps` and `batch_size` stand for (`keyword_settings`)."""
    return keyword_settings(self.name, config, self.defaults, steps, batch_size,
                            self.steps_settings, self.batch_settings)

  def resolved(self, config, steps=None, batch_size=None) -> dict:
    """Every setting of a fit, flat ("model.residual"): the defaults, `config` and the
    keywords on top; what the run checks and what identifies its work directory."""
    if isinstance(config, (dict, ml_collections.ConfigDict)) and self.family == "conditional":
      base = generator_train.resolve_config(self.name, config)
    else:
      base = self.defaults()
    out = validation.flat(base)
    if self.family != "conditional":
      out.update(validation.flat(config))
    out.update(self.settings(config, steps, batch_size))
    return out

  def fit(self, classifier, images, *, config=None, seed=0, steps=None, batch_size=None,
          workdir=None, **extra) -> Explainer:
    """Train what the method needs on `images`: the one way every method is fitted."""
    if config is not None and not isinstance(config, (dict, ml_collections.ConfigDict)):
      raise TypeError(f"config must be a ConfigDict or a dict, got {type(config).__name__}")
    return self.train(classifier, images, config=config, seed=seed,
                      settings=self.settings(config, steps, batch_size), workdir=workdir,
                      **extra)


def setting(config, path: str, default=None):
  """The value at dotted `path` of a dict or ConfigDict of overrides, else `default`."""
  node = config
  for key in path.split("."):
    node = node.get(key) if hasattr(node, "get") else None
  return default if node is None else node


def _halving_grid(path: str, default, offset: int, square: bool = False):
  """The grid of networks that halve the image once per entry of the feature tuple at
  `path` of the config, less `offset`."""
  def grid(config):
    return 2 ** (len(setting(config, path, default)) - offset), square
  return grid


def keyword_settings(name: str, config, defaults, steps, batch_size,
                     steps_settings=("steps",), batch_settings=("batch_size",)) -> dict:
  """{setting: value} that `steps` and `batch_size` stand for.

  A setting the config gives another value raises rather than one of them silently
  winning. A dict names only what its user set; a ConfigDict holds every setting, so
  only its values that differ from `defaults()` count as set.
  """
  if isinstance(config, ml_collections.ConfigDict):
    base = defaults().to_dict()
    given = {k: v for k, v in config.to_dict().items() if k not in base or v != base[k]}
  else:
    given = dict(config) if isinstance(config, dict) else {}
  out = {}
  for keyword, value, names in (("steps", steps, steps_settings),
                                ("batch_size", batch_size, batch_settings)):
    if value is None:
      continue
    if (isinstance(value, bool) or not isinstance(value, (int, np.integer))
        or value < 1):
      raise ValueError(f"{keyword} must be >= 1, got {value!r}")
    for setting in names:
      if given.get(setting) is not None and given[setting] != value:
        raise ValueError(f"{name}: {keyword}={value} disagrees with config "
                         f"{setting}={given[setting]!r}; set only one of them")
      out[setting] = int(value)
  return out


def _generator_entry(name: str) -> Entry:
  """A conditional-generator method: trained by the shared GAN loop, whose config is
  `cfx_jax.explainer_config(name)`."""

  def train(classifier, images, *, config, seed, settings, workdir):
    return generator_train.fit(name, classifier, images, config=config, seed=seed,
                               steps=settings.get("steps"),
                               batch_size=settings.get("batch_size"), workdir=workdir)

  def load(meta, classifier, path):
    return generator_explainer.load(get_recipe(name), meta, classifier, path)

  def defaults():
    return config_lib.explainer_config(name)

  return Entry(name, "conditional", defaults, train, load, grid=_halving_grid(
      "model.gen_features", defaults().model.gen_features, 1, square=True))


def _class_entry(name: str, cls, defaults, **options) -> Entry:
  """A method whose explainer class has fit / from_meta / save of its own; `defaults()`
  its settings, which a dict of overrides (`steps` and `batch_size` on top) updates."""

  def train(classifier, images, *, config, seed, settings, workdir, **extra):
    if isinstance(config, ml_collections.ConfigDict):
      config = config.to_dict()
    config = {**(config or {}), **settings}
    explainer = cls.fit(as_classifier(classifier, images.shape[1:]), images, seed=seed,
                        config=config, workdir=workdir, **extra)
    if workdir:
      explainer.save(os.path.join(workdir, "explainer"))  # collective on every process
    return explainer

  def load(meta, classifier, path, **extra):
    clf = as_classifier(classifier, meta["image_shape"])
    clf = check_fingerprint(meta["classifier_fingerprint"], clf, f"explainer at {path}")
    return cls.from_meta(meta, clf, path, **extra)

  return Entry(name, name, defaults, train, load, **options)


METHODS: dict[str, Entry] = {
    **{recipe.name: _generator_entry(recipe.name) for recipe in RECIPES},
    "cae": _class_entry("cae", CaeExplainer, cae_config, grid=_halving_grid(
        "model.features", cae_config().model.features, 1), paper=CAE_PAPER_FORM),
    "disc": _class_entry("disc", DiscExplainer, disc_config, batch_settings=("chunk_size",),
                         optimises_per_image=True, paper=DISC_PAPER_FORM),
    "fido": _class_entry("fido", FidoExplainer, fido_config, batch_settings=("chunk_size",),
                         optimises_per_image=True, paper=FIDO_PAPER_FORM),
    "latent": _class_entry("latent", LatentExplainer, latent_config,
                           steps_settings=("vae_steps", "predictor_steps", "shift_steps"),
                           uses_attributes=True, uses_generator=True, grid=_halving_grid(
                               "vae_features", latent_config().vae_features, 0)),
}
# The methods `cfx_jax.selection` can choose a setting of: one GAN recipe, many weights.
GENERATOR_METHODS = tuple(name for name, e in METHODS.items() if e.family == "conditional")


def paper_form(config_or_method) -> ml_collections.ConfigDict:
  """The settings of a method's paper, beside ours: `paper_form("disc")` for any method
  by name, or `paper_form(config)` of a conditional-generator config
  (`cfx_jax.explainer_config`), which keeps what the papers leave open (steps, widths).
  Pass the result as `fit_explainer(..., config=)`."""
  if not isinstance(config_or_method, str):
    return config_lib.paper_form(config_or_method)
  entry = get(config_or_method)
  if entry.family == "conditional":
    return config_lib.paper_form(entry.defaults())
  c = entry.defaults()
  c.update(entry.paper)
  return c


def get(name: str) -> Entry:
  if name not in METHODS:
    raise ValueError(f"unknown method {name!r}; available: {sorted(METHODS)}")
  return METHODS[name]
