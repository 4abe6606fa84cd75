"""The black box being explained, as a pure function `apply(params, images) -> logits`.

Users may pass any JAX-traceable callable `images -> logits`; logits of shape (N, K),
K >= 2, or a single binary logit (N,) / (N, 1), which becomes the two-class logits
(0, z) so that softmax equals the sigmoid. Parameters travel as an explicit argument so
the compiled train step does not bake them in as constants.

A classifier may also be cut at its last convolutional block (`feature_maps`, `head`),
which Grad-CAM needs; `from_module` provides the cut for modules that define
`feature_maps(x)` and `feature_head(maps)`, such as the reference CNN. Likewise
`bn_features` exposes the inputs and running statistics of a module's BatchNorm layers
(modules that define `bn_features(x)`), which deep-inversion explainers match.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from cfx_jax.batching import map_in_chunks

PROBE_SIZE = 8
FINGERPRINT_TOLERANCE = 1e-3


@dataclasses.dataclass(frozen=True)
class Classifier:
  """`head(params, feature_maps(params, x))` equals `apply(params, x)` when both are set.

  bn_features(params, x), when set, returns (logits, layers) from one forward pass, with
  per BatchNorm layer a triple (the layer's input (N, h, w, C), its running mean (C,), its
  running variance (C,)); its logits equal `apply(params, x)`.
  """

  apply: Callable[[Any, jax.Array], jax.Array]
  params: Any
  num_classes: int
  image_shape: tuple[int, int, int]
  feature_maps: Callable[[Any, jax.Array], jax.Array] | None = None
  head: Callable[[Any, jax.Array], jax.Array] | None = None
  bn_features: Callable[[Any, jax.Array], tuple] | None = None

  def __call__(self, images: jax.Array) -> jax.Array:
    return self.apply(self.params, images)

  def logits(self, images, chunk_size: int = 256) -> np.ndarray:
    """Logits of a large array of images, in compiled, padded chunks."""
    fn = jax.jit(self.apply)
    return map_in_chunks(lambda x: fn(self.params, x), [images], chunk_size)

  def predict(self, images, chunk_size: int = 256) -> np.ndarray:
    return np.argmax(self.logits(images, chunk_size), axis=-1).astype(np.int32)

  def predict_proba(self, images, chunk_size: int = 256) -> np.ndarray:
    """(N, K) class probabilities (softmax of the logits)."""
    return np.asarray(jax.nn.softmax(self.logits(images, chunk_size), axis=-1))

  def fingerprint(self) -> list[list[float]]:
    """Logits on a fixed random probe batch: identifies the classifier in checkpoints."""
    probe = jax.random.uniform(jax.random.key(1234), (PROBE_SIZE,) + self.image_shape,
                               minval=-1.0, maxval=1.0)
    return np.asarray(self(probe), np.float64).round(5).tolist()


def _two_class(logits: jax.Array) -> jax.Array:
  if logits.ndim == 2 and logits.shape[1] == 1:
    logits = logits[:, 0]
  if logits.ndim == 1:
    return jnp.stack([jnp.zeros_like(logits), logits], axis=-1)
  return logits


def from_module(module: nnx.Module, image_shape) -> Classifier:
  """Wrap an NNX module called as `module(images)` (BatchNorm in inference mode)."""
  graphdef, state = nnx.split(module)

  def apply(params, images):
    return _two_class(nnx.merge(graphdef, params)(images))

  cut = {}
  if (callable(getattr(module, "feature_maps", None))
      and callable(getattr(module, "feature_head", None))):

    def feature_maps(params, images):
      return nnx.merge(graphdef, params).feature_maps(images)

    def head(params, maps):
      return _two_class(nnx.merge(graphdef, params).feature_head(maps))

    cut.update(feature_maps=feature_maps, head=head)
  if callable(getattr(module, "bn_features", None)):

    def bn_features(params, images):
      logits, layers = nnx.merge(graphdef, params).bn_features(images)
      return _two_class(logits), layers

    cut["bn_features"] = bn_features
  return _checked(apply, state, image_shape, **cut)


def as_classifier(classifier, image_shape) -> Classifier:
  """Accept a Classifier, an NNX module or a plain callable; check its output."""
  image_shape = tuple(int(d) for d in image_shape)
  if isinstance(classifier, Classifier):
    if classifier.image_shape != image_shape:
      raise ValueError(f"classifier was built for images of shape {classifier.image_shape}, "
                       f"got {image_shape}")
    return classifier
  if isinstance(classifier, nnx.Module):
    return from_module(classifier, image_shape)
  if not callable(classifier):
    raise TypeError(f"classifier must be callable images -> logits, got {type(classifier).__name__}")
  fn = classifier
  return _checked(lambda params, images: _two_class(fn(images)), None, image_shape)


def _checked(apply, params, image_shape, **cut) -> Classifier:
  """Shape check without compiling (eval_shape), then a finite check on a tiny probe."""
  n = 2
  try:
    out = jax.eval_shape(lambda p, x: apply(p, x), params,
                         jax.ShapeDtypeStruct((n,) + tuple(image_shape), jnp.float32))
  except Exception as e:  # noqa: BLE001 -- re-raised with context
    raise TypeError(f"classifier could not be traced on images of shape "
                    f"(N,) + {tuple(image_shape)}: {e}") from e
  if not hasattr(out, "shape") or out.ndim != 2 or out.shape[0] != n or out.shape[1] < 2:
    shape = getattr(out, "shape", type(out).__name__)
    raise ValueError("classifier must return logits of shape (N, K) with K >= 2, or a "
                     f"single binary logit (N,) / (N, 1); got {shape} for N={n}")
  if not jnp.issubdtype(out.dtype, jnp.floating):
    raise ValueError(f"classifier must return floating-point logits, got {out.dtype}")
  clf = Classifier(apply, params, int(out.shape[1]), tuple(image_shape), **cut)
  if not np.all(np.isfinite(clf.fingerprint())):
    raise ValueError("classifier returned non-finite logits on random images in [-1, 1]")
  return clf


def check_fingerprint(saved, classifier: Classifier, what: str) -> None:
  """Refuse `what` (a saved explainer or checkpoint) made for another classifier."""
  now = np.asarray(classifier.fingerprint())
  saved = np.asarray(saved)
  if now.shape != saved.shape or not np.allclose(now, saved, atol=FINGERPRINT_TOLERANCE,
                                                 rtol=FINGERPRINT_TOLERANCE):
    raise ValueError(f"{what} was made for another classifier: its outputs on the probe "
                     "images differ from this classifier's")
