"""FLOPs and bytes of a compiled program that are right on every backend, and rooflines.

XLA's cost analysis on a GPU leaves out the convolutions: they become cuDNN library
calls, which it does not count (2.27 GFLOP for a SyCE step on an H100 against about
200 GFLOP for the same step on the CPU). So the count always comes from the same
program compiled for the host CPU, where every convolution stays an XLA op: the inputs
are given as abstract arrays placed on the CPU device, whatever the default backend is.
The FLOPs are the model's: the stride-2 convolutions are counted in their plain form,
not as the space-to-depth convolutions that run (`cfx_jax/models/layers.py`), whose
zero-padded kernels would add 7 multiplications for every 9.

`conv2d_flops` and `dense_flops` count a layer by hand; the tests check that they agree
with the CPU count, which (like XLA) counts only the taps that fall inside the image.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from cfx_jax.models import layers

SOURCE = ("XLA cost analysis of the program compiled for the host CPU, FLOPs with the "
          "strided convolutions in their textbook form")


def _cpu_cost(fn, args, donate_argnums) -> dict:
  cpu = jax.sharding.SingleDeviceSharding(jax.devices("cpu")[0])
  abstract = jax.tree.map(
      lambda a: jax.ShapeDtypeStruct(np.shape(a), a.dtype, sharding=cpu), args)
  # A new function each time: jit's trace cache would otherwise hand the trace made
  # outside `textbook_forms` to the call inside it.
  fresh = lambda *a: fn(*a)  # noqa: E731
  compiled = jax.jit(fresh, donate_argnums=donate_argnums).lower(*abstract).compile()
  cost = compiled.cost_analysis()
  return cost[0] if isinstance(cost, (list, tuple)) else cost


def host_cost(fn, *args, donate_argnums=()) -> dict:
  """Cost of `jax.jit(fn)(*args)` compiled for the CPU (with the donation of the measured
  program: it changes the bytes). "flops" are the model's, counted with the strided
  convolutions in their textbook form (`layers.textbook_forms`: the space-to-depth form
  multiplies zero taps); "executed_flops" and "bytes_accessed" are those of the program
  as it runs."""
  as_run = _cpu_cost(fn, args, donate_argnums)
  with layers.textbook_forms("strided_conv"):
    textbook = _cpu_cost(fn, args, donate_argnums)
  return {"flops": float(textbook.get("flops", float("nan"))),
          "executed_flops": float(as_run.get("flops", float("nan"))),
          "bytes_accessed": float(as_run.get("bytes accessed", float("nan"))),
          "source": SOURCE}


def _valid_taps(size: int, kernel: int, stride: int, padding: str) -> int:
  """Sum over output positions of the kernel taps that land inside the input (1-D)."""
  if padding == "VALID":
    out = (size - kernel) // stride + 1
    return out * kernel
  out = -(-size // stride)
  pad_total = max((out - 1) * stride + kernel - size, 0)
  start = -(pad_total // 2)
  taps = 0
  for o in range(out):
    first = start + o * stride
    taps += sum(1 for t in range(kernel) if 0 <= first + t < size)
  return taps


def conv2d_flops(batch: int, height: int, width: int, c_in: int, c_out: int,
                 kernel: tuple[int, int], stride: tuple[int, int] = (1, 1),
                 padding: str = "SAME") -> int:
  """Multiply-adds x 2 of one 2-D convolution, counting only in-image taps."""
  taps = (_valid_taps(height, kernel[0], stride[0], padding)
          * _valid_taps(width, kernel[1], stride[1], padding))
  return 2 * batch * taps * c_in * c_out


def dense_flops(batch: int, d_in: int, d_out: int) -> int:
  return 2 * batch * d_in * d_out


def _best_time(fn, arg, repeats: int = 20) -> float:
  """Fastest of `repeats` calls: enough calls that a slow spell of a shared machine does
  not set the roof (runs of five calls gave CPU matmul peaks from 0.22 to 0.44 TFLOP/s)."""
  jax.block_until_ready(fn(arg))
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(arg))
    times.append(time.perf_counter() - t0)
  return min(times)


def peak_flops(dtype: str) -> float:
  """Achieved FLOP/s of a large square matmul on the default device (the compute roof)."""
  n = 2048 if jax.devices()[0].platform == "cpu" else 8192
  return 2 * n ** 3 / _best_time(jax.jit(lambda x: x @ x), jnp.ones((n, n), dtype))


def peak_bandwidth() -> float:
  """Achieved bytes/s of reading and writing a large float32 array (the memory roof)."""
  n = (64 if jax.devices()[0].platform == "cpu" else 512) * 2 ** 20 // 4
  return 2 * 4 * n / _best_time(jax.jit(lambda x: x * 2.0 + 1.0), jnp.ones((n,), jnp.float32))


def roofline(flops: float, bytes_accessed: float, seconds: float, peak: float,
             bandwidth: float) -> dict:
  """Model FLOP utilisation and the time each roof allows, so a row says which bound it
  is near: `compute_bound_s` = flops / peak, `memory_bound_s` = bytes / bandwidth."""
  compute_s, memory_s = flops / peak, bytes_accessed / bandwidth
  return {"mfu": flops / seconds / peak, "compute_bound_s": compute_s,
          "memory_bound_s": memory_s,
          "bound": "compute" if compute_s >= memory_s else "memory",
          "fraction_of_roof": max(compute_s, memory_s) / seconds}
