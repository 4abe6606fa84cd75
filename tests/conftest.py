"""Shared fixtures: eight host devices, a tiny linear classifier and random images."""

from __future__ import annotations

import os

_FLAG = "--xla_force_host_platform_device_count=8"
if _FLAG not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _FLAG).strip()
# The suite compiles hundreds of small programs and runs most of them a few times, so
# XLA's optimisation passes cost more than they save (tests/test_realism_options.py:
# 173 s -> 74 s). Set in the environment, it also reaches the jobs tests start as processes.
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")

import tempfile  # noqa: E402

# Many tests build the same programs again (a fresh closure per train call, the same
# train step in several tests, jobs started as processes). One compilation cache for the
# whole session loads them instead of recompiling. Set in the environment by the first
# process that reads this file (pytest-xdist's controller), so that both workers and
# every job they start share it.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="cfx_jax_xla_"))
# The commands' own cache (cfx_jax.engine.runtime) is the same folder, not the user's.
os.environ.setdefault("CFX_JAX_COMPILATION_CACHE", os.environ["JAX_COMPILATION_CACHE_DIR"])
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

def pytest_collection_modifyitems(items):
  """The long tests first: a worker that drew one last would keep the other waiting."""
  items.sort(key=lambda item: item.get_closest_marker("slow") is None)


IMAGE_SHAPE = (16, 16, 3)
PATCH = (slice(4, 8), slice(4, 8))
# Confident enough that the flip term outweighs the proximity terms at the start.
WEIGHT = 200.0
BIAS = 0.05


def linear_logits(images):
  """Binary logits (0, s) with s an affine function of one 4x4 patch's mean."""
  s = WEIGHT * jnp.mean(images[:, PATCH[0], PATCH[1], :], axis=(1, 2, 3)) + BIAS
  return jnp.stack([jnp.zeros_like(s), s], axis=-1)


def linear_predict(images) -> np.ndarray:
  """NumPy decision of `linear_logits`."""
  images = np.asarray(images, np.float32)
  s = WEIGHT * images[:, PATCH[0], PATCH[1], :].mean(axis=(1, 2, 3)) + BIAS
  return (s > 0).astype(np.int32)


def random_images(n: int, seed: int = 0) -> np.ndarray:
  rng = np.random.default_rng(seed)
  return rng.uniform(-1.0, 1.0, (n,) + IMAGE_SHAPE).astype(np.float32)


def model_config(**overrides) -> dict:
  """Tiny networks on one device, no progress output; keyword overrides on top."""
  cfg = {"num_devices": 1, "progress": False, "log_every": 1, "checkpoint_every": 2,
         "model": {"gen_features": (8, 16), "disc_features": (8, 16)}}
  cfg.update(overrides)
  return cfg


@pytest.fixture(scope="session")
def classifier_fn():
  return linear_logits


@pytest.fixture(scope="session")
def classifier():
  import cfx_jax
  return cfx_jax.as_classifier(linear_logits, IMAGE_SHAPE)


@pytest.fixture(scope="session")
def images():
  x = random_images(32, seed=0)
  counts = np.bincount(linear_predict(x), minlength=2)
  assert counts.min() >= 8, f"both classes must be predicted, got {counts}"
  return x


@pytest.fixture(scope="session")
def tiny_config():
  return model_config()
