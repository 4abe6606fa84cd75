"""The persistent compilation cache, measured: the same short train job run twice, each
in a fresh process, against one cache folder that starts empty.

    python -m benchmarks.compile_cache               # 20 explainer steps
    python -m benchmarks.compile_cache --steps 2     # quicker

The first run compiles every program and fills the cache; the second loads them, so the
difference is what the cache saves a rerun (a resumed job, the same command again).
Writes benchmarks/results/compile_cache_<device>.json.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import tempfile
import time

from benchmarks.step_time import environment, write_result
from cfx_jax.engine import runtime

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def job(steps: int, classifier_steps: int, workdir: str) -> list[str]:
  """`cfx-jax train` of the quick-start config, cut to `steps` explainer steps and a
  small eval; the classifier needs more than 20 steps to predict both classes."""
  return ["cfx-jax", "train", "--config", "lesions_syce", "--workdir", workdir,
          f"--config.classifier.steps={classifier_steps}", f"--config.explainer.steps={steps}",
          "--config.classifier.progress=False", "--config.explainer.progress=False",
          "--config.dataset.num_train=600", "--config.dataset.num_test=64",
          "--config.eval.num_images=64", "--config.eval.oracle_steps=0"]


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--steps", type=int, default=20)
  p.add_argument("--classifier-steps", type=int, default=100)
  p.add_argument("--out")
  a = p.parse_args(argv)
  times, entries = {}, {}
  with tempfile.TemporaryDirectory() as tmp:
    cache = os.path.join(tmp, "cache")
    env = {k: v for k, v in os.environ.items()
           if k not in ("XLA_FLAGS", "JAX_COMPILATION_CACHE_DIR")
           and not k.startswith("JAX_PERSISTENT_CACHE_")}
    env[runtime.CACHE_ENV] = cache
    for run in ("first", "second"):
      # The module, not the installed script: the same code without depending on PATH.
      args = job(a.steps, a.classifier_steps, os.path.join(tmp, run))[1:]
      command = [sys.executable, "-m", "cfx_jax.cli", *args]
      start = time.perf_counter()
      subprocess.run(command, cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL)
      times[run] = time.perf_counter() - start
      entries[run] = sum(len(files) for _, _, files in os.walk(cache))
      print(f"{run}: {times[run]:.1f} s, {entries[run]} cache entries", flush=True)
  shown = shlex.join(job(a.steps, a.classifier_steps, "runs/<first|second>"))
  result = {"command": f"{runtime.CACHE_ENV}=<empty folder> {shown}", "steps": a.steps,
            "classifier_steps": a.classifier_steps,
            "first_s": round(times["first"], 2), "second_s": round(times["second"], 2),
            "ratio": round(times["first"] / times["second"], 2),
            "cache_entries": entries, "environment": environment(),
            "benchmark": shlex.join(["python", "-m", "benchmarks.compile_cache",
                                    *(sys.argv[1:] if argv is None else argv)])}
  return write_result(result, "compile_cache", a.out)


if __name__ == "__main__":
  main()
