"""Explanation maps per second for every method, through the public `explain` call.

    python -m benchmarks.explain_throughput                 # 32x32x3 and 64x64x3, 1024 images
    python -m benchmarks.explain_throughput --sizes 64x3 --images 4096 --methods syce sagen
    python -m benchmarks.explain_throughput --smoke         # tiny, used by the tests

Networks are randomly initialised: the cost of a forward pass does not depend on the
weights. Optimisation methods (FIDO: 300 steps x 8 mask samples per image by default) are
timed on `--optimiser-images` images with their default settings. The classifier is the reference BatchNorm CNN. The time covers the whole
public call (host -> device, compiled chunks, device -> host) after one warm-up call
of the same size, as a user sees it. Writes benchmarks/results/explain_throughput_<device>.json.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from flax import nnx

from benchmarks import step_time
from cfx_jax.baselines import BASELINES, explain_baseline
from cfx_jax.classifier import from_module
from cfx_jax.methods import GENERATOR_METHODS, METHODS, ModelSpec
from cfx_jax.methods.conditional import get_recipe
from cfx_jax.models import CNNClassifier


def generative(name):
  def make(clf, image_size, channels, chunk_size):
    from cfx_jax.methods.conditional.explainer import GeneratorExplainer
    method = get_recipe(name)
    spec = ModelSpec(image_size, channels, 2)
    gen_def, gen_params = nnx.split(method.build(spec, nnx.Rngs(0))[0])
    explainer = GeneratorExplainer(method, spec, gen_def, gen_params, clf,
                                   chunk_size=chunk_size, map_reference=method.default_map_reference(spec.residual))
    return explainer.explain
  return make


def optimiser(name):
  def make(clf, image_size, channels, chunk_size):
    images = np.zeros((1, image_size, image_size, channels), np.float32)
    explainer = METHODS[name].fit(clf, images, seed=0, config={"warn_failures": False})
    return explainer.explain
  return make


def baseline(name):
  def make(clf, image_size, channels, chunk_size):
    return lambda images: explain_baseline(name, clf, images, key=0)
  return make


# Methods that optimise per image (FIDO, DISC) are timed on fewer images.
OPTIMISERS = sorted(name for name, entry in METHODS.items() if entry.optimises_per_image)
MAKERS = {**{name: generative(name) for name in GENERATOR_METHODS},
          **{name: optimiser(name) for name in OPTIMISERS},
          **{name: baseline(name) for name in BASELINES}}


def measure(name, image_size, channels, n, chunk_size, repeats):
  if name in OPTIMISERS:
    repeats = 1  # each call is a full optimisation per image
  clf = from_module(CNNClassifier(channels, 2, rngs=nnx.Rngs(0)),
                    (image_size, image_size, channels))
  explain = MAKERS[name](clf, image_size, channels, chunk_size)
  images = np.random.default_rng(0).uniform(
      -1, 1, (n, image_size, image_size, channels)).astype(np.float32)
  t0 = time.perf_counter()
  out = explain(images)
  first_s = time.perf_counter() - t0
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    out = explain(images)
    times.append(time.perf_counter() - t0)
  assert out.maps.shape == (n, image_size, image_size)
  s = float(np.median(times))
  return {"method": name, "image_size": image_size, "channels": channels, "images": n,
          "chunk_size": chunk_size, "first_call_s": first_s, "seconds_median": s,
          "maps_per_s": n / s}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--sizes", nargs="*", default=["32x3", "64x3"], help="SIDExCHANNELS")
  parser.add_argument("--images", type=int, default=1024)
  parser.add_argument("--optimiser-images", type=int, default=4,
                      help="images for optimisation methods (FIDO, ...), default settings")
  parser.add_argument("--chunk-size", type=int, default=256)
  parser.add_argument("--methods", nargs="*", default=sorted(MAKERS))
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--smoke", action="store_true")
  parser.add_argument("--out", default=None)
  args = parser.parse_args(argv)
  if args.smoke:
    args.sizes, args.images, args.chunk_size, args.repeats = ["16x3"], 8, 8, 1
    args.optimiser_images = 0
  unknown = sorted(set(args.methods) - set(MAKERS))
  if unknown:
    parser.error(f"unknown methods {unknown}; available: {sorted(MAKERS)}")
  rows = []
  for size in args.sizes:
    side, channels = (int(v) for v in size.split("x"))
    for name in args.methods:
      n = args.optimiser_images if name in OPTIMISERS else args.images
      if n < 1:
        continue
      row = measure(name, side, channels, n, args.chunk_size, args.repeats)
      rows.append(row)
      print(f"{name:>10} {side}x{side}x{channels}: {row['maps_per_s']:.0f} maps/s "
            f"(first call {row['first_call_s']:.1f} s)", flush=True)
  result = {**step_time.environment(), "results": rows}
  return step_time.write_result(result, "explain_throughput", args.out)


if __name__ == "__main__":
  main()
