"""Explanations per second of FIDO or DISC: one batched compiled optimisation vs a loop.

    python -m benchmarks.optimiser_throughput --method fido                  # 256 images
    python -m benchmarks.optimiser_throughput --method disc --loop-images 16 # extrapolate
    python -m benchmarks.optimiser_throughput --method fido --smoke          # tiny (tests)

Both sides run the same optimisation (`fido.optimise_masks` or
`disc_optimise.optimise_counterfactuals`) on the same images, keys and classifier (a randomly
initialised CNNClassifier; throughput does not depend on trained weights):
(a) "batched": all images in one compiled call (vmap over images of a scan over steps);
(b) "loop": the papers' pattern, one image at a time: a compiled single-image
optimisation called once per image from Python. Each is compiled before timing. Writes
benchmarks/results/optimiser_throughput_<method>_<device>.json with the device, config,
seconds and images/s of each, their ratio, and the largest difference between the two
results. For FIDO that difference is rounding (~1e-6). For DISC it can reach 0.2: the
batch-1 and batch-N programs round the prior-fit gradients differently, and Adam's
normalised first steps turn near-zero gradients of either sign into full-size steps.
The explainers themselves pad every chunk to one compiled shape, so an image's
explanation does not depend on the batch it is in (tests/test_disc.py checks it).
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from benchmarks.step_time import environment, write_result
from cfx_jax.classifier import from_module
from cfx_jax.methods.disc import auxiliary
from cfx_jax.methods.disc import explainer as disc
from cfx_jax.methods.disc import optimise as disc_optimise
from cfx_jax.methods.fido import explainer as fido
from cfx_jax.models import CNNClassifier


def build(size: int, channels: int, classes: int):
  return from_module(CNNClassifier(channels, classes, rngs=nnx.Rngs(0)),
                     (size, size, channels))


def fido_program(clf, args, key):
  """jit(params, images, classes, ids) -> drop logits (N, grid, grid)."""
  cfg = fido.fido_config(steps=args.steps, samples=args.samples, infiller=args.infiller)

  def program(params, x, c, ids):
    def score_fn(images, k):
      return fido.log_odds(clf.apply(params, images), k)
    return fido.optimise_masks(score_fn, cfg.infiller, x, c, key, cfg, ids=ids)[0]

  return jax.jit(program), {k: cfg[k] for k in ("objective", "steps", "samples",
                                                "temperature", "infiller")}


def disc_program(clf, args, key):
  """jit(params, images, targets, ids) -> counterfactuals, with every DISC term on.

  The manifold term uses a randomly initialised auxiliary RBF model: its cost, not its
  training, is what matters here.
  """
  cfg = disc.disc_config(steps=args.steps, fit_steps=args.fit_steps)
  aux = auxiliary._wrap(auxiliary._build(clf.image_shape, clf.num_classes,
                                         auxiliary.auxiliary_config()),
                        clf.image_shape, auxiliary.auxiliary_config())

  def program(params, x, t, ids):
    return disc_optimise.optimise_counterfactuals(
        x, t, key, cfg, logits_fn=lambda im: clf.apply(params, im),
        bn_fn=lambda im: clf.bn_features(params, im),
        uncertainty_fn=lambda im: aux.uncertainty_fn(aux.params, im), ids=ids)[0]

  return jax.jit(program), {k: cfg[k] for k in ("parameterisation", "fit_steps", "steps",
                                                "bn", "manifold", "proximity")}


PROGRAMS = {"fido": fido_program, "disc": disc_program}


def timed(fn, *args):
  t0 = time.perf_counter()
  out = jax.block_until_ready(fn(*args))
  return out, time.perf_counter() - t0


def measure(args):
  clf = build(args.size, args.channels, args.classes)
  rng = np.random.default_rng(args.seed)
  x = jnp.asarray(rng.uniform(-1, 1, (args.images, args.size, args.size, args.channels))
                  .astype(np.float32))
  predicted = clf.predict(np.asarray(x))
  # FIDO explains the predicted class; DISC moves each image to the other class.
  c = jnp.asarray(predicted if args.method == "fido" else (predicted + 1) % args.classes)
  ids = jnp.arange(args.images)
  program, settings = PROGRAMS[args.method](clf, args, jax.random.key(args.seed))

  t0 = time.perf_counter()
  batched = program.lower(clf.params, x, c, ids).compile()
  batched_compile = time.perf_counter() - t0
  out, batched_s = timed(batched, clf.params, x, c, ids)

  t0 = time.perf_counter()
  single = program.lower(clf.params, x[:1], c[:1], ids[:1]).compile()
  single_compile = time.perf_counter() - t0
  timed_n = min(args.images, args.loop_images or args.images)
  outs = []
  t0 = time.perf_counter()
  for i in range(timed_n):
    outs.append(jax.block_until_ready(single(clf.params, x[i:i + 1], c[i:i + 1],
                                             ids[i:i + 1])))
  loop_measured = time.perf_counter() - t0
  loop_s = loop_measured * args.images / timed_n
  diff = float(np.abs(np.asarray(out[:timed_n]) - np.concatenate(outs)).max())

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
      "max_abs_diff": diff,
      "settings": settings,
  }


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--method", choices=sorted(PROGRAMS), default="fido")
  parser.add_argument("--images", type=int, default=256)
  parser.add_argument("--size", type=int, default=32, help="image side (square images)")
  parser.add_argument("--channels", type=int, default=3)
  parser.add_argument("--classes", type=int, default=2)
  parser.add_argument("--steps", type=int, default=300, help="optimisation steps")
  parser.add_argument("--fit-steps", type=int, default=200, help="DISC: prior-fit steps")
  parser.add_argument("--samples", type=int, default=8, help="FIDO: mask samples per step")
  parser.add_argument("--infiller", default="blur", help="FIDO: in-filler name")
  parser.add_argument("--loop-images", type=int, default=None,
                      help="time the per-image loop on this many images and extrapolate")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--smoke", action="store_true", help="8 images, 16x16, 3 steps")
  parser.add_argument("--out", default=None)
  args = parser.parse_args(argv)
  if args.smoke:
    args.images, args.size, args.steps, args.fit_steps, args.samples = 8, 16, 3, 2, 2
    args.loop_images = min(args.loop_images or 4, args.images)
  env = environment()
  row = measure(args)
  print(f"{args.method.upper()}, {args.images} images {args.size}x{args.size}x{args.channels}"
        f", {row['settings']} on {env['device']}")
  print(f"{'':10}{'seconds':>10}{'images/s':>12}{'compile s':>12}")
  for name in ("batched", "loop"):
    r = row[name]
    print(f"{name:10}{r['seconds']:10.2f}{r['images_per_s']:12.2f}{r['compile_s']:12.2f}")
  loop = row["loop"]
  if loop["extrapolated"]:
    print(f"(loop timed on {loop['images_timed']} images, extrapolated to {args.images})")
  print(f"batched / loop: {row['speedup']:.1f}x")
  result = {**env, "method": args.method, "images": args.images,
            "image_shape": [args.size, args.size, args.channels], "classes": args.classes,
            "config": {**row.pop("settings"), "loop_images": args.loop_images,
                       "seed": args.seed, "classifier": "CNNClassifier, random init"},
            **row}
  return write_result(result, f"optimiser_throughput_{args.method}", args.out)


if __name__ == "__main__":
  main()
