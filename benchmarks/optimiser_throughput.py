"""Explanations per second of FIDO or DISC: batched optimisations vs one image at a time.

    python -m benchmarks.optimiser_throughput --method fido                  # 256 images
    python -m benchmarks.optimiser_throughput --method disc --loop-images 16 # extrapolate
    python -m benchmarks.optimiser_throughput --method fido --smoke          # tiny (tests)

All four run the same optimisation (`fido.optimise_masks` or
`disc_optimise.optimise_counterfactuals`) on the same images, keys and classifier (a randomly
initialised CNNClassifier; throughput does not depend on trained weights):
(a) "batched": all images in one compiled call (vmap over images of a scan over steps);
(a') "batched_host": `--host-chunk` images at a time (default all), one compiled step
(vmap over those images of the step) dispatched from a Python loop over the steps; with
chunks of 4 this is what FIDO's explainer does on the CPU;
(b) "loop": one image at a time, each a compiled single-image optimisation (the scan over
steps) called once per image from Python;
(c) "python_loop": the papers' pattern, one image at a time with a Python `for` loop over
the steps that dispatches one compiled step per step (`common.update` on the library's
per-image loss: `fido.image_loss`, `disc_optimise.image_stages`), fetching each image's
result when its loop ends.
Each is compiled before timing. Every round times all four back to back (the order rotates
from round to round) and the ratios are taken within the round. The loops are timed on
`--loop-images` / `--python-images` images and scaled to the batch. Writes
benchmarks/results/optimiser_throughput_<method>_<device>.json with the device, config,
seconds and images/s of each, their ratios, and the largest difference of each loop's
results from the batched ones. For FIDO that difference is rounding (~1e-6). For DISC it is
not: at the first inversion step the counterfactual equals the image up to rounding, so
the signs of the L1 proximity term's gradient are rounding, which differs between the
batch-N, batch-1 and single-step programs, and Adam's normalised first step makes them
full-size steps. With `--proximity 0` the four agree to ~1e-6 (tests/test_benchmarks.py
checks it). The explainers themselves pad every chunk to one compiled shape, so an image's
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
from cfx_jax.methods import common
from cfx_jax.methods.disc import auxiliary
from cfx_jax.methods.disc import explainer as disc
from cfx_jax.methods.disc import optimise as disc_optimise
from cfx_jax.methods.fido import explainer as fido
from cfx_jax.models import CNNClassifier

MODES = ("batched", "batched_host", "loop", "python_loop")


def per_image(fn, batched: bool, *image_args: bool):
  """`fn(params, *args)` as it is (one image), or vmapped over the images in the
  arguments marked True (the others, such as a step index, are shared)."""
  if not batched:
    return fn
  return jax.vmap(fn, in_axes=(None,) + tuple(0 if a else None for a in image_args))


def build(size: int, channels: int, classes: int):
  return from_module(CNNClassifier(channels, classes, rngs=nnx.Rngs(0)),
                     (size, size, channels))


def compiled(fn, *example):
  """(fn compiled for the shapes of `example`, seconds it took)."""
  t0 = time.perf_counter()
  out = jax.jit(fn).lower(*example).compile()
  return out, time.perf_counter() - t0


def fido_program(clf, args, key):
  """(jit(params, images, classes, ids) -> drop logits (N, grid, grid), settings,
  python_loop(params, x0, c0, k0) -> (run(params, x, c, k) -> drop logits, compile s)).

  python_loop is the papers' pattern for one image: a compiled single step (the same
  update as the scan of `optimise_masks`) called from a Python loop over the steps.
  """
  cfg = fido.fido_config(steps=args.steps, samples=args.samples, infiller=args.infiller)
  opt = fido.mask_optimiser(cfg)

  def score(params):
    return lambda images, k: fido.log_odds(clf.apply(params, images), k)

  def program(params, x, c, ids):
    return fido.optimise_masks(score(params), cfg.infiller, x, c, key, cfg, ids=ids)[0]

  def start(params, x):
    theta = fido.initial_theta(cfg, fido.grid_shape(cfg, x.shape[:2]), x.dtype)
    return theta, opt.init(theta)

  def step(params, x, c, k, carry, t):
    return common.update(fido.image_loss(score(params), cfg.infiller, x, c, k, cfg),
                         opt)(carry, t)

  def python_loop(params, x0, c0, k0, batched=False):
    start_c, s0 = compiled(per_image(start, batched, True), params, x0)
    carry0 = start_c(params, x0)
    step_c, s1 = compiled(per_image(step, batched, True, True, True, True, False),
                          params, x0, c0, k0, carry0, np.int32(0))

    def run(params, x, c, k):
      carry = start_c(params, x)
      for t in range(int(cfg.steps)):
        carry, _ = step_c(params, x, c, k, carry, np.int32(t))
      return np.asarray(carry[0])

    return run, s0 + s1

  return jax.jit(program), {k: cfg[k] for k in ("objective", "steps", "samples",
                                                "temperature", "infiller")}, python_loop


def disc_program(clf, args, key):
  """As `fido_program`, for DISC with every term on -> counterfactuals (N, H, W, C).

  The manifold term uses a randomly initialised auxiliary RBF model: its cost, not its
  training, is what matters here. The python loop runs the prior fit and then the
  inversion one compiled step at a time.
  """
  overrides = {} if args.proximity is None else {"proximity": args.proximity}
  cfg = disc.disc_config(steps=args.steps, fit_steps=args.fit_steps, **overrides)
  aux = auxiliary._wrap(auxiliary._build(clf.image_shape, clf.num_classes,
                                         auxiliary.auxiliary_config()),
                        clf.image_shape, auxiliary.auxiliary_config())
  fit_opt, opt = disc_optimise.optimisers(cfg)
  fns = lambda params: dict(  # noqa: E731
      logits_fn=lambda im: clf.apply(params, im),
      bn_fn=lambda im: clf.bn_features(params, im),
      uncertainty_fn=lambda im: aux.uncertainty_fn(aux.params, im))

  def program(params, x, t, ids):
    return disc_optimise.optimise_counterfactuals(x, t, key, cfg, ids=ids, **fns(params))[0]

  def stages(params, x, t, k):
    return disc_optimise.image_stages(x, t, k, cfg, **fns(params))

  def start(params, x, t, k):
    prior = stages(params, x, t, k)[0]
    return prior, fit_opt.init(prior)

  def fit_step(params, x, t, k, carry, s):
    return common.update(stages(params, x, t, k)[1], fit_opt)(carry, s)

  def switch(params, x, t, k, fitted):
    return stages(params, x, t, k)[2](fitted), (fitted, opt.init(fitted))

  def inversion_step(params, x, t, k, residual, carry, s):
    return common.update(stages(params, x, t, k)[3](residual)[0], opt)(carry, s)

  def finish(params, x, t, k, residual, p):
    return stages(params, x, t, k)[3](residual)[1](p)

  def python_loop(params, x0, t0, k0, batched=False):
    each = lambda fn, *image_args: per_image(fn, batched, *image_args)  # noqa: E731
    start_c, s0 = compiled(each(start, True, True, True), params, x0, t0, k0)
    carry = start_c(params, x0, t0, k0)
    fit_c, s1 = compiled(each(fit_step, True, True, True, True, False),
                         params, x0, t0, k0, carry, np.int32(0))
    switch_c, s2 = compiled(each(switch, True, True, True, True), params, x0, t0, k0, carry[0])
    residual, carry = switch_c(params, x0, t0, k0, carry[0])
    inv_c, s3 = compiled(each(inversion_step, True, True, True, True, True, False),
                         params, x0, t0, k0, residual, carry, np.int32(0))
    finish_c, s4 = compiled(each(finish, True, True, True, True, True),
                            params, x0, t0, k0, residual, carry[0])

    def run(params, x, t, k):
      carry = start_c(params, x, t, k)
      for s in range(int(cfg.fit_steps)):
        carry, _ = fit_c(params, x, t, k, carry, np.int32(s))
      residual, carry = switch_c(params, x, t, k, carry[0])
      for s in range(int(cfg.steps)):
        carry, _ = inv_c(params, x, t, k, residual, carry, np.int32(s))
      return np.asarray(finish_c(params, x, t, k, residual, carry[0]))

    return run, s0 + s1 + s2 + s3 + s4

  return jax.jit(program), {k: cfg[k] for k in ("parameterisation", "fit_steps", "steps",
                                                "bn", "manifold", "proximity")}, python_loop


PROGRAMS = {"fido": fido_program, "disc": disc_program}


def _ratio(a, b) -> dict:
  r = np.asarray(a) / np.asarray(b)
  return {"median": float(np.median(r)), "min": float(r.min()), "max": float(r.max())}


def measure(args):
  clf = build(args.size, args.channels, args.classes)
  rng = np.random.default_rng(args.seed)
  x = jnp.asarray(rng.uniform(-1, 1, (args.images, args.size, args.size, args.channels))
                  .astype(np.float32))
  predicted = clf.predict(np.asarray(x))
  # FIDO explains the predicted class; DISC moves each image to the other class.
  c = jnp.asarray(predicted if args.method == "fido" else (predicted + 1) % args.classes)
  ids = jnp.arange(args.images)
  key = jax.random.key(args.seed)
  keys = common.image_keys(key, ids)  # what the optimisers give image i
  program, settings, python_loop = PROGRAMS[args.method](clf, args, key)
  params = clf.params

  t0 = time.perf_counter()
  batched = program.lower(params, x, c, ids).compile()
  compile_s = {"batched": time.perf_counter() - t0}
  t0 = time.perf_counter()
  single = program.lower(params, x[:1], c[:1], ids[:1]).compile()
  compile_s["loop"] = time.perf_counter() - t0
  stepped, compile_s["python_loop"] = python_loop(params, x[0], c[0], keys[0])
  hc = args.host_chunk or args.images
  if args.images % hc:
    raise ValueError(f"--host-chunk {hc} must divide --images {args.images}")
  hosted, compile_s["batched_host"] = python_loop(params, x[:hc], c[:hc], keys[:hc],
                                                  batched=True)

  timed_n = {"batched": args.images, "batched_host": args.images,
             "loop": min(args.images, args.loop_images or args.images),
             "python_loop": min(args.images, args.python_images or args.loop_images
                                or args.images)}

  def run(mode):
    n = timed_n[mode]
    t0 = time.perf_counter()
    if mode == "batched":
      out = np.asarray(jax.block_until_ready(batched(params, x, c, ids)))
    elif mode == "batched_host":
      out = np.concatenate([hosted(params, x[i:i + hc], c[i:i + hc], keys[i:i + hc])
                            for i in range(0, args.images, hc)])
    elif mode == "loop":
      out = np.concatenate([np.asarray(jax.block_until_ready(
          single(params, x[i:i + 1], c[i:i + 1], ids[i:i + 1]))) for i in range(n)])
    else:
      out = np.stack([stepped(params, x[i], c[i], keys[i]) for i in range(n)])
    return out, time.perf_counter() - t0

  measured = {m: [] for m in MODES}
  outs = {}
  for r in range(args.rounds):
    for mode in MODES[r % len(MODES):] + MODES[:r % len(MODES)]:
      outs[mode], seconds = run(mode)
      measured[mode].append(seconds)
    print(f"round {r + 1}/{args.rounds}: "
          + ", ".join(f"{m} {measured[m][-1]:.2f} s" for m in MODES), flush=True)

  row = {}
  scaled = {}
  for mode in MODES:
    n = timed_n[mode]
    scaled[mode] = [s * args.images / n for s in measured[mode]]
    seconds = float(np.median(scaled[mode]))
    row[mode] = {"seconds": seconds, "images_per_s": args.images / seconds,
                 "compile_s": compile_s[mode], "seconds_rounds": scaled[mode]}
    if mode not in ("batched", "batched_host"):
      row[mode].update({
          "images_timed": n, "seconds_measured": float(np.median(measured[mode])),
          "extrapolated": n < args.images,
          "note": ("seconds = seconds_measured * images / images_timed (medians of rounds)"
                   if n < args.images else "all images timed")})
  # images/s ratios: batched / loop = loop seconds / batched seconds, round by round.
  ratios = {"batched / loop": _ratio(scaled["loop"], scaled["batched"]),
            "batched_host / batched": _ratio(scaled["batched"], scaled["batched_host"]),
            "batched_host / python_loop": _ratio(scaled["python_loop"],
                                                 scaled["batched_host"]),
            "batched / python_loop": _ratio(scaled["python_loop"], scaled["batched"]),
            "loop / python_loop": _ratio(scaled["python_loop"], scaled["loop"])}
  diff = lambda a, b: float(np.abs(a[:len(b)] - b[:len(a)]).max())  # noqa: E731
  return {
      **row,
      "speedup": ratios["batched / loop"]["median"],
      "ratios": ratios,
      "max_abs_diff": diff(outs["batched"], outs["loop"]),
      "python_loop_max_abs_diff": diff(outs["batched"], outs["python_loop"]),
      "python_loop_vs_loop_max_abs_diff": diff(outs["loop"], outs["python_loop"]),
      "batched_host_max_abs_diff": diff(outs["batched"], outs["batched_host"]),
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
  parser.add_argument("--fit-steps", type=int, default=None,
                      help="DISC: prior-fit steps (default 200; smoke: 2)")
  parser.add_argument("--samples", type=int, default=8, help="FIDO: mask samples per step")
  parser.add_argument("--infiller", default="blur", help="FIDO: in-filler name")
  parser.add_argument("--loop-images", type=int, default=None,
                      help="time the per-image loop on this many images and extrapolate")
  parser.add_argument("--python-images", type=int, default=None,
                      help="the same for the per-step Python loop (default: --loop-images)")
  parser.add_argument("--host-chunk", type=int, default=None,
                      help="images per stepped batch of batched_host (default: all)")
  parser.add_argument("--rounds", type=int, default=3,
                      help="alternating rounds of the four patterns")
  parser.add_argument("--proximity", type=float, default=None,
                      help="DISC: weight of the L1 proximity term (default: the method's)")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--smoke", action="store_true", help="8 images, 16x16, 3 steps")
  parser.add_argument("--out", default=None)
  args = parser.parse_args(argv)
  if args.smoke:
    args.images, args.size, args.steps, args.samples = 8, 16, 3, 2
    args.fit_steps = 2 if args.fit_steps is None else args.fit_steps
    args.loop_images = min(args.loop_images or 4, args.images)
    args.python_images = min(args.python_images or 2, args.images)
    args.rounds = min(args.rounds, 2)
  args.fit_steps = 200 if args.fit_steps is None else args.fit_steps
  env = environment()
  row = measure(args)
  print(f"{args.method.upper()}, {args.images} images {args.size}x{args.size}x{args.channels}"
        f", {row['settings']} on {env['device']}")
  print(f"{'':14}{'seconds':>10}{'images/s':>12}{'compile s':>12}")
  for name in MODES:
    r = row[name]
    print(f"{name:14}{r['seconds']:10.2f}{r['images_per_s']:12.3f}{r['compile_s']:12.2f}")
  for name in ("loop", "python_loop"):
    if row[name]["extrapolated"]:
      print(f"({name} timed on {row[name]['images_timed']} images, scaled to {args.images})")
  for k, v in row["ratios"].items():
    print(f"{k}: {v['median']:.2f}x ({v['min']:.2f}-{v['max']:.2f} over {args.rounds} rounds)")
  print(f"max |difference| from batched: loop {row['max_abs_diff']:.2g}, "
        f"python_loop {row['python_loop_max_abs_diff']:.2g}, batched_host "
        f"{row['batched_host_max_abs_diff']:.2g}; python_loop from loop "
        f"{row['python_loop_vs_loop_max_abs_diff']:.2g}")
  result = {**env, "method": args.method, "images": args.images,
            "image_shape": [args.size, args.size, args.channels], "classes": args.classes,
            "rounds": args.rounds,
            "config": {**row.pop("settings"), "loop_images": args.loop_images,
                       "host_chunk": args.host_chunk or args.images,
                       "python_images": args.python_images, "rounds": args.rounds,
                       "seed": args.seed, "classifier": "CNNClassifier, random init"},
            **row}
  return write_result(result, f"optimiser_throughput_{args.method}", args.out)


if __name__ == "__main__":
  main()
