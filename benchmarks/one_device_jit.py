"""The SyCE train step on one device, compiled plainly against compiled with the
shardings of a one-device mesh (and traced under `jax.set_mesh` of it), side by side.

    python -m benchmarks.one_device_jit                 # 32x32x3, batch 64, 3 rounds of 6 steps
    python -m benchmarks.one_device_jit --smoke         # tiny (used by the tests)

Whether a step on one device should compile without the mesh's shardings
(docs/performance.md: measured alike, so it does not). Writes
benchmarks/results/one_device_jit_<device>.json.
"""

from __future__ import annotations

import argparse
import contextlib
import time

import jax
import numpy as np

from benchmarks.population import _classifier
from benchmarks.step_time import environment, write_result
from cfx_jax import data as data_lib
from cfx_jax.engine import mesh as mesh_lib
from cfx_jax.methods.conditional import config as config_lib
from cfx_jax.methods.conditional import gan, get_recipe
from cfx_jax.methods.conditional.train import model_spec


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--size", type=int, default=32)
  p.add_argument("--batch", type=int, default=64)
  p.add_argument("--steps", type=int, default=6)
  p.add_argument("--rounds", type=int, default=3)
  p.add_argument("--smoke", action="store_true")
  p.add_argument("--out")
  a = p.parse_args(argv)
  c = config_lib.explainer_config("syce")
  if a.smoke:
    a.size, a.batch, a.steps, a.rounds = 16, 8, 1, 1
    c.model.gen_features = c.model.disc_features = (8, 16)
  images = data_lib.make_lesions(max(256, a.batch), image_size=a.size, channels=3,
                                 seed=0)["image"]
  clf = _classifier(images)
  method = get_recipe("syce")
  spec = model_spec(c, images.shape[1:], 2)
  models, state = gan.init(method, spec, seed=0, lr=1e-4, b1=0.5, disc_lr_scale=4.0)
  step = gan.make_train_step(method, models, clf.apply, dict(c.weights))
  half = a.batch // 2
  batch = np.stack([images[:half], images[half:2 * half]])
  mesh = mesh_lib.make_mesh(1)
  rep, data = mesh_lib.replicated(mesh), mesh_lib.batch_sharding(mesh, 5, axis=1)
  shard = mesh_lib.state_shardings(mesh, state)
  forms = {
      "plain": (jax.jit(step, donate_argnums=0), False),
      "mesh_shardings": (jax.jit(step, in_shardings=(shard, rep, data),
                                 out_shardings=(shard, rep), donate_argnums=0), False),
      "set_mesh": (jax.jit(step, donate_argnums=0), True),
  }
  seconds = {name: [] for name in forms}
  states = {name: jax.tree.map(lambda x: x.copy(), state) for name in forms}
  for r in range(a.rounds + 1):  # round 0 compiles and warms up
    for name, (fn, under_mesh) in forms.items():
      with jax.set_mesh(mesh) if under_mesh else contextlib.nullcontext():
        t = time.perf_counter()
        for _ in range(a.steps):
          states[name], m = fn(states[name], clf.params, batch)
        jax.block_until_ready(m)
      if r:
        seconds[name].append((time.perf_counter() - t) / a.steps)
  rows = {n: {"seconds_per_step": float(np.median(s)),
              "ratio_to_plain": float(np.median(s) / np.median(seconds["plain"]))}
          for n, s in seconds.items()}
  for n, row in rows.items():
    print(f"{n}: {row['seconds_per_step']:.3f} s/step ({row['ratio_to_plain']:.2f}x plain)")
  result = {**environment(), "image": [a.size, a.size, 3], "batch": a.batch,
            "results": rows, "command": "python -m benchmarks.one_device_jit " +
            " ".join(argv or [])}
  if not a.smoke:
    write_result(result, "one_device_jit", a.out)
  return result


if __name__ == "__main__":
  main(__import__("sys").argv[1:])
