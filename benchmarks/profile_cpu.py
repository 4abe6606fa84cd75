"""Where the CPU train step spends its time, in JAX and in its PyTorch twin, by kind of op.

    python -m benchmarks.profile_cpu --sizes 32x3 64x3 --steps 3   # needs the `bench` extra

The SyCE step of `benchmarks.compare_torch` (batch 64), profiled on each side:
- JAX: XLA:CPU's trace of every thunk it runs, each traced back to the JAX primitive
  and pass it came from (`benchmarks.profile_step`);
- PyTorch eager: `torch.profiler`'s self CPU time per aten op.
Both are grouped into the same kinds (`profile_step.KINDS`). XLA runs independent
thunks on both cores at once, so its thunk times add up to more than the wall time; each
side's shares are therefore scaled to its own wall time per step, measured first without
a profiler, alternating the two. Writes benchmarks/results/profile_cpu_<device>.json.
"""

from __future__ import annotations

import argparse
import collections
import os

from benchmarks import profile_step, step_time

# aten ops that move data rather than compute.
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


def jax_profile(image_size: int, channels: int, batch: int, steps: int) -> dict:
  """CPU time per step of the JAX step's thunks, by "primitive (pass)"."""
  run, info = step_time.prepare(image_size, channels, batch, "float32")
  text = info["compiled"].as_text()
  for _ in range(2):
    run()
  return profile_step.by_primitive(profile_step.op_ms_per_step(run, text, steps),
                                   profile_step.hlo_origins(text))


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


def profile(image_size, channels, batch, rounds, steps) -> dict:
  from benchmarks import compare_torch
  # Wall time per step without a profiler: the two sides alternating, as compare_torch does.
  ms = compare_torch.compare(image_size, channels, batch, ["float32"], ["eager"], rounds,
                             steps, warmup=1)["ms_per_step_median"]
  wall = {"jax": ms["jax-float32"], "torch": ms["torch-eager"]}
  jax_ms = jax_profile(image_size, channels, batch, steps)
  torch_ms = torch_profile(image_size, channels, batch, steps)
  jax_kinds = profile_step.by_kind(
      jax_ms, lambda key: profile_step.jax_kind(profile_step.primitive_of(key)), wall["jax"])
  torch_kinds = profile_step.by_kind(torch_ms, torch_kind, wall["torch"])
  top = lambda ms: dict(list(ms.items())[:12])
  return {"image_size": image_size, "channels": channels, "batch": batch,
          "wall_ms_per_step": wall, "jax_over_torch": wall["jax"] / wall["torch"],
          "jax_thunk_ms_per_step": sum(jax_ms.values()),
          "torch_self_ms_per_step": sum(torch_ms.values()),
          "kinds": {k: {"jax": jax_kinds[k], "torch": torch_kinds[k],
                        "jax_over_torch": jax_kinds[k]["wall_ms"]
                        / max(torch_kinds[k]["wall_ms"], 1e-9)} for k in profile_step.KINDS},
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
  flags = f"{os.environ.get('XLA_FLAGS', '')} {profile_step.TRACE_FLAG}"
  os.environ["XLA_FLAGS"] = flags.strip()
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
            "torch_threads": torch.get_num_threads(), "kinds": list(profile_step.KINDS),
            "results": rows}
  return step_time.write_result(result, "profile_cpu", args.out)


if __name__ == "__main__":
  main()
