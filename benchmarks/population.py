"""A population of K explainers in one compiled program against K separate fits.

    python -m benchmarks.population                        # K = 4 on the lesion set, 32x32x3
    python -m benchmarks.population --members 4 --steps 30 --modes loop map
    python -m benchmarks.population --smoke                # tiny (used by the tests)

Side by side in one process: the K members fitted one after another (each a plain fit:
its own compilation, its own steps), then the same K members as one population in each
`--modes` (`cfx_jax/methods/conditional/population.py`). The members differ in their
loss weights (the selection's range of `l1`). Reports the wall time of each whole fit,
compilation included, and the ratio population / separate.
Writes benchmarks/results/population_<device>.json.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from benchmarks.step_time import environment, write_result
from cfx_jax import data as data_lib
from cfx_jax.classifier import from_module
from cfx_jax.methods.conditional import config as config_lib
from cfx_jax.methods.conditional.train import train_group
from cfx_jax.models import CNNClassifier
from flax import nnx


def _classifier(images):
  """An untrained CNN whose bias splits the images at its median logit, so both classes
  are predicted (the timing does not depend on what it has learned)."""
  net = CNNClassifier(images.shape[-1], 2, rngs=nnx.Rngs(0))
  logits = np.asarray(net(images[:256]))
  gap = np.median(logits[:, 1] - logits[:, 0])
  net.head.bias[...] = net.head.bias[...].at[0].add(gap)
  return from_module(net, images.shape[1:])


def _configs(members: int, steps: int, batch: int, features=None):
  out = []
  for l1 in np.geomspace(0.5, 4.0, members):
    c = config_lib.explainer_config("syce")
    c.steps, c.batch_size, c.num_devices, c.progress = steps, batch, 1, False
    c.checkpoint_every, c.log_every = 10 ** 6, max(steps // 2, 1)
    c.weights.l1 = float(l1)
    if features:
      c.model.gen_features, c.model.disc_features = features, features
    out.append(c)
  return out


def _timed(fn) -> float:
  t = time.perf_counter()
  fn()
  return time.perf_counter() - t


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--members", type=int, default=4)
  p.add_argument("--steps", type=int, default=60)
  p.add_argument("--batch", type=int, default=64)
  p.add_argument("--size", type=int, default=32)
  p.add_argument("--modes", nargs="+", default=["loop"])
  p.add_argument("--smoke", action="store_true")
  p.add_argument("--out")
  a = p.parse_args(argv)
  features = None
  if a.smoke:
    a.members, a.steps, a.batch, a.size, features = 2, 2, 8, 16, (8, 16)
  images = data_lib.make_lesions(512, image_size=a.size, channels=3, seed=0)["image"]
  clf = _classifier(images)
  configs = _configs(a.members, a.steps, a.batch, features)
  separate = [_timed(lambda c=c: train_group(clf, images, [c])) for c in configs]
  rows = {"separate": {"seconds": sum(separate), "each": separate}}
  print(f"separate: {sum(separate):.1f} s for {a.members} fits", flush=True)
  result = {**environment(), "members": a.members, "steps": a.steps, "batch": a.batch,
            "image": [a.size, a.size, 3], "results": rows,
            "command": "python -m benchmarks.population " + " ".join(argv or [])}
  for mode in a.modes:  # the file is written after every row: a stopped run keeps its rows
    if not a.smoke:
      write_result(result, "population", a.out)
    seconds = _timed(lambda: train_group(clf, images, configs, population_mode=mode))
    rows[mode] = {"seconds": seconds, "ratio_to_separate": seconds / sum(separate)}
    print(f"{mode}: {seconds:.1f} s for {a.members} members, separate {sum(separate):.1f} s "
          f"(ratio {seconds / sum(separate):.2f})", flush=True)
  if not a.smoke:
    write_result(result, "population", a.out)
  return result


if __name__ == "__main__":
  main(__import__("sys").argv[1:])
