"""Settings of the latent method and checks of its inputs, before anything trains."""

from __future__ import annotations


import ml_collections
import numpy as np

from cfx_jax.classifier import Classifier
from cfx_jax.methods import common


OUTCOME = "outcome"
GENERATOR_DIR = "generator"
GENERATOR_META = "generator.json"
EXPLAINER_META = "latent.json"

def latent_config(**overrides) -> ml_collections.ConfigDict:
  """CPU-sized defaults for 32 px images; overrides on top (unknown names raise)."""
  c = ml_collections.ConfigDict()
  c.latent_dim = 16              # size of the latent vector, or channels of the latent grid
  c.vae_features = (16, 32, 64)
  c.spatial_latent = False      # True: a latent grid at the last feature level (objects
                                # anywhere on a textured background), edited by a
                                # convolutional shift predictor
  c.vae_steps = 6000            # the lesion, a few pixels across, is encoded late in training
  c.beta = 0.5                  # KL weight; the reconstruction term is the summed squared error
  c.kl_warmup = 500             # steps over which the KL weight ramps up from 0
  c.predictor_features = (16, 32, 64)
  c.predictor_steps = 600
  c.shift_hidden = (128, 128)   # hidden widths (channels, for a latent grid)
  c.shift_steps = 1500
  c.batch_size = 32
  c.learning_rate = 1e-3        # Adam, cosine-decayed, for each of the three networks
  c.shift_norm = 0.05           # weight of |dz|_2
  c.shift_local = False         # latent grid only: |dz| summed over positions (few change)
  c.margin = 2.0                # logit margin the requested change must clear
  c.keep = 1.0                  # weight of holding the unrequested attributes
  c.keep_clip = 8.0             # their logits are compared clipped to [-keep_clip, keep_clip]
  c.outcome_keep = 0.0          # the same weight when the outcome is the requested change
  c.flip_fraction = 0.75        # share of requests that ask for the opposite of the decision
  c.prior_fraction = 0.5        # share of shift-training latents drawn from the prior (none
                                # for a pretrained generator without sample_prior)
  c.num_samples = 4096          # latent samples for the causal scores
  c.confidence = 0.95           # of the Wilson intervals
  c.num_devices = 1             # devices of the training mesh (0: all)
  c.log_every = 100
  c.checkpoint_every = 500
  c.progress = True
  c.chunk_size = 256            # images per compiled call in explain and the scores
  c.seed = 0
  c.warn_failures = True        # warn, listing indices, when a counterfactual misses its target
  return common.settings("latent", c, overrides, check_config)


def check_config(cfg) -> None:
  """Fail before anything trains on settings the method cannot use."""
  if int(cfg.kl_warmup) < 0:
    raise ValueError(f"kl_warmup must be non-negative, got {cfg.kl_warmup}")
  for name in ("latent_dim", "vae_steps", "predictor_steps", "shift_steps", "batch_size",
               "num_samples", "log_every", "checkpoint_every", "chunk_size"):
    if int(cfg[name]) < 1:
      raise ValueError(f"{name} must be at least 1, got {cfg[name]}")
  for name in ("vae_features", "predictor_features"):
    if not tuple(cfg[name]) or any(int(f) < 1 for f in cfg[name]):
      raise ValueError(f"{name} must be a non-empty sequence of positive widths, got "
                       f"{cfg[name]}")
  if any(int(f) < 1 for f in cfg.shift_hidden):
    raise ValueError(f"shift_hidden widths must be positive, got {cfg.shift_hidden}")
  for name in ("beta", "shift_norm", "margin", "keep", "keep_clip", "outcome_keep"):
    if not cfg[name] >= 0:
      raise ValueError(f"{name} must be non-negative, got {cfg[name]}")
  if not cfg.learning_rate > 0:
    raise ValueError(f"learning_rate must be positive, got {cfg.learning_rate}")
  for name in ("flip_fraction", "prior_fraction"):
    if not 0 <= cfg[name] <= 1:
      raise ValueError(f"{name} must lie in [0, 1], got {cfg[name]}")
  if not 0 < cfg.confidence < 1:
    raise ValueError(f"confidence must lie in (0, 1), got {cfg.confidence}")
  if int(cfg.num_devices) < 0:
    raise ValueError(f"num_devices must be non-negative (0: all), got {cfg.num_devices}")


def config_from_json(config: dict) -> ml_collections.ConfigDict:
  return latent_config(**{k: tuple(v) if isinstance(v, list) else v for k, v in config.items()})


# Inputs ---------------------------------------------------------------------------------


def check_binary_classifier(classifier: Classifier) -> None:
  if classifier.num_classes != 2:
    raise ValueError(f"the latent explainer treats the classifier's decision as a binary "
                     f"attribute and needs a binary classifier; this one has "
                     f"{classifier.num_classes} classes")


def check_attributes(attributes, n: int, names=None) -> tuple[np.ndarray, tuple[str, ...]]:
  """(N, K) binary labels as int32 and K names (default attribute_0, ...)."""
  a = np.asarray(attributes)
  if a.dtype == object or not (np.issubdtype(a.dtype, np.number) or a.dtype == bool):
    raise TypeError(f"attributes must be a numeric or boolean array (N, K), got dtype {a.dtype}")
  if a.ndim != 2 or a.shape[0] != n or a.shape[1] < 1:
    raise ValueError(f"attributes must have shape ({n}, K) with K >= 1, one row per image, "
                     f"got {a.shape}")
  bad = ~np.isin(a, (0, 1))
  if bad.any():
    raise ValueError(f"attributes must be binary (0 or 1); found values "
                     f"{np.unique(a[bad])[:5].tolist()}")
  k = a.shape[1]
  names = tuple(f"attribute_{i}" for i in range(k)) if names is None else tuple(
      str(s) for s in names)
  if len(names) != k:
    raise ValueError(f"got {len(names)} attribute names for {k} attribute columns")
  if len(set(names)) != k or OUTCOME in names:
    raise ValueError(f"attribute names must be distinct and not {OUTCOME!r}, got {names}")
  return a.astype(np.int32), names
