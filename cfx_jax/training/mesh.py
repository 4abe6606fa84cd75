"""Device mesh and shardings: the same code on one device or many."""

from __future__ import annotations

import jax
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P


def make_mesh(num_devices: int | None = None) -> jax.sharding.Mesh:
  """A 1-D `data` mesh over the first `num_devices` devices (all when None or <= 0).

  Auto axis types: the default Explicit types reject some batch-sharded ops (DESIGN 5).
  """
  devices = jax.devices()
  n = len(devices) if not num_devices or num_devices <= 0 else int(num_devices)
  if n > len(devices):
    raise ValueError(f"asked for {n} devices, only {len(devices)} are available")
  return jax.make_mesh((n,), ("data",), axis_types=(AxisType.Auto,), devices=devices[:n])


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh, ndim: int, axis: int = 0) -> NamedSharding:
  """Shard dimension `axis` of an `ndim`-dimensional batch over the `data` axis."""
  spec = [None] * ndim
  spec[axis] = "data"
  return NamedSharding(mesh, P(*spec))
