"""Where the CPU train step spends its time, in JAX and in its PyTorch twin, by kind of op.

    python -m benchmarks.profile_cpu --sizes 32x3 64x3 --steps 3   # needs the `bench` extra

The SyCE step of `benchmarks.compare_torch` (batch 64), profiled on each side:
- JAX: XLA:CPU's trace of every thunk it runs (`jax.profiler`, with
  `--xla_cpu_enable_xprof_traceme`), each thunk traced back to the JAX primitive it came
  from through the compiled HLO's `op_name` metadata (a fusion without metadata: the
  convolution or dot it is built around), and to the forward or the backward pass (a
  `transpose(` in the name);
- PyTorch eager: `torch.profiler`'s self CPU time per aten op.
Both are grouped into the same kinds (KINDS). XLA runs independent thunks on both cores
at once, so its thunk times add up to more than the wall time; each side's shares are
therefore scaled to its own wall time per step, measured first without a profiler,
alternating the two. Writes benchmarks/results/profile_cpu_<device>.json.
"""

from __future__ import annotations

import argparse
import collections
import glob
import os
import re
import tempfile

import jax

from benchmarks import step_time

TRACE_FLAG = "--xla_cpu_enable_xprof_traceme=true"
KINDS = ("convolution", "matmul", "layout and data movement", "element-wise and reductions")
# JAX primitives (last part of an op_name) and aten ops that move data rather than compute.
_LAYOUT_JAX = {"transpose", "copy", "concatenate", "gather", "scatter-add", "scatter",
               "pad", "slice", "dynamic_slice", "dynamic_update_slice", "stack",
               "broadcast_in_dim", "reshape", "squeeze", "expand_dims", "rev", "resize"}
_LAYOUT_TORCH = {"aten::copy_", "aten::cat", "aten::stack", "aten::fill_", "aten::clone",
                 "aten::contiguous", "aten::upsample_nearest2d",
                 "aten::upsample_nearest2d_backward", "aten::constant_pad_nd", "aten::index",
                 "aten::repeat_interleave", "aten::empty", "aten::empty_strided",
                 "aten::zero_", "aten::zeros", "aten::permute"}


def torch_kind(op: str) -> str:
  if "conv" in op.lower():  # aten::mkldnn_convolution, autograd ConvolutionBackward0
    return "convolution"
  if op in ("aten::addmm", "aten::mm", "aten::bmm", "aten::linear", "aten::matmul"):
    return "matmul"
  return "layout and data movement" if op in _LAYOUT_TORCH else "element-wise and reductions"


def jax_kind(primitive: str) -> str:
  if primitive.startswith("conv"):
    return "convolution"
  if primitive in ("dot_general", "dot"):
    return "matmul"
  layout = primitive in _LAYOUT_JAX or primitive.split("_")[0] in _LAYOUT_JAX
  return "layout and data movement" if layout else "element-wise and reductions"


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


def jax_profile(image_size: int, channels: int, batch: int, steps: int) -> dict:
  """CPU time per step of the JAX step's thunks, by (primitive, phase)."""
  run, info = step_time.prepare(image_size, channels, batch, "float32")
  origins = hlo_origins(info["compiled"].as_text())
  for _ in range(2):
    run()
  with tempfile.TemporaryDirectory() as d:
    jax.profiler.start_trace(d)
    for _ in range(steps):
      run()  # waits for the step
    jax.profiler.stop_trace()
    trace = jax.profiler.ProfileData.from_file(
        glob.glob(os.path.join(d, "**", "*.xplane.pb"), recursive=True)[-1])
  ns = collections.Counter()
  for plane in trace.planes:
    for line in plane.lines:
      for event in line.events:
        if event.name in origins:
          ns[origins[event.name]] += event.duration_ns
  if not ns:
    raise RuntimeError(f"the trace holds no XLA:CPU thunks: XLA_FLAGS needs {TRACE_FLAG} "
                       "before JAX starts (run this module as a script)")
  return {f"{p} ({phase})": v / steps / 1e6 for (p, phase), v in ns.most_common()}


def torch_profile(image_size: int, channels: int, batch: int, steps: int) -> dict:
  """Self CPU time per step of the eager step's aten ops."""
  import torch

  from benchmarks import compare_torch
  run, _ = compare_torch.torch_runner(image_size, channels, batch, "eager")
  for _ in range(2):
    run()
  with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
    for _ in range(steps):
      run()
  us = collections.Counter()
  for event in prof.key_averages():
    us[event.key] += event.self_cpu_time_total
  return {op: v / steps / 1e3 for op, v in us.most_common() if v > 0}


def by_kind(ms: dict, kind_of, wall_ms: float) -> dict:
  """Per kind: its share of the profiled time and that share of the wall time."""
  total = sum(ms.values())
  kinds = collections.Counter()
  for op, v in ms.items():
    kinds[kind_of(op)] += v
  return {k: {"share": kinds[k] / total, "wall_ms": wall_ms * kinds[k] / total}
          for k in KINDS}


def profile(image_size, channels, batch, rounds, steps) -> dict:
  from benchmarks import compare_torch
  # Wall time per step without a profiler: the two sides alternating, as compare_torch does.
  ms = compare_torch.compare(image_size, channels, batch, ["float32"], ["eager"], rounds,
                             steps, warmup=1)["ms_per_step_median"]
  wall = {"jax": ms["jax-float32"], "torch": ms["torch-eager"]}
  jax_ms = jax_profile(image_size, channels, batch, steps)
  torch_ms = torch_profile(image_size, channels, batch, steps)
  jax_primitive = lambda key: key.split(" (")[0]
  jax_kinds = by_kind(jax_ms, lambda key: jax_kind(jax_primitive(key)), wall["jax"])
  torch_kinds = by_kind(torch_ms, torch_kind, wall["torch"])
  top = lambda ms: dict(list(ms.items())[:12])
  return {"image_size": image_size, "channels": channels, "batch": batch,
          "wall_ms_per_step": wall, "jax_over_torch": wall["jax"] / wall["torch"],
          "jax_thunk_ms_per_step": sum(jax_ms.values()),
          "torch_self_ms_per_step": sum(torch_ms.values()),
          "kinds": {k: {"jax": jax_kinds[k], "torch": torch_kinds[k],
                        "jax_over_torch": jax_kinds[k]["wall_ms"]
                        / max(torch_kinds[k]["wall_ms"], 1e-9)} for k in KINDS},
          "jax_top": top(jax_ms), "torch_top": top(torch_ms)}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--sizes", nargs="*", default=["32x3", "64x3"], help="SIDExCHANNELS")
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--rounds", type=int, default=4)
  parser.add_argument("--steps", type=int, default=3, help="steps per round and profile")
  parser.add_argument("--smoke", action="store_true")
  parser.add_argument("--out", default=None)
  args = parser.parse_args(argv)
  if args.smoke:
    args.sizes, args.batch, args.rounds, args.steps = ["16x3"], 8, 2, 1
  # Read when the CPU client starts, so before the first computation.
  os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {TRACE_FLAG}".strip()
  import torch
  rows = []
  for size in args.sizes:
    side, channels = (int(v) for v in size.split("x"))
    row = profile(side, channels, args.batch, args.rounds, args.steps)
    rows.append(row)
    print(f"{size}: JAX {row['wall_ms_per_step']['jax']:.0f} ms, torch "
          f"{row['wall_ms_per_step']['torch']:.0f} ms; " + ", ".join(
              f"{k} {v['jax']['wall_ms']:.0f}/{v['torch']['wall_ms']:.0f}"
              for k, v in row["kinds"].items()), flush=True)
  result = {**step_time.environment(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "kinds": list(KINDS),
            "results": rows}
  return step_time.write_result(result, "profile_cpu", args.out)


if __name__ == "__main__":
  main()
