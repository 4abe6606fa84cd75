"""FIDO explanations per second: one batched compiled optimisation vs a per-image loop.

    python -m benchmarks.fido_throughput                       # 256 images, 32x32x3
    python -m benchmarks.fido_throughput --loop-images 16      # time 16 looped, extrapolate
    python -m benchmarks.fido_throughput --smoke               # tiny (used by the tests)

Both sides run the same `optimise_masks` on the same images, keys and classifier (a
randomly initialised CNNClassifier; throughput does not depend on trained weights):
(a) "batched": all images in one compiled call (vmap over images of a scan over steps);
(b) "loop": the original code's pattern, one compiled single-image optimisation called
once per image from Python. Each is compiled ahead of timing. Writes a JSON with the
device, jax version, config, seconds and images/s of each, and their ratio.
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

from cfx_jax.classifier import from_module
from cfx_jax.methods.fido import fido_config, log_odds, optimise_masks
from cfx_jax.models import CNNClassifier


def build(size: int, channels: int, classes: int):
  return from_module(CNNClassifier(channels, classes, rngs=nnx.Rngs(0)),
                     (size, size, channels))


def make_program(clf, cfg, key):
  """jit(params, images, classes, ids) -> theta: the classifier's params are an argument."""

  def program(params, x, c, ids):
    def score_fn(images, k):
      return log_odds(clf.apply(params, images), k)
    return optimise_masks(score_fn, cfg.infiller, x, c, key, cfg, ids=ids)[0]

  return jax.jit(program)


def timed(fn, *args):
  t0 = time.perf_counter()
  out = jax.block_until_ready(fn(*args))
  return out, time.perf_counter() - t0


def measure(args):
  cfg = fido_config(objective=args.objective, steps=args.steps, samples=args.samples,
                    infiller=args.infiller)
  clf = build(args.size, args.channels, args.classes)
  rng = np.random.default_rng(args.seed)
  x = jnp.asarray(rng.uniform(-1, 1, (args.images, args.size, args.size, args.channels))
                  .astype(np.float32))
  c = jnp.asarray(clf.predict(np.asarray(x)))
  ids = jnp.arange(args.images)
  program = make_program(clf, cfg, jax.random.key(args.seed))

  t0 = time.perf_counter()
  batched = program.lower(clf.params, x, c, ids).compile()
  batched_compile = time.perf_counter() - t0
  theta, batched_s = timed(batched, clf.params, x, c, ids)

  t0 = time.perf_counter()
  single = program.lower(clf.params, x[:1], c[:1], ids[:1]).compile()
  single_compile = time.perf_counter() - t0
  timed_n = min(args.images, args.loop_images or args.images)
  thetas = []
  t0 = time.perf_counter()
  for i in range(timed_n):
    thetas.append(jax.block_until_ready(single(clf.params, x[i:i + 1], c[i:i + 1],
                                               ids[i:i + 1])))
  loop_measured = time.perf_counter() - t0
  loop_s = loop_measured * args.images / timed_n
  diff = float(np.abs(np.asarray(theta[:timed_n]) - np.concatenate(thetas)).max())

  batched_ips, loop_ips = args.images / batched_s, args.images / loop_s
  return {
      "batched": {"seconds": batched_s, "images_per_s": batched_ips,
                  "compile_s": batched_compile},
      "loop": {"seconds": loop_s, "images_per_s": loop_ips, "compile_s": single_compile,
               "images_timed": timed_n, "seconds_measured": loop_measured,
               "extrapolated": timed_n < args.images,
               "note": ("seconds = seconds_measured * images / images_timed"
                        if timed_n < args.images else "all images timed")},
      "speedup": batched_ips / loop_ips,
      # Same optimisation both ways: the per-image results agree up to rounding.
      "max_abs_theta_diff": diff,
      "fido_config": {k: cfg[k] for k in ("objective", "steps", "samples", "temperature",
                                           "learning_rate", "sparsity", "infiller")},
  }


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--images", type=int, default=256)
  parser.add_argument("--size", type=int, default=32, help="image side (square images)")
  parser.add_argument("--channels", type=int, default=3)
  parser.add_argument("--classes", type=int, default=2)
  parser.add_argument("--steps", type=int, default=300)
  parser.add_argument("--samples", type=int, default=8)
  parser.add_argument("--objective", choices=["sdr", "ssr"], default="sdr")
  parser.add_argument("--infiller", default="blur")
  parser.add_argument("--loop-images", type=int, default=None,
                      help="time the per-image loop on this many images and extrapolate")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--smoke", action="store_true", help="8 images, 16x16, 3 steps, 2 samples")
  parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results",
                                                    "fido_throughput_cpu.json"))
  args = parser.parse_args(argv)
  if args.smoke:
    args.images, args.size, args.steps, args.samples = 8, 16, 3, 2
    args.loop_images = min(args.loop_images or 4, args.images)
  device = jax.devices()[0]
  row = measure(args)
  print(f"FIDO {args.objective.upper()}, {args.images} images "
        f"{args.size}x{args.size}x{args.channels}, {args.steps} steps x {args.samples} "
        f"samples, {args.infiller} in-fill, on {device.device_kind}")
  print(f"{'':10}{'seconds':>10}{'images/s':>12}{'compile s':>12}")
  for name in ("batched", "loop"):
    r = row[name]
    print(f"{name:10}{r['seconds']:10.2f}{r['images_per_s']:12.2f}{r['compile_s']:12.2f}")
  loop = row["loop"]
  if loop["extrapolated"]:
    print(f"(loop timed on {loop['images_timed']} images, extrapolated to {args.images})")
  print(f"batched / loop: {row['speedup']:.1f}x")
  result = {"device": device.device_kind, "platform": device.platform,
            "host": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
            "jax": jax.__version__, "images": args.images,
            "image_shape": [args.size, args.size, args.channels], "classes": args.classes,
            "config": {**row.pop("fido_config"), "images": args.images, "size": args.size,
                       "channels": args.channels, "classes": args.classes,
                       "loop_images": args.loop_images, "seed": args.seed,
                       "classifier": "CNNClassifier, random init"},
            **row}
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(result, f, indent=2)
  print(f"wrote {args.out}")
  return result


if __name__ == "__main__":
  main()
