"""Where the compiled train step spends its time on the device it runs on, by kind of op.

    python -m benchmarks.profile_step --preset paper --size 128x3 --batch 128 --dtypes bfloat16
    python -m benchmarks.profile_step --size 32x3 --batch 64          # the small step on a CPU

The SyCE step of `benchmarks.step_time` under `jax.profiler`. Every traced op that
carries an `hlo_op` stat (an XLA:CPU thunk, or a GPU kernel) is traced back through the
compiled HLO's `op_name` metadata to the JAX primitive it came from and to the forward or
backward pass (a `transpose(` in the name); a fusion without metadata is named after the
convolution or dot it is built around, or else after itself (XLA's own copies). Ops are
grouped into KINDS. Reports the wall time per step measured without the profiler, the op
time per step (on a GPU, busy time: the rest of the wall time is launch gaps; on the CPU,
thunks run on several threads, so it can exceed the wall time), each kind's time, and the
costliest primitives and HLO ops; and, from the compiled program's text, the bytes its
ops read and write, by the same kinds (on a GPU, of the program that runs there).
Writes benchmarks/results/profile_step_<device>.json.
"""

from __future__ import annotations

import argparse
import collections
import glob
import os
import re
import tempfile
import time

import jax
import numpy as np

from benchmarks import step_time

# XLA:CPU traces its thunks only with this flag, read when the CPU client starts.
TRACE_FLAG = "--xla_cpu_enable_xprof_traceme=true"
KINDS = ("convolution", "matmul", "layout and data movement", "element-wise and reductions")
# JAX primitives (last part of an op_name) that move data rather than compute.
_LAYOUT_JAX = {"transpose", "copy", "concatenate", "gather", "scatter-add", "scatter",
               "pad", "slice", "dynamic_slice", "dynamic_update_slice", "stack",
               "broadcast_in_dim", "reshape", "squeeze", "expand_dims", "rev", "resize"}


def jax_kind(primitive: str) -> str:
  if primitive.startswith("conv"):
    return "convolution"
  if primitive in ("dot_general", "dot"):
    return "matmul"
  layout = primitive in _LAYOUT_JAX or primitive.split("_")[0] in _LAYOUT_JAX
  return "layout and data movement" if layout else "element-wise and reductions"


def _library_call(text: str) -> str | None:
  """The primitive behind a GPU library call (cuDNN convolution, cuBLAS matmul)."""
  target = re.search(r'custom_call_target="([^"]*)"', text)
  if not target:
    return None
  if "conv" in target.group(1).lower():
    return "conv_general_dilated"
  if "gemm" in target.group(1).lower() or "matmul" in target.group(1).lower():
    return "dot_general"
  return None


def hlo_origins(hlo_text: str) -> dict:
  """{instruction name: (primitive, pass)} of a compiled module's text; the pass is
  'forward', 'backward' or 'no metadata' (e.g. some convolutions of weight gradients)."""
  bodies = {m.group(1): m.group(2) for m in re.finditer(
      r"^(?:ENTRY )?%([\w.\-]+) \(.*?\{\n(.*?)\n\}", hlo_text, re.M | re.S)}
  origins = {}
  for m in re.finditer(r"^\s*(?:ROOT )?%([\w.\-]+) = [^\n]*", hlo_text, re.M):
    line = m.group(0)
    meta = re.search(r'op_name="([^"]*)"', line)
    calls = re.search(r"calls=%([\w.\-]+)", line)
    body = bodies.get(calls.group(1), "") if calls else ""
    if " convolution(" in body or " convolution(" in line:
      primitive = "conv_general_dilated"
    elif " dot(" in body or " dot(" in line:
      primitive = "dot_general"
    elif _library_call(line) or _library_call(body):
      primitive = _library_call(line) or _library_call(body)
    elif meta:
      primitive = meta.group(1).split("/")[-1]
    else:
      found = re.search(r'op_name="([^"]*)"', body)
      # No metadata anywhere (XLA's own copies): the instruction's name says what it is.
      primitive = (found.group(1).split("/")[-1] if found
                   else m.group(1).rsplit(".", 1)[0])
    named = meta or re.search(r'op_name="([^"]*)"', body)
    phase = ("no metadata" if not named else
             "backward" if "transpose(" in named.group(1) else "forward")
    origins[m.group(1)] = (primitive, phase)
  return origins


_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2,
                "s32": 4, "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8,
                "c128": 16}
_SHAPE = re.compile(r"\b(" + "|".join(_DTYPE_BYTES) + r")\[([\d,]*)\]")
_NO_TRAFFIC = {"parameter", "constant", "tuple", "get-tuple-element", "bitcast"}


def _shape_bytes(text: str) -> int:
  return sum(_DTYPE_BYTES[dtype] * int(np.prod([int(d) for d in dims.split(",") if d]))
             for dtype, dims in _SHAPE.findall(text))


def hlo_bytes(hlo_text: str) -> dict:
  """{instruction: bytes it reads and writes} for the top-level instructions of a compiled
  module's entry computation: its result's size plus its operands'. Parameters,
  constants, tuples and bitcasts move nothing. On a GPU this is the program that runs,
  cuDNN calls included, where XLA's own cost analysis is unreliable."""
  entry = re.search(r"^ENTRY [^\n]*\{\n(.*?)\n\}", hlo_text, re.M | re.S).group(1)
  size, traffic = {}, {}
  for m in re.finditer(r"^\s*(?:ROOT )?%([\w.\-]+) = (\(.*?\)|\S+) ([\w\-]+)\((.*?)\)",
                       entry, re.M):
    name, result, opcode, operands = m.groups()
    size[name] = _shape_bytes(result)
    if opcode not in _NO_TRAFFIC:
      traffic[name] = size[name] + sum(size.get(o, 0)
                                       for o in re.findall(r"%([\w.\-]+)", operands))
  return traffic


def module_name(hlo_text: str) -> str:
  return re.match(r"HloModule ([^\s,]+)", hlo_text).group(1)


def traced_op_ns(planes, module: str) -> collections.Counter:
  """{HLO instruction: ns} of the events of `module` that carry an `hlo_op` stat, from the
  device planes if any has them (GPU kernels), else from the host (XLA:CPU thunks)."""
  found = {"device": collections.Counter(), "host": collections.Counter()}
  for plane in planes:
    side = "device" if plane.name.startswith("/device:") else "host"
    for line in plane.lines:
      for event in line.events:
        stats = dict(event.stats)
        if "hlo_op" in stats and stats.get("hlo_module", module) == module:
          found[side][stats["hlo_op"]] += event.duration_ns
  return found["device"] or found["host"]


def op_ms_per_step(run, hlo_text: str, steps: int) -> dict:
  """{HLO instruction: ms per step} of `run()` (one step, waits for it) under the profiler."""
  with tempfile.TemporaryDirectory() as d:
    jax.profiler.start_trace(d)
    for _ in range(steps):
      run()
    jax.profiler.stop_trace()
    trace = jax.profiler.ProfileData.from_file(
        glob.glob(os.path.join(d, "**", "*.xplane.pb"), recursive=True)[-1])
  ns = traced_op_ns(trace.planes, module_name(hlo_text))
  if not ns:
    raise RuntimeError("the trace holds no XLA ops; on a CPU, XLA_FLAGS needs "
                       f"{TRACE_FLAG} before JAX starts (run this module as a script)")
  return {op: v / steps / 1e6 for op, v in ns.most_common()}


def by_primitive(op_ms: dict, origins: dict) -> dict:
  """{"primitive (pass)": ms}, costliest first."""
  ms = collections.Counter()
  for op, v in op_ms.items():
    primitive, phase = origins.get(op, (op.rsplit(".", 1)[0], "no metadata"))
    ms[f"{primitive} ({phase})"] += v
  return dict(ms.most_common())


def by_kind(ms: dict, kind_of, wall_ms: float | None = None) -> dict:
  """Per kind: its ms, its share of the profiled time and, given the wall time, that share
  of it."""
  total = sum(ms.values())
  kinds = collections.Counter()
  for op, v in ms.items():
    kinds[kind_of(op)] += v
  out = {k: {"ms": kinds[k], "share": kinds[k] / total} for k in KINDS}
  if wall_ms is not None:
    for k in KINDS:
      out[k]["wall_ms"] = wall_ms * out[k]["share"]
  return out


def primitive_of(key: str) -> str:
  """"conv_general_dilated (backward)" -> "conv_general_dilated"."""
  return key.split(" (")[0]


def profile(image_size, channels, batch, dtype, preset, steps, warmup=2, top=15) -> dict:
  run, info = step_time.prepare(image_size, channels, batch, dtype, preset=preset)
  text = info["compiled"].as_text()
  origins = hlo_origins(text)
  for _ in range(warmup):
    run()
  times = []
  for _ in range(steps):
    t0 = time.perf_counter()
    run()
    times.append(time.perf_counter() - t0)
  wall_ms = 1000 * float(np.median(times))
  op_ms = op_ms_per_step(run, text, steps)
  primitives = by_primitive(op_ms, origins)
  traffic = by_primitive(hlo_bytes(text), origins)
  kind = lambda key: jax_kind(primitive_of(key))  # noqa: E731
  return {
      "image_size": image_size, "channels": channels, "batch": batch, "dtype": dtype,
      "preset": preset, "params": info["params"], "steps": steps,
      "wall_ms_per_step": wall_ms, "op_ms_per_step": sum(op_ms.values()),
      "kinds": by_kind(primitives, kind, wall_ms),
      "top_primitives": dict(list(primitives.items())[:top]),
      # What the compiled program reads and writes, by the same kinds (`hlo_bytes`).
      "hlo_bytes_per_step": sum(traffic.values()),
      "bytes_kinds": by_kind(traffic, kind),
      "top_bytes_primitives": dict(list(traffic.items())[:top]),
      "top_ops": [{"op": op, "primitive": origins.get(op, (op, ""))[0],
                   "pass": origins.get(op, ("", "no metadata"))[1], "ms": v}
                  for op, v in list(op_ms.items())[:top]],
  }


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--size", default="32x3", help="SIDExCHANNELS")
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--dtypes", nargs="*", default=["float32"])
  parser.add_argument("--preset", default="small")
  parser.add_argument("--steps", type=int, default=5, help="steps timed, then profiled")
  parser.add_argument("--smoke", action="store_true")
  parser.add_argument("--out", default=None)
  args = parser.parse_args(argv)
  if args.smoke:
    args.size, args.batch, args.steps = "16x3", 8, 1
  os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {TRACE_FLAG}".strip()
  side, channels = (int(v) for v in args.size.split("x"))
  rows = []
  result = {**step_time.environment(), "results": rows}
  for dtype in args.dtypes:
    row = profile(side, channels, args.batch, dtype, args.preset, args.steps)
    rows.append(row)
    print(f"{args.preset} {args.size} batch {args.batch} {dtype}: "
          f"{row['wall_ms_per_step']:.1f} ms/step, ops {row['op_ms_per_step']:.1f} ms; "
          + ", ".join(f"{k} {v['share']:.0%}" for k, v in row["kinds"].items())
          + f"; {row['hlo_bytes_per_step'] / 1e9:.1f} GB: "
          + ", ".join(f"{k} {v['share']:.0%}" for k, v in row["bytes_kinds"].items()),
          flush=True)
    for key, v in list(row["top_primitives"].items())[:8]:
      print(f"  {v:9.2f} ms  {key}")
    step_time.write_result(result, "profile_step", args.out)  # each row as it comes
  return result


if __name__ == "__main__":
  main()
