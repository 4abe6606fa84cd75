"""The SyCE train step with the U-Net's 2x upsampling in two forms, timed side by side.

    python -m benchmarks.upsample_forms --sizes 32x3 64x3     # batch 64, 6 rounds of 3 steps
    python -m benchmarks.upsample_forms --smoke               # tiny, used by the tests

`resize` is `jax.image.resize(..., "nearest")` (a gather; its gradient a scatter-add),
`broadcast` is `layers.upsample2` (a broadcast and a reshape; its gradient a sum over each
2x2 block), which the models use. Both steps are compiled in one process and alternate
in every round; the ratio is taken within the round. Their first-step losses must agree.
Writes benchmarks/results/upsample_forms_<device>.json.
"""

from __future__ import annotations

import argparse

import jax
import numpy as np

from benchmarks import step_time
from cfx_jax.methods.conditional import gan
from cfx_jax.models import unet
from cfx_jax.models.layers import upsample2


def resize(x):
  n, h, w, c = x.shape
  return jax.image.resize(x, (n, 2 * h, 2 * w, c), method="nearest")


FORMS = {"resize": resize, "broadcast": upsample2}


def compiled_step(form: str, image_size: int, channels: int, batch: int):
  """run() -> metrics of one SyCE step whose generators upsample with FORMS[form]."""
  unet.upsample2 = FORMS[form]  # the form the U-Net traces with
  try:
    method, models, state, clf = step_time.build(image_size, channels, "float32")
    images = np.random.default_rng(0).uniform(
        -1, 1, (2, batch // 2, image_size, image_size, channels)).astype(np.float32)
    step = jax.jit(gan.make_train_step(method, models, clf.apply, {}))
    compiled = step.lower(state, clf.params, images).compile()
  finally:
    unet.upsample2 = upsample2
  return lambda: jax.block_until_ready(compiled(state, clf.params, images)[1])


def compare(image_size, channels, batch, rounds, steps) -> dict:
  runs = {form: compiled_step(form, image_size, channels, batch) for form in FORMS}
  losses = {form: float(run()["g_loss"]) for form, run in runs.items()}
  if not np.isclose(losses["resize"], losses["broadcast"], rtol=1e-5):
    raise AssertionError(f"the two forms disagree: {losses}")
  ms = step_time.alternate(runs, rounds, steps)
  ratios = np.asarray(ms["broadcast"]) / np.asarray(ms["resize"])
  return {"image_size": image_size, "channels": channels, "batch": batch,
          "g_loss": losses, "ms_per_step_rounds": ms,
          "ms_per_step_median": {f: float(np.median(v)) for f, v in ms.items()},
          "broadcast_over_resize": {"median": float(np.median(ratios)),
                                    "min": float(ratios.min()), "max": float(ratios.max())}}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--sizes", nargs="*", default=["32x3", "64x3"], help="SIDExCHANNELS")
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--rounds", type=int, default=6)
  parser.add_argument("--steps", type=int, default=3, help="timed steps per form per round")
  parser.add_argument("--smoke", action="store_true")
  parser.add_argument("--out", default=None)
  args = parser.parse_args(argv)
  if args.smoke:
    args.sizes, args.batch, args.rounds, args.steps = ["16x3"], 8, 2, 1
  rows = []
  for size in args.sizes:
    side, channels = (int(v) for v in size.split("x"))
    row = compare(side, channels, args.batch, args.rounds, args.steps)
    rows.append(row)
    r = row["broadcast_over_resize"]
    print(f"{size}: " + ", ".join(f"{f} {v:.0f} ms" for f, v in row["ms_per_step_median"].items())
          + f" | broadcast / resize {r['median']:.3f} ({r['min']:.3f}–{r['max']:.3f})", flush=True)
  result = {**step_time.environment(), "rounds": args.rounds, "steps_per_round": args.steps,
            "results": rows}
  return step_time.write_result(result, "upsample_forms", args.out)


if __name__ == "__main__":
  main()
