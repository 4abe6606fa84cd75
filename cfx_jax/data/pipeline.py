"""Deterministic, resumable batching with grain and placement on a device mesh.

Batches are random-access: element i of a pipeline is the batch of global step
i and is a pure function of (seed, i). Resuming training at step i therefore
needs no iterator state, and every process of a multi-host job can compute its
own share of the same global batch independently.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import jax
import numpy as np

from cfx_jax.data.sources import ArraySource

if TYPE_CHECKING:
  import grain


def _mix_seed(seed: int, stream: int) -> int:
  """A 32-bit shuffle seed per (seed, stream).

  grain reshuffles each epoch with `shuffle_seed + epoch`, so raw user seeds
  would make epoch e of seed s equal epoch 0 of seed s + e; hashing avoids it.
  """
  if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or (
      seed < 0):
    raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
  state = np.random.SeedSequence([int(seed), stream])
  return int(state.generate_state(1, np.uint32)[0])


def _check_positive_int(name: str, value: Any) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or (
      value <= 0):
    raise ValueError(f"{name} must be a positive integer, got {value!r}")
  return int(value)


def _local_range(
    size: int, process_index: int | None, process_count: int | None
) -> tuple[int, int]:
  """This process's contiguous [start, stop) share of a global batch axis."""
  if process_count is None:
    process_count = jax.process_count()
  if process_index is None:
    process_index = jax.process_index()
  process_count = _check_positive_int("process_count", process_count)
  if not 0 <= process_index < process_count:
    raise ValueError(
        f"process_index must be in [0, {process_count}), got {process_index}")
  if size % process_count:
    raise ValueError(
        f"global batch size {size} is not divisible by process_count "
        f"{process_count}")
  local = size // process_count
  return process_index * local, (process_index + 1) * local


def _as_ids(indices: Sequence[Any]) -> np.ndarray:
  return np.asarray(indices, dtype=np.int64)


def _gather(source: Any, ids: np.ndarray) -> dict[str, np.ndarray]:
  """Records `ids` (any shape) of `source`, stacked with `ids.shape` in front."""
  flat = ids.reshape(-1)
  if isinstance(source, ArraySource):
    out = {k: v[flat] for k, v in source.arrays.items()}
  else:
    getitems = getattr(source, "__getitems__", None)
    records = (getitems([int(i) for i in flat]) if getitems is not None
               else [source[int(i)] for i in flat])
    out = {k: np.stack([np.asarray(r[k]) for r in records])
           for k in records[0]}
  out = {k: v.reshape(ids.shape + v.shape[1:]) for k, v in out.items()}
  out["id"] = ids.copy()
  return out


def _batch_for_step(
    source: Any, start: int, stop: int, ids: np.ndarray
) -> dict[str, np.ndarray]:
  return _gather(source, ids[start:stop])


def batches(
    source: Any,
    batch_size: int,
    *,
    seed: int = 0,
    shuffle: bool = True,
    process_index: int | None = None,
    process_count: int | None = None,
) -> grain.MapDataset:
  """Infinite dataset whose element i is this process's part of step i's batch.

  `batch_size` is global. Each epoch is a fresh seed-dependent permutation of
  the source (or the source order when `shuffle=False`); the last partial
  batch of an epoch is dropped, so no record repeats within an epoch. Process p
  of P receives rows [p * B / P, (p + 1) * B / P) of every global batch.
  Elements are dicts of stacked arrays plus "id" (int64 source indices).
  """
  batch_size = _check_positive_int("batch_size", batch_size)
  n = len(source)
  if n < batch_size:
    raise ValueError(
        f"batch_size {batch_size} exceeds the {n} records of the source")
  # Imported here: cfx_jax itself, and a train step or benchmark without this pipeline,
  # run without grain (the accelerator machines do not have it).
  import grain
  start, stop = _local_range(batch_size, process_index, process_count)
  shuffle_seed = _mix_seed(seed, 0)
  ids = grain.MapDataset.range(n)
  if shuffle:
    ids = ids.shuffle(seed=shuffle_seed)
  ids = ids.batch(batch_size, drop_remainder=True, batch_fn=_as_ids).repeat()
  return ids.map(functools.partial(_batch_for_step, source, start, stop))


def _grouped_for_step(
    source: Any,
    members: Sequence[np.ndarray],
    start: int,
    stop: int,
    positions: Sequence[np.ndarray],
) -> dict[str, np.ndarray]:
  ids = np.stack([m[p[start:stop]] for m, p in zip(members, positions)])
  return _gather(source, ids)


def grouped_batches(
    source: Any,
    groups: np.ndarray,
    num_groups: int,
    batch_per_group: int,
    *,
    seed: int = 0,
    process_index: int | None = None,
    process_count: int | None = None,
) -> grain.MapDataset:
  """Infinite dataset of batches with one row of records per group.

  Element i holds arrays of shape (num_groups, b, ...) plus "id" (num_groups,
  b), where row k only contains records with `groups[id] == k` (for example,
  the classifier's predicted class). Each group cycles through its own members
  in a fresh permutation per epoch, independently of the other groups; a group
  smaller than `batch_per_group` therefore repeats members within a row.
  Process p of P receives columns [p * b / P, (p + 1) * b / P).
  """
  num_groups = _check_positive_int("num_groups", num_groups)
  batch_per_group = _check_positive_int("batch_per_group", batch_per_group)
  groups = np.asarray(groups)
  if groups.shape != (len(source),):
    raise ValueError(
        f"groups must have shape ({len(source)},) to match the source, got "
        f"{groups.shape}")
  if groups.size and not np.issubdtype(groups.dtype, np.integer):
    raise ValueError(f"groups must be integers, got dtype {groups.dtype}")
  outside = (groups < 0) | (groups >= num_groups)
  if np.any(outside):
    raise ValueError(
        f"groups must lie in [0, {num_groups}); found "
        f"{np.unique(groups[outside]).tolist()}")
  members = [np.flatnonzero(groups == k) for k in range(num_groups)]
  empty = [k for k, m in enumerate(members) if m.size == 0]
  if empty:
    raise ValueError(f"group(s) {empty} have no members; every group needs at "
                     "least one record")
  import grain
  start, stop = _local_range(batch_per_group, process_index, process_count)
  streams = [
      grain.MapDataset.range(m.size)
      .shuffle(seed=_mix_seed(seed, k + 1))
      .repeat()
      .batch(batch_per_group, batch_fn=_as_ids)
      for k, m in enumerate(members)
  ]
  zipped = grain.experimental.ZipMapDataset(streams)
  return zipped.map(
      functools.partial(_grouped_for_step, source, members, start, stop))


def to_global(
    batch: Mapping[str, Any],
    shardings: Mapping[str, jax.sharding.Sharding] | jax.sharding.Sharding,
) -> dict[str, Any]:
  """Assembles process-local numpy arrays into global `jax.Array`s.

  `shardings` maps keys to their global sharding (or is one sharding for every
  key). Keys without a sharding stay process-local numpy arrays, which keeps
  bookkeeping such as "id" on the host; shardings for absent keys are ignored
  so one dict can serve datasets with and without masks.
  """
  if isinstance(shardings, jax.sharding.Sharding):
    shardings = {k: shardings for k in batch}
  out = {}
  for key, value in batch.items():
    if key in shardings:
      out[key] = jax.make_array_from_process_local_data(
          shardings[key], np.asarray(value))
    else:
      out[key] = value
  return out
