"""Run a compiled function over a large input in fixed-size, padded chunks.

Each chunk is padded to a power-of-two size (at least 8, at most `chunk_size`), so any
number of images reuses a handful of compiled programs instead of one per size. A
`chunk_size` below 8 is kept as it is: on the CPU an optimiser that explains one image at
a time is fastest (benchmarks/optimiser_throughput.py), and padding its chunks to 8
would multiply its work.
"""

from __future__ import annotations

import jax
import numpy as np

MIN_BUCKET = 8


def bucket_size(n: int, chunk_size: int) -> int:
  size = MIN_BUCKET
  while size < n and size < chunk_size:
    size *= 2
  return min(size, chunk_size)


def map_in_chunks(fn, arrays, chunk_size: int = 256, on_chunk=None):
  """fn(*chunks) -> pytree of arrays with the chunk on axis 0; results concatenated.

  on_chunk(done): called with the number of inputs done once each chunk's results are
  on the host.
  """
  arrays = [np.asarray(a) for a in arrays]
  total = len(arrays[0])
  outs = []
  for start in range(0, total, chunk_size):
    parts = [a[start:start + chunk_size] for a in arrays]
    n = len(parts[0])
    size = bucket_size(n, chunk_size)
    padded = [np.concatenate([p, np.repeat(p[-1:], size - n, axis=0)]) for p in parts]
    out = fn(*padded)
    outs.append(jax.tree.map(lambda a: np.asarray(a)[:n], out))
    if on_chunk is not None:
      on_chunk(start + n)
  return jax.tree.map(lambda *a: np.concatenate(a), *outs)
