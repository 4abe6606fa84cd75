"""`LatentExplainer`: counterfactuals by a learned shift of the latent code."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from cfx_jax import integrity, persistence, validation
from cfx_jax.batching import map_in_chunks
from cfx_jax.classifier import Classifier
from cfx_jax.explanation import Explanation
from cfx_jax.methods import common
from cfx_jax.methods.latent.config import (EXPLAINER_META, OUTCOME, check_attributes,
                                           check_binary_classifier, config_from_json,
                                           latent_config)
from cfx_jax.methods.latent.fitting import load_or_train_generator, pretrained_generator
from cfx_jax.methods.latent.generator import (LatentGenerator, architecture, as_pretrained,
                                              build_shift, builtin_latent_shape,
                                              probe_decodings, restore_networks)
from cfx_jax.methods.latent.shift import train_shift, attribute_logits, decode_latent


# Explainer ------------------------------------------------------------------------------


class LatentExplainer(common.ClassifierBound):
  """Counterfactuals by a learned shift of the image's latent code.

  explain: z = the encoder mean of x, dz = shift(z, t) with t = +-1 on the outcome
  (towards the target class) and 0 on the attributes; counterfactual = G(z + dz);
  map = |G(z + dz) - G(z)| averaged over channels. The map compares two decodings, not
  the counterfactual with x, so the generator's reconstruction error (the VAE's blur
  everywhere) cancels and the map shows only what the shift changed.
  """

  def __init__(self, classifier, generator: LatentGenerator, shift_params, config=None, *,
               image_shape=None, metrics: dict | None = None):
    config = common.as_settings(config, latent_config)
    self.classifier = common.bind_classifier(classifier, image_shape)
    check_binary_classifier(self.classifier)
    if tuple(generator.image_shape) != self.image_shape:
      raise ValueError(f"the generator was trained on images of shape {generator.image_shape}, "
                       f"the classifier expects {self.image_shape}")
    self.config = config
    self.generator = generator
    self.shift_def = nnx.graphdef(nnx.eval_shape(lambda: build_shift(
        generator.latent_shape, generator.num_attributes + 1, config.shift_hidden)))
    self.shift_params = shift_params
    self.metrics = dict(metrics or {})
    self._explain_program = jax.jit(self._explain_chunk)
    self._intervene_program = jax.jit(self._intervene_chunk)
    self._edit_program = jax.jit(self._edit_chunk)

  @classmethod
  def fit(cls, classifier, images, *, seed: int = 0, config=None, workdir=None,
          attributes=None, attribute_names=None, generator=None) -> LatentExplainer:
    """Train (or reuse, from `<workdir>/generator`) the VAE and attribute predictor on
    `images`, then the shift predictor for this classifier.

    generator: a pretrained generative model, used as it is and never trained (a
    `PretrainedGenerator`, or any object with its encode, decode, latent_shape and
    image_shape): then only the attribute predictor and the shift train, and the VAE
    settings are not used. It is checked before anything trains.

    attributes: (N, K) binary labels of `images` (None: the outcome is the only
    attribute); attribute_names: their K names (default attribute_0, ...). Binary
    classifiers only: the decision is the last attribute, "outcome".

    With `workdir`, every network is checkpointed there and resumed. A generator already
    in `<workdir>/generator` is used as it is (the images only train the shift), so
    explainers of several classifiers can share one workdir and one generator.
    """
    cfg = common.as_settings(config, latent_config)
    cfg.seed = int(seed)
    x = validation.check_images(images)
    clf = common.bind_classifier(classifier, x.shape[1:])
    check_binary_classifier(clf)
    names: tuple[str, ...] = ()
    if attributes is not None:
      attributes, names = check_attributes(attributes, len(x), attribute_names)
    elif attribute_names is not None:
      raise ValueError("attribute_names were given without attributes")
    if len(x) < int(cfg.batch_size):
      raise ValueError(f"need at least batch_size={cfg.batch_size} images to train, got "
                       f"{len(x)}")
    pretrained = None if generator is None else as_pretrained(generator, clf.image_shape, x)
    latent_shape = (builtin_latent_shape(architecture(cfg, x.shape[1:])) if pretrained is None
                    else pretrained.latent_shape)
    if cfg.shift_local and len(latent_shape) != 3:
      raise ValueError(f"shift_local needs a latent grid (h, w, c); this latent has shape "
                       f"{latent_shape} (spatial_latent=True gives the built-in VAE one)")
    if workdir:
      os.makedirs(workdir, exist_ok=True)
    if pretrained is None:
      gen = load_or_train_generator(x, attributes, names, cfg, workdir)
    else:
      gen = pretrained_generator(pretrained, x, attributes, names, cfg, workdir)
    _, shift_params, shift_metrics = train_shift(gen, clf, x, cfg, workdir)
    explainer = cls(clf, gen, shift_params, cfg, metrics={"shift": shift_metrics})
    z = gen.sample_latents(jax.random.key(int(cfg.seed) + 3), min(512, int(cfg.num_samples)))
    explainer.metrics["edits"] = explainer.edit_success(z)
    return explainer

  @property
  def attribute_names(self) -> tuple[str, ...]:
    return self.generator.attribute_names

  @property
  def num_attributes(self) -> int:
    return self.generator.num_attributes

  def _params(self):
    return {**self.generator.params(), "classifier": self.classifier.params,
            "shift": self.shift_params}

  def _shift(self, params, z, t):
    return nnx.merge(self.shift_def, params["shift"])(z, t)

  def _explain_chunk(self, params, x, t):
    gen, clf = self.generator, self.classifier
    probs = jax.nn.softmax(clf.apply(params["classifier"], x), axis=-1)
    z = gen.encode_fn(params["generator"], x)
    request = jnp.zeros((x.shape[0], gen.num_attributes + 1), z.dtype)
    request = request.at[:, -1].set(2.0 * t.astype(z.dtype) - 1.0)
    base = decode_latent(gen, params, z)
    cf = decode_latent(gen, params, z + self._shift(params, z, request))
    cf_probs = jax.nn.softmax(clf.apply(params["classifier"], cf), axis=-1)
    maps = jnp.mean(jnp.abs(cf - base), axis=-1)
    return Explanation(maps=maps, target=t, probs=probs, counterfactual=cf, cf_probs=cf_probs)

  def explain(self, images, target=None) -> Explanation:
    """Counterfactuals of every image, in compiled chunks.

    target: the class each counterfactual should reach (int or (N,), not the predicted
    class); default: the other class.
    """
    x = validation.check_images(images, self.image_shape)
    chunk = int(self.config.chunk_size)
    predicted = self.classifier.predict(x, chunk)
    t = (1 - predicted if target is None
         else validation.check_target(target, len(x), self.num_classes, predicted))
    params = self._params()
    out = map_in_chunks(lambda xb, tb: self._explain_program(params, xb, tb),
                        [x, t.astype(np.int32)], chunk)
    return self.checked(out)

  def report_failures(self, explanation: Explanation, *, stacklevel: int = 2) -> np.ndarray:
    """Indices whose counterfactual is not classified as its target, with a warning."""
    return common.report_failures("latent", explanation, "did not reach the target class",
                                     stacklevel)

  def _latents(self, z) -> np.ndarray:
    """z (N, latent_dim), or (N, *latent_shape) flattened."""
    z = np.asarray(z, np.float32)
    gen = self.generator
    if z.shape[1:] == gen.latent_shape:
      z = z.reshape(len(z), -1)
    if z.ndim != 2 or z.shape[1] != gen.latent_dim:
      raise ValueError(f"z must have shape (N, {gen.latent_dim}) or (N, *{gen.latent_shape}), "
                       f"got {z.shape}")
    return z

  def edit(self, z, t) -> np.ndarray:
    """G(z + shift(z, t)) for latents (N, latent_dim) or (N, *latent_shape) and requests
    (N, K + 1) in {-1, 0, 1}."""
    z = self._latents(z)
    t = np.asarray(t, np.float32)
    if t.shape != (len(z), self.num_attributes + 1) or not np.isin(t, (-1, 0, 1)).all():
      raise ValueError(f"t must have shape ({len(z)}, {self.num_attributes + 1}) with entries "
                       f"in {{-1, 0, 1}} (the attributes, then the outcome), got {t.shape}")
    params = self._params()
    return map_in_chunks(lambda zb, tb: self._edit_program(params, zb, tb), [z, t],
                         int(self.config.chunk_size))

  def _edit_chunk(self, params, z, t):
    return decode_latent(self.generator, params, z + self._shift(params, z, t))

  def _intervene_chunk(self, params, z):
    gen, clf = self.generator, self.classifier
    k = gen.num_attributes

    def decide(images):
      return attribute_logits(gen, clf, params, images) > 0

    observed = decide(decode_latent(gen, params, z))
    eye = jnp.eye(k + 1, dtype=z.dtype)
    after = {}
    for sign in (1.0, -1.0):
      rows = []
      for j in range(k + 1):
        t = jnp.broadcast_to(sign * eye[j], (z.shape[0], k + 1))
        rows.append(decide(decode_latent(gen, params, z + self._shift(params, z, t))))
      after[sign] = jnp.stack(rows, axis=1)  # (N, entry edited, decision)
    return {"a": observed[:, :k], "y": observed[:, k],
            "y_do1": after[1.0][:, :k, k], "y_do0": after[-1.0][:, :k, k],
            "a_do1": jnp.diagonal(after[1.0][:, :k, :k], axis1=1, axis2=2),
            "a_do0": jnp.diagonal(after[-1.0][:, :k, :k], axis1=1, axis2=2),
            "kept_do1": after[1.0][:, :k, :k], "kept_do0": after[-1.0][:, :k, :k],
            "y_set1": after[1.0][:, k, k], "y_set0": after[-1.0][:, k, k]}

  def intervene(self, z) -> dict:
    """Decisions on G(z) and under every single edit, for latents z (N, latent_dim).

    "a" (N, K), "y" (N,): observed; "y_do1" / "y_do0" (N, K): the outcome after setting
    attribute k to 1 / 0; "a_do1" / "a_do0" (N, K): attribute k after that edit;
    "kept_do1" / "kept_do0" (N, K, K): every attribute after editing attribute k;
    "y_set1" / "y_set0" (N,): the outcome after asking for outcome 1 / 0.
    """
    z = self._latents(z)
    params = self._params()
    out = map_in_chunks(lambda zb: self._intervene_program(params, zb), [z],
                        int(self.config.chunk_size))
    return {key: np.asarray(v, bool) for key, v in out.items()}

  def edit_success(self, z) -> dict:
    """How often single edits of latents z reach their request and leave the other
    attributes as they were, over all z: where an attribute already has the requested
    value the edit should leave it so (`causal_scores` counts only the edits that change
    it)."""
    out = self.intervene(z)
    k = self.num_attributes
    result = {OUTCOME: {"set1_reached": float(out["y_set1"].mean()),
                        "set0_reached": float(1.0 - out["y_set0"].mean())}}
    others = ~np.eye(k, dtype=bool)
    for j, name in enumerate(self.attribute_names):
      entry = {"do1_reached": float(out["a_do1"][:, j].mean()),
               "do0_reached": float(1.0 - out["a_do0"][:, j].mean())}
      if k > 1:
        same1 = out["kept_do1"][:, j, others[j]] == out["a"][:, others[j]]
        same0 = out["kept_do0"][:, j, others[j]] == out["a"][:, others[j]]
        entry["others_kept"] = float(np.mean(np.concatenate([same1, same0])))
      result[name] = entry
    return result

  def save(self, path: str) -> None:
    """Settings, the classifier's fingerprint, the generator and the shift predictor.

    A pretrained generator is not saved (its functions are the caller's code): the saved
    explainer holds the rest and needs it again to load,
    `load_explainer(path, classifier, generator=G)`, which checks that G decodes as the
    one fitted with.
    """
    gen = self.generator
    meta = {"architecture": gen.architecture, "attribute_names": list(gen.attribute_names),
            "generator_metrics": gen.metrics, "metrics": self.metrics}
    tree = {"shift": self.shift_params}
    if gen.predictor_params is not None:
      tree["predictor"] = gen.predictor_params
    if gen.pretrained is None:
      tree["vae"] = gen.vae_params
    else:
      tree["probe"] = probe_decodings(gen.pretrained)
      if gen.latents is not None:
        tree["latents"] = np.asarray(gen.latents, np.float32)
        meta["num_latents"] = len(gen.latents)
    with integrity.saving(path) as folder:
      persistence.save(folder, EXPLAINER_META, meta, "networks", tree)
      common.save_settings(folder, "latent", self)

  @classmethod
  def from_meta(cls, meta: dict, classifier: Classifier, path: str,
                generator=None) -> LatentExplainer:
    cfg = config_from_json(meta["config"])
    saved = persistence.read_meta(path, EXPLAINER_META, "latent explainer")
    arch = saved["architecture"]
    pretrained = None
    if "latent_shape" not in arch:
      if generator is not None:
        raise ValueError(f"the latent explainer at {path} has its own VAE; generator= is "
                         "only for explainers fitted with a pretrained generator")
    elif generator is None:
      raise ValueError(f"the latent explainer at {path} was fitted with a pretrained "
                       "generator, which the library does not save: pass it again, "
                       "load_explainer(path, classifier, generator=G)")
    else:
      shape = tuple(arch["image_shape"])
      pretrained = as_pretrained(generator, shape, np.zeros((2,) + shape, np.float32))
      if pretrained.latent_shape != tuple(arch["latent_shape"]):
        raise ValueError(f"the generator's latent_shape is {pretrained.latent_shape}; the "
                         f"explainer at {path} was fitted with {tuple(arch['latent_shape'])}")
    gen, shift = restore_networks(path, "networks", arch, saved["attribute_names"],
                                  saved.get("generator_metrics", {}),
                                  shift_hidden=cfg.shift_hidden, pretrained=pretrained,
                                  num_latents=saved.get("num_latents", 0))
    return cls(classifier, gen, shift, cfg, metrics=saved.get("metrics", {}))
