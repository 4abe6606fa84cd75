"""The black box being explained, as a pure function `apply(params, images) -> logits`.

Users may pass a JAX-traceable callable `images -> outputs`, a function
`f(variables, images)` together with its variables, an NNX module, or a Flax Linen
module with its variables. Outputs are logits of shape (N, K), K >= 2, or a single
binary logit (N,) / (N, 1), which becomes the two-class logits (0, z) so that softmax
equals the sigmoid; with `outputs="probabilities"` they are class probabilities (rows
summing to 1, or one probability of class 1) and are turned into log-probabilities.
Parameters travel as an explicit argument so that a compiled program does not bake them
in as constants.

A classifier may also be cut at its last convolutional block (`feature_maps`, `head`),
which Grad-CAM needs; `from_module` provides the cut for modules that define
`feature_maps(x)` and `feature_head(maps)`, such as the reference CNN. Likewise
`bn_features` exposes the inputs and running statistics of a module's BatchNorm layers
(modules that define `bn_features(x)`), which deep-inversion explainers match.
"""

from __future__ import annotations

import base64
import dataclasses
import inspect
import io
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen, nnx
from flax import errors

from cfx_jax.batching import map_in_chunks

PROBE_SIZE = 8
# Real images in the fingerprint: uniform noise alone can miss a classifier that differs
# only on images like the data (the same logits on noise, others on lesions).
PROBE_REAL = 4
FINGERPRINT_TOLERANCE = 1e-3
OUTPUTS = ("logits", "probabilities")
# Smallest probability kept when probabilities become log-probabilities.
PROBABILITY_FLOOR = 1e-7


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
  value_range: tuple[float, float] = (-1.0, 1.0)  # of the images `apply` takes
  # A few images of the fit, in the fingerprint (see `with_probe`).
  probe_images: Any = dataclasses.field(default=None, compare=False, repr=False)

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

  def fingerprint(self):
    """Identifies the classifier in checkpoints and saves: its logits on a fixed random
    probe batch, and with `probe_images` also on those, which the fingerprint carries
    ({"outputs", "images"}) so that a check at load can reuse them."""
    if self.probe_images is None:
      return _outputs(self, None)
    return {"outputs": _outputs(self, self.probe_images),
            "images": encode_images(self.probe_images)}

  def probe(self) -> jax.Array:
    """A fixed batch of uniform random images in the classifier's value range."""
    lo, hi = self.value_range
    return jax.random.uniform(jax.random.key(1234), (PROBE_SIZE,) + self.image_shape,
                              minval=lo, maxval=hi)



def _outputs(classifier: Classifier, images) -> list[list[float]]:
  probe = classifier.probe()
  if images is not None:
    probe = jnp.concatenate([probe, jnp.asarray(images, probe.dtype)])
  return np.asarray(classifier(probe), np.float64).round(5).tolist()


def with_probe(classifier: Classifier, images) -> Classifier:
  """`classifier` fingerprinted on the first `PROBE_REAL` of `images` besides noise (as
  float16, the precision they are saved at)."""
  probe = np.asarray(np.asarray(images[:PROBE_REAL], np.float16), np.float32)
  return dataclasses.replace(classifier, probe_images=probe)


def encode_images(images) -> str:
  buffer = io.BytesIO()
  np.save(buffer, np.asarray(images, np.float16), allow_pickle=False)
  return base64.b64encode(buffer.getvalue()).decode("ascii")


def decode_images(text: str) -> np.ndarray:
  raw = np.load(io.BytesIO(base64.b64decode(text)), allow_pickle=False)
  return raw.astype(np.float32)


def fingerprint_outputs(fingerprint) -> list:
  """The logits of a fingerprint, old (a list) or new (a dict)."""
  return fingerprint["outputs"] if isinstance(fingerprint, dict) else fingerprint


def _as_logits(outputs: jax.Array, kind: str) -> jax.Array:
  """(N, K) logits from logits or probabilities, (N, K) or one binary output (N,) / (N, 1)."""
  if outputs.ndim == 2 and outputs.shape[1] == 1:
    outputs = outputs[:, 0]
  if kind == "probabilities":
    p = jnp.clip(outputs, PROBABILITY_FLOOR, 1.0)
    if outputs.ndim == 1:
      q = jnp.clip(1.0 - outputs, PROBABILITY_FLOOR, 1.0)
      return jnp.stack([jnp.log(q), jnp.log(p)], axis=-1)
    return jnp.log(p)
  if outputs.ndim == 1:
    return jnp.stack([jnp.zeros_like(outputs), outputs], axis=-1)
  return outputs


def from_module(module: nnx.Module, image_shape, *, outputs: str = "logits",
                value_range=(-1.0, 1.0)) -> Classifier:
  """Wrap an NNX module called as `module(images)`, in eval mode.

  A copy is put into eval mode (BatchNorm running averages, no dropout); the caller's
  module is left as it is.
  """
  graphdef, state = nnx.split(module)
  copy = nnx.merge(graphdef, state)
  copy.eval()
  graphdef, state = nnx.split(copy)

  def apply(params, images):
    return _as_logits(nnx.merge(graphdef, params)(images), outputs)

  cut = {}
  if (callable(getattr(module, "feature_maps", None))
      and callable(getattr(module, "feature_head", None))):

    def feature_maps(params, images):
      return nnx.merge(graphdef, params).feature_maps(images)

    def head(params, maps):
      return _as_logits(nnx.merge(graphdef, params).feature_head(maps), outputs)

    cut.update(feature_maps=feature_maps, head=head)
  if callable(getattr(module, "bn_features", None)):

    def bn_features(params, images):
      logits, layers = nnx.merge(graphdef, params).bn_features(images)
      return _as_logits(logits, outputs), layers

    cut["bn_features"] = bn_features
  return _checked(apply, state, image_shape, outputs, value_range, **cut)


def as_classifier(classifier, image_shape, *, outputs: str = "logits", value_range=(-1.0, 1.0),
                  variables=None) -> Classifier:
  """Accept a Classifier, a callable, an NNX module or a Linen module; check its output.

  classifier: `images -> outputs`; with `variables`, `f(variables, images)` or a Flax
    Linen module (called as `module.apply(variables, images)`). The variables are passed
    to every compiled program as an argument, never baked in as constants.
  outputs: "logits" or "probabilities" (what the classifier returns).
  value_range: (lo, hi) of the images the classifier takes.
  """
  image_shape = tuple(int(d) for d in image_shape)
  if outputs not in OUTPUTS:
    raise ValueError(f"outputs must be one of {OUTPUTS}, got {outputs!r}")
  value_range = check_value_range(value_range)
  if isinstance(classifier, Classifier):
    if classifier.image_shape != image_shape:
      raise ValueError(f"classifier was built for images of shape {classifier.image_shape}, "
                       f"got {image_shape}")
    if variables is not None or outputs != "logits" or value_range != classifier.value_range:
      raise ValueError("classifier is already a Classifier: build it with its outputs, "
                       "value_range and variables once, with as_classifier")
    return classifier
  if isinstance(classifier, nnx.Module):
    if variables is not None:
      raise ValueError("an NNX module holds its own parameters; pass it without variables")
    return from_module(classifier, image_shape, outputs=outputs, value_range=value_range)
  if isinstance(classifier, linen.Module):
    if variables is None:
      raise ValueError("a Flax Linen module needs its variables: "
                       "as_classifier(model, image_shape, variables=variables)")
    _refuse_extra_arguments(classifier)
    module = classifier
    return _checked(lambda params, images: _as_logits(module.apply(params, images), outputs),
                    variables, image_shape, outputs, value_range)
  if not callable(classifier):
    raise TypeError(f"classifier must be callable images -> logits, got {type(classifier).__name__}")
  fn = classifier
  if variables is not None:
    return _checked(lambda params, images: _as_logits(fn(params, images), outputs),
                    variables, image_shape, outputs, value_range)
  return _checked(lambda params, images: _as_logits(fn(images), outputs), None, image_shape,
                  outputs, value_range)


def _refuse_extra_arguments(module: linen.Module) -> None:
  """The module is called with the images alone: arguments it needs besides them (such
  as `train`) would fail deep in tracing with a bare TypeError."""
  params = list(inspect.signature(module.__call__).parameters.values())[1:]
  needed = [p.name for p in params if p.default is p.empty
            and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
  if needed:
    names = ", ".join(f"`{n}`" for n in needed)
    example = ", ".join(f"{n}=False" if n == "train" else f"{n}=..." for n in needed)
    raise TypeError(f"the classifier's __call__ needs {names} besides the images, but it "
                    f"is called with the images alone: pass a function of (variables, "
                    f"images) with your variables instead, such as "
                    f"`lambda variables, x: model.apply(variables, x, {example})`")


def check_value_range(value_range) -> tuple[float, float]:
  """(lo, hi) as two finite floats with lo < hi."""
  try:
    lo, hi = (float(v) for v in value_range)
  except (TypeError, ValueError) as e:
    raise ValueError(f"value_range must be a pair (lo, hi), got {value_range!r}") from e
  if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
    raise ValueError(f"value_range must be finite with lo < hi, got ({lo}, {hi})")
  return lo, hi


def _checked(apply, params, image_shape, outputs, value_range, **cut) -> Classifier:
  """Shape check without compiling (eval_shape), then output checks on a tiny probe."""
  n = 2
  try:
    out = jax.eval_shape(lambda p, x: apply(p, x), params,
                         jax.ShapeDtypeStruct((n,) + tuple(image_shape), jnp.float32))
  except errors.TraceContextError as e:
    raise TypeError("the classifier changes its own state when called (an NNX module in "
                    "train mode?): call `.eval()` on it, or pass a pure function") from e
  except Exception as e:  # noqa: BLE001 -- re-raised with context
    raise TypeError(f"classifier could not be traced on images of shape "
                    f"(N,) + {tuple(image_shape)}: {e}") from e
  if not hasattr(out, "shape") or out.ndim != 2 or out.shape[0] != n or out.shape[1] < 2:
    shape = getattr(out, "shape", type(out).__name__)
    raise ValueError(f"classifier must return {outputs} of shape (N, K) with K >= 2, or a "
                     f"single binary output (N,) / (N, 1); got {shape} for N={n}")
  if not jnp.issubdtype(out.dtype, jnp.floating):
    raise ValueError(f"classifier must return floating-point {outputs}, got {out.dtype}")
  clf = Classifier(apply, params, int(out.shape[1]), tuple(image_shape), **cut,
                   value_range=tuple(value_range))
  raw = np.asarray(jax.jit(apply)(params, clf.probe()))
  if not np.all(np.isfinite(raw)):
    raise ValueError(f"classifier returned non-finite {outputs} on random images in "
                     f"[{value_range[0]:g}, {value_range[1]:g}]")
  if outputs == "logits":
    _refuse_probabilities(raw, bool(np.all(raw[:, 0] == 0.0)))
  return clf


def _refuse_probabilities(logits: np.ndarray, single: bool) -> None:
  """Probabilities passed as logits would be squashed a second time: refuse them."""
  if single:
    z = logits[:, 1]
    looks = bool(np.all((z >= 0.0) & (z <= 1.0)))
    what = "a single output in [0, 1] on every probe image"
  else:
    looks = bool(np.all(logits >= 0.0) and np.allclose(logits.sum(-1), 1.0, atol=1e-4))
    what = "non-negative rows summing to 1 on every probe image"
  if looks:
    raise ValueError(f"the classifier returns {what}: these look like probabilities. "
                     "Pass outputs=\"probabilities\" (or return logits)")


def check_fingerprint(saved, classifier: Classifier, what: str) -> Classifier:
  """Refuse `what` (a saved explainer or checkpoint) made for another classifier; returns
  the classifier with the saved probe images, so that a save of it keeps them. A
  fingerprint saved before real images were part of it is checked on the noise alone."""
  images = decode_images(saved["images"]) if isinstance(saved, dict) else None
  now = np.asarray(_outputs(classifier, images))
  saved = np.asarray(fingerprint_outputs(saved))
  if now.shape != saved.shape or not np.allclose(now, saved, atol=FINGERPRINT_TOLERANCE,
                                                 rtol=FINGERPRINT_TOLERANCE):
    raise ValueError(f"{what} was made for another classifier: its outputs on the probe "
                     "images differ from this classifier's")
  return classifier if images is None else dataclasses.replace(classifier,
                                                              probe_images=images)
