"""JAX against the PyTorch twin of the same SyCE train step, alternating in one process.

    python -m benchmarks.compare_torch                      # 32x32x3 and 64x64x3, batch 64
    python -m benchmarks.compare_torch --sizes 32x3 64x3 --steps 3 2  # steps per size
    python -m benchmarks.compare_torch --sizes 64x3 --batches 256 --torch-variants eager compiled
    python -m benchmarks.compare_torch --smoke              # tiny, used by the tests

Machines are noisy, so each round times a few steps of every variant back to back (the
order rotates from round to round) and the ratio is taken within the round; the JSON
keeps every round. `--steps` is one count for every size or one per size (fewer steps
keep the large sizes short; the rounds stay the same). ratio = JAX ms / torch ms: below
1 means JAX is faster. Parameter counts of both sides are asserted equal before anything
is timed. Needs the `bench` extra (torch). Writes
benchmarks/results/compare_torch_<device>.json.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

from benchmarks import step_time
from benchmarks import torch_reference as tr


def torch_runner(image_size: int, channels: int, batch: int, variant: str):
  """(run, params) of a torch variant: eager|compiled, optionally -bf16 / -cl."""
  opts = set(variant.split("-"))
  if "compiled" in opts:
    torch._dynamo.reset()  # no guards or graphs left from another size's models
  torch.manual_seed(0)
  gens, discs, clf = tr.build(image_size, channels)
  images = torch.rand(2, batch // 2, channels, image_size, image_size,
                      generator=torch.Generator().manual_seed(0)) * 2.0 - 1.0
  if "cl" in opts:
    images = tr.channels_last((gens, discs, clf), images)
  step = tr.make_step(gens, discs, clf, bf16="bf16" in opts, compiled="compiled" in opts)

  def run():
    m = step(images)
    float(m["g_loss"])
    return m

  params = {"generators": tr.param_count(gens), "discriminators": tr.param_count(discs)}
  return run, params


def compare(image_size, channels, batch, jax_dtypes, torch_variants, rounds, steps, warmup):
  runners, first_s = {}, {}
  for dtype in jax_dtypes:
    run, info = step_time.prepare(image_size, channels, batch, dtype)
    runners[f"jax-{dtype}"], jax_params = run, info["params"]
    first_s[f"jax-{dtype}"] = info["compile_s"]
  for variant in torch_variants:
    run, params = torch_runner(image_size, channels, batch, variant)
    if params != jax_params:
      raise AssertionError(f"parameter counts differ: torch {params} vs jax {jax_params}")
    runners[f"torch-{variant}"] = run
  for name, run in runners.items():
    t0 = time.perf_counter()
    for _ in range(warmup):
      run()
    first_s.setdefault(name, time.perf_counter() - t0)
  names = list(runners)
  ms = step_time.alternate(runners, rounds, steps)
  pairs = {}
  for jname in (n for n in names if n.startswith("jax-")):
    for tname in (n for n in names if n.startswith("torch-")):
      if ("bf16" in jname) != ("bf16" in tname):
        continue
      pairs[f"{jname} / {tname}"] = step_time.ratio_summary(ms[jname], ms[tname])
  return {"image_size": image_size, "channels": channels, "batch": batch,
          "params": jax_params, "warmup_or_compile_s": first_s,
          "ms_per_step_median": {n: float(np.median(v)) for n, v in ms.items()},
          "ms_per_step_rounds": ms, "ratios": pairs}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--sizes", nargs="*", default=["32x3", "64x3"], help="SIDExCHANNELS")
  parser.add_argument("--batches", type=int, nargs="*", default=[64])
  parser.add_argument("--jax-dtypes", nargs="*", default=["float32"])
  parser.add_argument("--torch-variants", nargs="*", default=["eager", "compiled"])
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument("--steps", type=int, nargs="*", default=[4],
                      help="timed steps per variant per round: one count, or one per size")
  parser.add_argument("--warmup", type=int, default=3)
  parser.add_argument("--threads", type=int, default=0, help="torch threads; 0: its default")
  parser.add_argument("--smoke", action="store_true")
  parser.add_argument("--out", default=None)
  args = parser.parse_args(argv)
  if args.smoke:
    args.sizes, args.batches, args.torch_variants = ["16x3"], [8], ["eager"]
    args.rounds, args.warmup = 2, 1
    args.steps = [1]
  if len(args.steps) not in (1, len(args.sizes)):
    parser.error(f"--steps: one count or one per size ({len(args.sizes)}), "
                 f"got {len(args.steps)}")
  steps = dict(zip(args.sizes, args.steps * len(args.sizes) if len(args.steps) == 1
                   else args.steps))
  if args.threads:
    torch.set_num_threads(args.threads)
  rows = []
  for size in args.sizes:
    side, channels = (int(v) for v in size.split("x"))
    for batch in args.batches:
      row = compare(side, channels, batch, args.jax_dtypes, args.torch_variants,
                    args.rounds, steps[size], args.warmup)
      rows.append({**row, "rounds": args.rounds, "steps_per_round": steps[size]})
      ratios = ", ".join(f"{k}: {v['median']:.2f}" for k, v in row["ratios"].items())
      print(f"{side}x{side}x{channels} batch {batch}: "
            + ", ".join(f"{k} {v:.0f} ms" for k, v in row["ms_per_step_median"].items())
            + f" | ratios {ratios}", flush=True)
  result = {**step_time.environment(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "cpus_usable": len(os.sched_getaffinity(0)),
            "xla_flags": os.environ.get("XLA_FLAGS", ""), "rounds": args.rounds,
            "steps_per_round": [steps[s] for s in args.sizes], "sizes": args.sizes,
            "results": rows}
  return step_time.write_result(result, "compare_torch", args.out)


if __name__ == "__main__":
  main()
