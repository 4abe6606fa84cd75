"""A trained conditional-generator explainer: batched, compiled explanations; save and load."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from cfx_jax import diagnosis, persistence, validation
from cfx_jax.batching import map_in_chunks
from cfx_jax.classifier import Classifier, as_classifier, check_fingerprint
from cfx_jax.explanation import Explanation
from cfx_jax.methods.common import other_class
from cfx_jax.methods.conditional.recipe import GeneratorRecipe, ModelSpec
from cfx_jax.methods.losses import change_map


class GeneratorExplainer:
  """A generator that maps an image to its counterfactual toward a target class."""

  def __init__(self, method: GeneratorRecipe, spec: ModelSpec, gen_def, gen_params,
               classifier: Classifier, *, chunk_size: int = 256, map_reference: str = "input",
               config: dict | None = None):
    if map_reference not in ("input", "stable"):
      raise ValueError(f"map_reference must be 'input' or 'stable', got {map_reference!r}")
    self.method, self.spec, self.classifier = method, spec, classifier
    self.map_reference = map_reference
    self.gen_def, self.gen_params = gen_def, gen_params
    self.chunk_size = int(chunk_size)
    self.config = dict(config or {})
    # SyCE with more than two classes trains no stable image by default
    # (docs/fashion_mnist.md, "Ten classes"): G(G(x)) would be shown and scored as if
    # it kept the class.
    self.has_stable = method.trains_stable(
        method.weights(spec.num_classes, dict(self.config.get("weights") or {})))
    if map_reference == "stable" and not self.has_stable:
      raise ValueError(f"map_reference='stable' needs a stable image, but {method.name} "
                       "with these weights trains none (its symmetric terms are off); use "
                       "map_reference='input'")
    self.history: list[dict] = []  # training metrics, filled by the train loop
    # How the setting was chosen (cfx_jax/selection): the candidates, their scores and
    # the second judge's scores of the choice; None for a fixed config.
    self.selection: dict | None = None
    self._programs = jax.jit(self._explain_program)
    self._all_targets = jax.jit(self._all_targets_program)

  @property
  def image_shape(self) -> tuple[int, int, int]:
    return (self.spec.image_size, self.spec.image_size, self.spec.channels)

  @property
  def num_classes(self) -> int:
    return self.spec.num_classes

  def _explain_program(self, gen_params, clf_params, x, target):
    gen = nnx.merge(self.gen_def, gen_params)
    probs = jax.nn.softmax(self.classifier.apply(clf_params, x), axis=-1)
    predicted = jnp.argmax(probs, axis=-1).astype(jnp.int32)
    target = jnp.where(target < 0, other_class(probs), target)
    stable, cf = self.method.explain(gen, x, predicted, target)
    maps = change_map(x if self.map_reference == "input" else stable, cf)
    cf_probs = jax.nn.softmax(self.classifier.apply(clf_params, cf), axis=-1)
    return Explanation(maps=maps, counterfactual=cf, stable=stable if self.has_stable else None,
                       target=target, probs=probs, cf_probs=cf_probs)

  def _all_targets_program(self, gen_params, clf_params, x):
    """vmap of the explain program over every target class: fields (N, K, ...)."""
    targets = jnp.broadcast_to(jnp.arange(self.num_classes, dtype=jnp.int32)[:, None],
                               (self.num_classes, x.shape[0]))
    out = jax.vmap(lambda t: self._explain_program(gen_params, clf_params, x, t))(targets)
    # Toward its own predicted class an image is its own counterfactual.
    own = out.target == jnp.argmax(out.probs, axis=-1)
    out = dataclasses.replace(
        out, maps=jnp.where(own[..., None, None], 0.0, out.maps),
        counterfactual=jnp.where(own[..., None, None, None], x[None], out.counterfactual),
        stable=None if out.stable is None
        else jnp.where(own[..., None, None, None], x[None], out.stable))
    return jax.tree.map(lambda a: jnp.swapaxes(a, 0, 1), out)

  def predict_proba(self, images) -> np.ndarray:
    x = validation.check_images(images, self.image_shape)
    return self.classifier.predict_proba(x, self.chunk_size)

  def explain(self, images, target=None) -> Explanation:
    """Counterfactuals and maps, one generator pass per image (no optimisation).

    images: (N, H, W, C) or one (H, W, C) image in [-1, 1]. target: the class each
    counterfactual should reach (int or (N,), not the predicted class); default: the
    most likely other class. Returns an `Explanation` with the counterfactuals, their
    maps and, where the method trains one, the stable image.
    """
    x = validation.check_images(images, self.image_shape)
    if target is None:
      t = np.full((len(x),), -1, np.int32)
    else:
      predicted = np.argmax(self.predict_proba(x), axis=-1)
      t = validation.check_target(target, len(x), self.num_classes, predicted)
    return diagnosis.check_explanation(map_in_chunks(
        lambda xb, tb: self._programs(self.gen_params, self.classifier.params, xb, tb),
        [x, t], self.chunk_size))

  def explain_all_targets(self, images) -> Explanation:
    """One counterfactual toward every class: fields shaped (N, K, ...).

    Entry [i, k] explains image i toward class k; toward the predicted class the
    counterfactual is the image itself and the map is zero.
    """
    x = validation.check_images(images, self.image_shape)
    return map_in_chunks(
        lambda xb: self._all_targets(self.gen_params, self.classifier.params, xb),
        [x], self.chunk_size)

  # Persistence ---------------------------------------------------------------

  def save(self, path: str) -> None:
    meta = {
        "method": self.method.name,
        "spec": {**dataclasses.asdict(self.spec), "dtype": None},
        "chunk_size": self.chunk_size,
        "map_reference": self.map_reference,
        "config": self.config,
        "classifier_fingerprint": self.classifier.fingerprint(),
        "selection": self.selection,
    }
    persistence.save(path, "explainer.json", meta, "generator", self.gen_params)


def spec_from_json(d: dict[str, Any]) -> ModelSpec:
  d = dict(d)
  for k in ("gen_features", "disc_features"):
    d[k] = tuple(d[k])
  return ModelSpec(**d)


def load(method: GeneratorRecipe, meta: dict, classifier, path: str) -> GeneratorExplainer:
  """The explainer saved at `path` (its explainer.json is `meta`), checked against
  `classifier`."""
  spec = spec_from_json(meta["spec"])
  image_shape = (spec.image_size, spec.image_size, spec.channels)
  if isinstance(classifier, Classifier) and classifier.image_shape != image_shape:
    raise ValueError(f"explainer at {path} was trained on images of shape {image_shape}, "
                     f"the classifier expects {classifier.image_shape}")
  clf = as_classifier(classifier, image_shape)
  if clf.num_classes != spec.num_classes:
    raise ValueError(f"explainer at {path} explains {spec.num_classes} classes, the "
                     f"classifier has {clf.num_classes}")
  clf = check_fingerprint(meta["classifier_fingerprint"], clf, f"explainer at {path}")
  gen_def, abstract = nnx.split(nnx.eval_shape(lambda: method.build(spec, nnx.Rngs(0))[0]))
  params = persistence.restore(path, "generator", abstract)
  explainer = GeneratorExplainer(method, spec, gen_def, params, clf,
                                 chunk_size=meta["chunk_size"],
                                 map_reference=meta["map_reference"], config=meta["config"])
  explainer.selection = meta.get("selection")
  return explainer
