"""Every explanation method by name, behind one interface: fit one, load a saved one.

The API, the train job and the leaderboard only ever look a method up here; none of
them knows which family a method belongs to.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Callable, Protocol

import ml_collections

from cfx_jax.classifier import as_classifier, check_fingerprint
from cfx_jax.explanation import Explanation
from cfx_jax.methods.cae import CaeExplainer
from cfx_jax.methods.conditional import GENERATORS, get_generator
from cfx_jax.methods.conditional import explainer as generator_explainer
from cfx_jax.methods.conditional import train as generator_train
from cfx_jax.methods.disc import DiscExplainer
from cfx_jax.methods.fido import FidoExplainer
from cfx_jax.methods.latent import LatentExplainer


class Explainer(Protocol):
  """What every fitted explainer offers, whatever its method."""

  image_shape: tuple[int, int, int]
  num_classes: int

  def explain(self, images, target=None) -> Explanation: ...

  def save(self, path: str) -> None: ...


@dataclasses.dataclass(frozen=True)
class Entry:
  """fit(classifier, images, *, config, seed, steps, batch_size, workdir[, attributes]):
  trains what the method needs; with `workdir` it checkpoints there, resumes, and saves
  the fitted explainer to `<workdir>/explainer`. load(meta, classifier, path): the
  explainer saved at `path`, whose explainer.json is `meta`, checked against `classifier`.
  """

  name: str
  fit: Callable[..., Explainer]
  load: Callable[[dict, object, str], Explainer]
  optimises_per_image: bool = False  # `explain` runs an optimisation for every image
  uses_attributes: bool = False      # `fit` takes attribute labels of the images


def _generator_entry(name: str) -> Entry:
  def fit(classifier, images, *, config=None, seed=0, steps=None, batch_size=None,
          workdir=None):
    return generator_train.fit(name, classifier, images, config=config, seed=seed,
                               steps=steps, batch_size=batch_size, workdir=workdir)

  def load(meta, classifier, path):
    return generator_explainer.load(get_generator(name), meta, classifier, path)

  return Entry(name, fit, load)


def _own_class_entry(name: str, cls, **flags) -> Entry:
  """A method whose explainer class has fit / from_meta / save of its own."""

  def fit(classifier, images, *, config=None, seed=0, steps=None, batch_size=None,
          workdir=None, **extra):
    if steps is not None or batch_size is not None:
      raise ValueError(f"method {name!r} takes its step counts and batch sizes in `config` "
                       "(see its settings), not as steps= / batch_size=")
    if isinstance(config, ml_collections.ConfigDict):
      config = config.to_dict()
    explainer = cls.fit(as_classifier(classifier, images.shape[1:]), images, seed=seed,
                        config=config, workdir=workdir, **extra)
    if workdir:
      explainer.save(os.path.join(workdir, "explainer"))  # collective on every process
    return explainer

  def load(meta, classifier, path):
    clf = as_classifier(classifier, meta["image_shape"])
    check_fingerprint(meta["classifier_fingerprint"], clf, f"explainer at {path}")
    return cls.from_meta(meta, clf, path)

  return Entry(name, fit, load, **flags)


REGISTRY: dict[str, Entry] = {
    **{name: _generator_entry(name) for name in GENERATORS},
    "cae": _own_class_entry("cae", CaeExplainer),
    "disc": _own_class_entry("disc", DiscExplainer, optimises_per_image=True),
    "fido": _own_class_entry("fido", FidoExplainer, optimises_per_image=True),
    "latent": _own_class_entry("latent", LatentExplainer, uses_attributes=True),
}


def get(name: str) -> Entry:
  if name not in REGISTRY:
    raise ValueError(f"unknown method {name!r}; available: {sorted(REGISTRY)}")
  return REGISTRY[name]
