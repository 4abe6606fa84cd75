"""One optimisation step written in the forms XLA compiles differently, timed side by side.

    python -m benchmarks.step_forms                 # batch 8, 32x32x3, 20 steps, 4 rounds
    python -m benchmarks.step_forms --smoke         # tiny, used by the tests

The step is what FIDO and DISC repeat: the input gradient of the reference classifier
(`CNNClassifier`) and a gradient step on the input. It is timed
- with the classifier's max-pool as `nnx.max_pool` (a reduce-window, whose gradient is a
  select-and-scatter) and as `layers.max_pool2` (a max over a reshape);
- dispatched three ways: one compiled step per Python iteration, a `lax.scan` over the
  steps in one program (what `methods.common.minimise` does), and the same scan fully
  unrolled.
All six run back to back in every round (the order rotates) and give the same result up
to rounding. Writes benchmarks/results/step_forms_<device>.json.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from benchmarks.step_time import environment, write_result
from cfx_jax.models import reference_cnn as cnn_lib
from cfx_jax.models.layers import max_pool2

POOLS = {"reduce_window": lambda x: nnx.max_pool(x, (2, 2), strides=(2, 2)),
         "reshape": max_pool2}
DISPATCH = ("python_loop", "scan", "unrolled_scan")


def programs(pool: str, images, steps: int):
  """{dispatch: run(params, start) -> result after `steps` steps} for one pooling form."""
  model = cnn_lib.CNNClassifier(images.shape[-1], 2, rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(model)
  saved = cnn_lib.max_pool2
  cnn_lib.max_pool2 = POOLS[pool]  # the form the classifier traces with

  def step(p, d):
    grad = jax.grad(lambda d: jnp.sum(nnx.merge(graphdef, p)(images + d)))(d)
    return d - 0.01 * grad

  def scanned(p, d, unroll):
    return jax.lax.scan(lambda d, _: (step(p, d), None), d, None, length=steps,
                        unroll=unroll)[0]

  start = jnp.zeros_like(images)
  try:
    one = jax.jit(step).lower(params, start).compile()
    scan = jax.jit(lambda p, d: scanned(p, d, 1)).lower(params, start).compile()
    unrolled = jax.jit(lambda p, d: scanned(p, d, steps)).lower(params, start).compile()
  finally:
    cnn_lib.max_pool2 = saved

  def python_loop(p, d):
    for _ in range(steps):
      d = one(p, d)
    return d

  return params, {"python_loop": python_loop, "scan": scan, "unrolled_scan": unrolled}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--size", type=int, default=32)
  parser.add_argument("--steps", type=int, default=20)
  parser.add_argument("--rounds", type=int, default=4)
  parser.add_argument("--smoke", action="store_true")
  parser.add_argument("--out", default=None)
  args = parser.parse_args(argv)
  if args.smoke:
    args.batch, args.size, args.steps, args.rounds = 2, 16, 2, 2
  images = jnp.asarray(np.random.default_rng(0).uniform(
      -1, 1, (args.batch, args.size, args.size, 3)), jnp.float32)
  runs = {}
  for pool in POOLS:
    params, fns = programs(pool, images, args.steps)
    runs.update({(pool, d): (params, fn) for d, fn in fns.items()})
  names = list(runs)
  ms = {name: [] for name in names}
  results = {}
  start = jnp.zeros_like(images)
  for r in range(args.rounds):
    for name in names[r % len(names):] + names[:r % len(names)]:
      params, fn = runs[name]
      t0 = time.perf_counter()
      results[name] = np.asarray(jax.block_until_ready(fn(params, start)))
      ms[name].append(1000 * (time.perf_counter() - t0) / args.steps)
  reference = results[("reduce_window", "python_loop")]
  rows = [{"pool": pool, "dispatch": d, "ms_per_step_median": float(np.median(ms[(pool, d)])),
           "ms_per_step_rounds": ms[(pool, d)],
           "max_abs_diff": float(np.abs(results[(pool, d)] - reference).max())}
          for pool, d in names]
  for row in rows:
    print(f"{row['pool']:>14} pool, {row['dispatch']:>13}: {row['ms_per_step_median']:7.2f} "
          f"ms/step (max |diff| {row['max_abs_diff']:.1g})")
  result = {**environment(), "batch": args.batch, "image_shape": [args.size, args.size, 3],
            "steps": args.steps, "rounds": args.rounds,
            "classifier": "CNNClassifier, random init", "results": rows}
  return write_result(result, "step_forms", args.out)


if __name__ == "__main__":
  main()
