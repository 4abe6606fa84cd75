"""Step time and per-device batch of the SyCE train step on 1, 2, 4 and 8 devices.

    python -m benchmarks.scaling_cpu [--devices 1 2 4 8] [--steps 20]

On a CPU the devices are forced host devices sharing the same cores, so this checks that
the layouts run and what each device holds, not speed-up. Each device count runs in its
own process (the count is fixed when JAX starts). Writes benchmarks/results/scaling_<device>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

GLOBAL_BATCH = 64


def measure(steps: int, fsdp: int) -> dict:
  import jax
  import numpy as np

  import cfx_jax
  from cfx_jax.data import make_lesions
  from cfx_jax.methods import ModelSpec
  from cfx_jax.methods.conditional import gan, get_recipe
  from cfx_jax.engine import mesh as mesh_lib

  x = make_lesions(256, image_size=32, channels=3, seed=0)["image"]
  w = np.random.default_rng(0).normal(size=(32 * 32 * 3, 2)).astype(np.float32) * 0.01
  clf = cfx_jax.as_classifier(lambda im: im.reshape(im.shape[0], -1) @ w, (32, 32, 3))
  method = get_recipe("syce")
  models, state = gan.init(method, ModelSpec(32, 3, 2), seed=0, lr=1e-4, b1=0.5)
  mesh = mesh_lib.make_mesh(0, fsdp=fsdp)
  shard = mesh_lib.state_shardings(mesh, state)
  rep, data = mesh_lib.replicated(mesh), mesh_lib.batch_sharding(mesh, 5, axis=1)
  step = jax.jit(gan.make_train_step(method, models, clf.apply, {}),
                 in_shardings=(shard, rep, data), out_shardings=(shard, rep), donate_argnums=0)
  batch = jax.device_put(x[:GLOBAL_BATCH].reshape(2, GLOBAL_BATCH // 2, 32, 32, 3), data)
  state = jax.device_put(state, shard)
  with jax.set_mesh(mesh):
    t0 = time.perf_counter()
    state, m = step(state, None, batch)
    jax.block_until_ready(m)
    compile_s = time.perf_counter() - t0
    times = []
    for _ in range(steps):
      t0 = time.perf_counter()
      state, m = step(state, None, batch)
      jax.block_until_ready(m)
      times.append(time.perf_counter() - t0)
  return {**mesh_lib.describe(mesh, GLOBAL_BATCH), "device_kind": jax.devices()[0].device_kind,
          "first_step_s": compile_s, "ms_per_step_median": 1000 * float(np.median(times)),
          "ms_per_step_p10_p90": [1000 * float(np.percentile(times, q)) for q in (10, 90)],
          "g_loss": float(m["g_loss"])}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--devices", type=int, nargs="*", default=[1, 2, 4, 8])
  parser.add_argument("--steps", type=int, default=20)
  parser.add_argument("--fsdp", type=int, default=1)
  parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    print(json.dumps(measure(args.steps, args.fsdp)))
    return
  rows = []
  for n in args.devices:
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={n}",
           "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-m", "benchmarks.scaling_cpu", "--child",
                          "--steps", str(args.steps), "--fsdp", str(args.fsdp)],
                         env=env, capture_output=True, text=True, check=True)
    row = json.loads(out.stdout.strip().splitlines()[-1])
    rows.append(row)
    print(f"{n} devices: global batch {row['global_batch']}, per device "
          f"{row['per_device_batch']}, {row['ms_per_step_median']:.0f} ms/step", flush=True)
  kind = rows[0]["device_kind"].replace(" ", "_").lower()
  suffix = f"_fsdp{args.fsdp}" if args.fsdp > 1 else ""
  path = os.path.join(os.path.dirname(__file__), "results", f"scaling_{kind}{suffix}.json")
  with open(path, "w") as f:
    json.dump({"steps": args.steps, "fsdp": args.fsdp, "results": rows}, f, indent=2)
  print(f"wrote {path}")


if __name__ == "__main__":
  main()
