"""Device mesh and shardings: the same code on one device, a GPU host or a TPU pod.

The mesh has a `data` axis and an `fsdp` axis. The batch is split over both (every
device sees a different slice); parameters and optimizer state are split along `fsdp`
only, by one rule: shard a leaf's largest dimension that the axis size divides,
replicate it when there is none. With `fsdp=1` this is plain data parallelism.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

BATCH_AXES = ("data", "fsdp")


def make_mesh(num_devices: int | None = None, fsdp: int = 1) -> jax.sharding.Mesh:
  """A (data, fsdp) mesh over `num_devices` devices (all when None or <= 0).

  Auto axis types: the default Explicit types reject some batch-sharded ops.
  """
  devices = jax.devices()
  n = len(devices) if not num_devices or num_devices <= 0 else int(num_devices)
  if n > len(devices):
    raise ValueError(f"asked for {n} devices, only {len(devices)} are available")
  fsdp = int(fsdp or 1)
  if fsdp < 1 or n % fsdp:
    raise ValueError(f"fsdp={fsdp} must divide the number of devices ({n})")
  if jax.process_count() > 1 and n != len(devices):
    raise ValueError("a multi-process job must use every device (num_devices=0)")
  return jax.make_mesh((n // fsdp, fsdp), BATCH_AXES,
                       axis_types=(AxisType.Auto, AxisType.Auto), devices=devices[:n])


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh, ndim: int, axis: int = 0) -> NamedSharding:
  """Shard dimension `axis` of an `ndim`-dimensional batch over every device."""
  spec = [None] * ndim
  spec[axis] = BATCH_AXES
  return NamedSharding(mesh, P(*spec))


def fsdp_sharding(mesh, shape) -> NamedSharding:
  """The largest dimension divisible by the fsdp axis size goes over `fsdp`."""
  size = mesh.shape["fsdp"]
  spec = [None] * len(shape)
  if size > 1:
    for dim in np.argsort([-d for d in shape], kind="stable"):
      if shape[dim] % size == 0 and shape[dim] >= size:
        spec[dim] = "fsdp"
        break
  return NamedSharding(mesh, P(*spec))


def state_shardings(mesh, tree):
  """Shardings for a pytree of arrays (parameters, optimizer state, counters)."""
  return jax.tree.map(lambda a: fsdp_sharding(mesh, np.shape(a)), tree)


def describe(mesh, global_batch: int) -> dict:
  devices = mesh.devices.size
  return {"devices": int(devices), "processes": jax.process_count(),
          "mesh": {k: int(v) for k, v in mesh.shape.items()},
          "global_batch": int(global_batch), "per_device_batch": global_batch // devices}


def to_host(tree, mesh=None):
  """NumPy copy of a pytree of (possibly sharded, multi-process) arrays, on every process.

  One process holds every shard, so this is a plain transfer; several gather them.
  Nothing is compiled per call (it runs at every log step)."""
  del mesh  # the arrays carry their shardings
  if jax.process_count() == 1:
    return jax.tree.map(np.asarray, jax.device_get(tree))
  return jax.tree.map(np.asarray, multihost_utils.process_allgather(tree, tiled=True))
