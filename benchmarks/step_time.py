"""Step time of the core explainer's full train step (SyCE: 2 generators, 2 discriminators
with gradient penalty, frozen BatchNorm CNN classifier, every loss term).

    python -m benchmarks.step_time                       # the default grid of sizes
    python -m benchmarks.step_time --sizes 32x3 --batches 64 --dtypes float32 bfloat16
    python -m benchmarks.step_time --presets paper --sizes 128x3 --batches 8 --steps 3
    python -m benchmarks.step_time --count --presets small paper --sizes 128x3 --batches 128
    python -m benchmarks.step_time --smoke               # tiny, 1 step (used by the tests)

For each configuration: compile time, median and 10th/90th percentile ms/step after
warm-up, images/s, FLOPs and bytes per step (XLA's cost analysis of the same step
compiled for the host CPU, `benchmarks/flops.py`, because a GPU's own analysis leaves
out the convolutions), MFU against the device's measured matmul peak, the time the
compute and memory roofs allow, and peak device memory where the backend reports it.
Writes benchmarks/results/step_time_<device>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from benchmarks import flops as flops_lib
from cfx_jax.classifier import from_module
from cfx_jax.methods import ModelSpec
from cfx_jax.methods.conditional.config import PRESETS
from cfx_jax.methods.conditional import gan, get_recipe
from cfx_jax.models import CNNClassifier


def environment() -> dict:
  """Where a result was measured: device, host and library versions."""
  import flax
  import optax
  device = jax.devices()[0]
  return {"device": device.device_kind, "platform": device.platform,
          "host": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
          "jax": jax.__version__, "flax": flax.__version__, "optax": optax.__version__}


def result_path(name: str) -> str:
  """benchmarks/results/<name>_<device>.json"""
  device = jax.devices()[0].device_kind.replace(" ", "_").lower()
  return os.path.join(os.path.dirname(__file__), "results", f"{name}_{device}.json")


def write_result(result: dict, name: str, out: str | None = None) -> dict:
  """Write `result` to `out` (default: `result_path(name)`) and say where."""
  out = out or result_path(name)
  with open(out, "w") as f:
    json.dump(result, f, indent=2)
  print(f"wrote {out}")
  return result


def build(image_size: int, channels: int, dtype: str, preset: str = "small"):
  spec = ModelSpec(image_size, channels, 2, **PRESETS[preset],
                   dtype=None if dtype == "float32" else jnp.dtype(dtype))
  method = get_recipe("syce")
  models, state = gan.init(method, spec, seed=0, lr=1e-4, b1=0.5)
  clf = from_module(CNNClassifier(channels, 2, rngs=nnx.Rngs(0)), (image_size, image_size, channels))
  return method, models, state, clf


def multi_step(step, steps_per_dispatch: int):
  """Several train steps in one compiled call (lax.scan over a stack of batches)."""
  if steps_per_dispatch == 1:
    return step

  def run(state, clf_params, images):
    def body(s, batch):
      s, m = step(s, clf_params, batch)
      return s, m
    state, metrics = jax.lax.scan(body, state, images)
    return state, jax.tree.map(lambda a: a[-1], metrics)
  return run


def prepare(image_size, channels, batch, dtype, steps_per_dispatch=1, preset="small"):
  """Compiled step and its inputs: `run()` does one dispatch and waits for it; `info`
  holds the compiled program itself too (`info["compiled"]`), and `info["count"]()`
  counts one step's FLOPs and bytes on the host."""
  method, models, state, clf = build(image_size, channels, dtype, preset)
  single = gan.make_train_step(method, models, clf.apply, {})
  step = multi_step(single, steps_per_dispatch)
  fn = jax.jit(step, donate_argnums=0)
  rng = np.random.default_rng(0)
  shape = (2, batch // 2, image_size, image_size, channels)
  if steps_per_dispatch > 1:
    shape = (steps_per_dispatch,) + shape
  images = jnp.asarray(rng.uniform(-1, 1, shape).astype(np.float32))
  t0 = time.perf_counter()
  compiled = fn.lower(state, clf.params, images).compile()
  compile_s = time.perf_counter() - t0
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  device_flops = float(cost.get("flops", float("nan"))) if cost else float("nan")
  # One step on its own (XLA counts a scanned loop's body once, not per step), with the
  # model's FLOPs rather than the executed ones (`flops.host_cost`).
  one_step = (state, clf.params, images[0] if steps_per_dispatch > 1 else images)
  count = lambda: flops_lib.host_cost(single, *one_step, donate_argnums=0)  # noqa: E731
  box = {"state": state}

  def run():
    box["state"], m = compiled(box["state"], clf.params, images)
    jax.block_until_ready(m)
    return m

  params = {name: sum(x.size for x in jax.tree.leaves(p))
            for name, p in (("generators", state.gen), ("discriminators", state.disc))}
  return run, {"compile_s": compile_s, "device_flops": device_flops, "count": count,
               "params": params, "compiled": compiled}


def alternate(runs: dict, rounds: int, steps: int) -> dict:
  """{name: [ms per call, one per round]}: each round calls every run `steps` times, back
  to back, in an order that rotates from round to round (these machines are noisy)."""
  names = list(runs)
  ms = {name: [] for name in names}
  for r in range(rounds):
    for name in names[r % len(names):] + names[:r % len(names)]:
      t0 = time.perf_counter()
      for _ in range(steps):
        runs[name]()
      ms[name].append(1000 * (time.perf_counter() - t0) / steps)
  return ms


def ratio_summary(numerator_ms, denominator_ms) -> dict:
  """Median, min and max over rounds of the per-round ratio of two `alternate` timings."""
  ratios = np.asarray(numerator_ms) / np.asarray(denominator_ms)
  return {"median": float(np.median(ratios)), "min": float(ratios.min()),
          "max": float(ratios.max())}


def measure(image_size, channels, batch, dtype, steps_per_dispatch, steps, warmup, *,
            peak, bandwidth, preset="small"):
  run, info = prepare(image_size, channels, batch, dtype, steps_per_dispatch, preset)
  host = info["count"]()
  for _ in range(warmup):
    m = run()
  times = []
  for _ in range(steps):
    t0 = time.perf_counter()
    m = run()
    times.append((time.perf_counter() - t0) / steps_per_dispatch)
  stats = jax.devices()[0].memory_stats() or {}
  ms = 1000 * float(np.median(times))
  flops, spd = host["flops"], steps_per_dispatch
  return {
      "image_size": image_size, "channels": channels, "batch": batch, "dtype": dtype,
      "preset": preset, "params": info["params"],
      "steps_per_dispatch": steps_per_dispatch, "compile_s": info["compile_s"],
      "ms_per_step_median": ms,
      "ms_per_step_p10_p90": [1000 * float(np.percentile(times, q)) for q in (10, 90)],
      "images_per_s": batch / (ms / 1000),
      "flops_per_step": flops,
      "executed_flops_per_step": host["executed_flops"],
      "flops_source": flops_lib.SOURCE,
      # The device's own count of the program, for a single step per dispatch.
      "device_reported_flops_per_step": info["device_flops"] if spd == 1 else None,
      "bytes_accessed_per_step": host["bytes_accessed"],
      "achieved_flops_per_s": flops / (ms / 1000),
      **flops_lib.roofline(flops, host["bytes_accessed"], ms / 1000, peak, bandwidth),
      "peak_memory_bytes": stats.get("peak_bytes_in_use"),
      "g_loss": float(m["g_loss"]),
  }


def host_count(image_size, channels, batch, dtype, preset="small") -> dict:
  """FLOPs and bytes of one step as measured (state donated), compiled for the host CPU
  (`benchmarks/flops.py`); nothing runs."""
  method, models, state, clf = build(image_size, channels, dtype, preset)
  step = gan.make_train_step(method, models, clf.apply, {})
  shape = (2, batch // 2, image_size, image_size, channels)
  return flops_lib.host_cost(step, state, clf.params,
                             jax.ShapeDtypeStruct(shape, jnp.float32), donate_argnums=0)


def count(configs) -> dict:
  """FLOPs, bytes and FLOPs per byte of each (preset, side, channels, batch, dtype), with
  no time measured: a device is compute-bound on a step whose FLOPs per byte exceed its
  peak FLOP/s over its bandwidth (H100: 789e12 / 3.35e12 = 235 in bfloat16)."""
  rows = []
  for preset, side, channels, batch, dtype in configs:
    host = host_count(side, channels, batch, dtype, preset)
    rows.append({"preset": preset, "image_size": side, "channels": channels, "batch": batch,
                 "dtype": dtype, "flops_per_step": host["flops"],
                 "bytes_accessed_per_step": host["bytes_accessed"],
                 "executed_flops_per_step": host["executed_flops"],
                 "flops_per_byte": host["flops"] / host["bytes_accessed"],
                 "source": host["source"]})
    print(f"{preset} {side}x{side}x{channels} batch {batch} {dtype}: "
          f"{host['flops'] / 1e12:.2f} TFLOP, {host['bytes_accessed'] / 1e9:.1f} GB, "
          f"{rows[-1]['flops_per_byte']:.0f} FLOP/byte", flush=True)
  return {**environment(), "results": rows}


def recount(path: str, bandwidth: float | None = None) -> dict:
  """Count the FLOPs and bytes of each row's step on the host CPU again and put them, with
  the MFU against the peak stored in the file, in a result measured before they were
  counted this way. The times stay as measured. The memory roof uses the file's measured
  bandwidth or, where none was measured, the one given (bytes/s, e.g. the device's
  datasheet figure; the file then says where it came from)."""
  with open(path) as f:
    result = json.load(f)
  given, bandwidth = bandwidth, bandwidth or result.get("peak_bandwidth_bytes_per_s")
  for row in result["results"]:
    host = host_count(row["image_size"], row["channels"], row["batch"], row["dtype"],
                      row.get("preset", "small"))
    seconds = row["ms_per_step_median"] / 1000
    if "device_reported_flops_per_step" not in row:
      row["device_reported_flops_per_step"] = (row["flops_per_step"]
                                               if row["steps_per_dispatch"] == 1 else None)
    peak = result["peak_matmul_flops_per_s"][row["dtype"]]
    row.update(flops_per_step=host["flops"], executed_flops_per_step=host["executed_flops"],
               flops_source=host["source"] + " (recounted)",
               bytes_accessed_per_step=host["bytes_accessed"],
               achieved_flops_per_s=host["flops"] / seconds,
               mfu=host["flops"] / seconds / peak)
    if bandwidth:
      row.update(flops_lib.roofline(host["flops"], host["bytes_accessed"], seconds, peak,
                                    bandwidth))
    row.pop("fraction_of_peak", None)
    print(f"{row['image_size']}x{row['channels']} batch {row['batch']} {row['dtype']} "
          f"x{row['steps_per_dispatch']}: {row['flops_per_step'] / 1e9:.1f} GFLOP/step, "
          f"MFU {row['mfu']:.1%}", flush=True)
  if given:
    result.update(peak_bandwidth_bytes_per_s=given,
                  bandwidth_source="given to --recount, not measured")
  return write_result(result, "step_time", path)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--sizes", nargs="*", default=["32x1", "32x3", "64x1", "64x3", "128x3"],
                      help="SIDExCHANNELS")
  parser.add_argument("--batches", type=int, nargs="*", default=[64, 256])
  parser.add_argument("--dtypes", nargs="*", default=["float32", "bfloat16"])
  parser.add_argument("--steps-per-dispatch", type=int, nargs="*", default=[1])
  parser.add_argument("--steps", type=int, default=20)
  parser.add_argument("--warmup", type=int, default=3)
  parser.add_argument("--presets", nargs="*", choices=sorted(PRESETS), default=["small"],
                      help="network widths (cfx_jax.methods.conditional.config.PRESETS)")
  parser.add_argument("--count", action="store_true",
                      help="only count FLOPs and bytes per step on the host (no timing); "
                           "writes step_count_<device>.json")
  parser.add_argument("--smoke", action="store_true", help="tiny sizes, 1 step")
  parser.add_argument("--out", default=None)
  parser.add_argument("--recount", default=None, metavar="RESULT_JSON",
                      help="add host-counted FLOPs and MFU to the rows of a result file "
                           "measured before they were counted, and exit")
  parser.add_argument("--bandwidth", type=float, default=None, metavar="BYTES_PER_S",
                      help="with --recount: the device's memory bandwidth, for the memory "
                           "roof of rows measured without one")
  args = parser.parse_args(argv)
  if args.recount:
    return recount(args.recount, args.bandwidth)
  if args.smoke:
    args.sizes, args.batches, args.dtypes = ["16x3"], [8], ["float32"]
    args.steps_per_dispatch, args.steps, args.warmup = [1, 2], 1, 0
  configs = [(preset, *(int(v) for v in size.split("x")), batch, dtype)
             for preset in args.presets for size in args.sizes for batch in args.batches
             for dtype in args.dtypes]
  if args.count:
    return write_result(count(configs), "step_count", args.out)
  peak = {d: flops_lib.peak_flops(d) for d in args.dtypes}
  bandwidth = flops_lib.peak_bandwidth()
  rows = []
  result = {**environment(), "peak_matmul_flops_per_s": peak,
            "peak_bandwidth_bytes_per_s": bandwidth, "results": rows}
  for preset, side, channels, batch, dtype in configs:
    for spd in args.steps_per_dispatch:
      row = measure(side, channels, batch, dtype, spd, args.steps, args.warmup,
                    peak=peak[dtype], bandwidth=bandwidth, preset=preset)
      rows.append(row)
      print(f"{preset} {side}x{side}x{channels} batch {batch} {dtype} x{spd}: "
            f"{row['ms_per_step_median']:.1f} ms/step, {row['images_per_s']:.0f} img/s, "
            f"compile {row['compile_s']:.1f} s, MFU {row['mfu']:.1%}, "
            f"{row['bound']}-bound roof {row['fraction_of_roof']:.1%}", flush=True)
      write_result(result, "step_time", args.out)  # a run stopped early keeps its rows
  return result


if __name__ == "__main__":
  main()
