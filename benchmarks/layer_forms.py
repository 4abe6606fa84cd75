"""The SyCE train step with the models' rewritten layers and with each in its plain form,
timed side by side.

    python -m benchmarks.layer_forms --sizes 32x3 64x3     # batch 64, 6 rounds of 3 steps
    python -m benchmarks.layer_forms --smoke               # tiny, used by the tests

`cfx_jax/models/layers.py` rewrites layers that XLA:CPU differentiates slowly; each
form undoes one rewrite (`layers.textbook_forms`):
- `models`: the step as the models run it;
- `resize upsampling`: the decoders' 2x upsampling as `jax.image.resize(..., "nearest")`
  (a gather, its gradient a scatter-add) instead of a broadcast and a reshape;
- `plain strided convolutions`: the stride-2 convolutions as `lax.conv_general_dilated`
  instead of 2x2 convolutions on a space-to-depth input, whose zero-padded kernels do 16
  multiplications for every 9.
A rewrite pays off on a device where `models` is the fastest. All forms are compiled in
one process and alternate in every round; ratios (form / models) are taken within the
round. Their first-step losses must agree. Writes
benchmarks/results/layer_forms_<device>.json.
"""

from __future__ import annotations

import argparse
import contextlib

import numpy as np

from benchmarks import step_time
from cfx_jax.models import layers


FORMS = {"models": contextlib.nullcontext,
         "resize upsampling": lambda: layers.textbook_forms("upsample2"),
         "plain strided convolutions": lambda: layers.textbook_forms("strided_conv")}


def compare(image_size, channels, batch, rounds, steps) -> dict:
  runs, programs = {}, set()
  for form in FORMS:
    with FORMS[form]():  # the models are built and the step traced within the form
      runs[form], info = step_time.prepare(image_size, channels, batch, "float32")
    programs.add(info["compiled"].as_text())
  if len(programs) != len(FORMS):
    raise AssertionError("two forms compiled to the same program")
  losses = {form: float(run()["g_loss"]) for form, run in runs.items()}
  if not np.allclose(list(losses.values()), losses["models"], rtol=1e-5):
    raise AssertionError(f"the forms disagree: {losses}")
  ms = step_time.alternate(runs, rounds, steps)
  return {"image_size": image_size, "channels": channels, "batch": batch,
          "g_loss": losses, "ms_per_step_rounds": ms,
          "ms_per_step_median": {f: float(np.median(v)) for f, v in ms.items()},
          "over_models": {f: step_time.ratio_summary(ms[f], ms["models"])
                          for f in FORMS if f != "models"}}


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
  result = {**step_time.environment(), "rounds": args.rounds, "steps_per_round": args.steps,
            "results": rows}
  for size in args.sizes:
    side, channels = (int(v) for v in size.split("x"))
    rows.append(compare(side, channels, args.batch, args.rounds, args.steps))
    print(f"{size}: " + ", ".join(f"{f} {v:.1f} ms" for f, v in
                                  rows[-1]["ms_per_step_median"].items())
          + " | over models: " + ", ".join(
              f"{f} {r['median']:.3f} ({r['min']:.3f}–{r['max']:.3f})"
              for f, r in rows[-1]["over_models"].items()), flush=True)
    step_time.write_result(result, "layer_forms", args.out)  # each size as it comes
  return result


if __name__ == "__main__":
  main()
