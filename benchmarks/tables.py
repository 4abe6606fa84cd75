"""Markdown tables of the committed results, for the docs pages (docs/).

    python -m benchmarks.tables
"""

from __future__ import annotations

import glob
import json
import os

RESULTS = os.path.join(os.path.dirname(__file__), "results")


def _load(pattern):
  for path in sorted(glob.glob(os.path.join(RESULTS, pattern))):
    with open(path) as f:
      yield os.path.relpath(path, RESULTS), json.load(f)


def _rate(v: float) -> str:
  return f"{v:,.0f}" if v >= 10 else f"{v:.2g}"


def _ratio(v: dict) -> str:
  """A `step_time.ratio_summary` as "median (min–max)"."""
  return f"{v['median']:.2f} ({v['min']:.2f}–{v['max']:.2f})"


def step_time() -> str:
  lines = []
  for name, r in _load("step_time_*.json"):
    source = f"; bandwidth {r['bandwidth_source']}" if "bandwidth_source" in r else ""
    lines += [f"`{name}` ({r['device']}, jax {r['jax']}{source})", "",
              "| preset | image | batch | compute | steps/dispatch | ms/step (p10–p90) "
              "| images/s | compile s | GFLOP/step | MFU % | bound (% of its roof) |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for x in r["results"]:
      lo, hi = x["ms_per_step_p10_p90"]
      if "mfu" in x:  # FLOPs counted on the host CPU (benchmarks/flops.py)
        gflop = f"{x['flops_per_step'] / 1e9:.1f}"
        mfu = f"{100 * x['mfu']:.1f}"
        bound = (f"{x['bound']} ({100 * x['fraction_of_roof']:.0f})" if "bound" in x
                 else "n/a")  # recounted later: no bandwidth was measured there
      else:  # older results: the device's own count, which on a GPU misses convolutions
        counted = r.get("platform", "cpu") == "cpu"
        gflop = f"{x['flops_per_step'] / 1e9:.1f}" if counted else "n/a"
        mfu = f"{100 * x['fraction_of_peak']:.1f}" if counted else "n/a"
        bound = "n/a"
      lines.append(f"| {x.get('preset', 'small')} "
                   f"| {x['image_size']}x{x['image_size']}x{x['channels']} | {x['batch']} "
                   f"| {x['dtype']} | {x['steps_per_dispatch']} | {x['ms_per_step_median']:.1f} "
                   f"({lo:.1f}–{hi:.1f}) | {x['images_per_s']:.0f} | {x['compile_s']:.1f} "
                   f"| {gflop} | {mfu} | {bound} |")
    lines.append("")
  return "\n".join(lines)


def step_count() -> str:
  lines = []
  for name, r in _load("step_count_*.json"):
    lines += [f"`{name}` (counted on the host, nothing timed)", "",
              "| preset | image | batch | compute | TFLOP/step | GB/step | FLOP/byte |",
              "|---|---|---|---|---|---|---|"]
    for x in r["results"]:
      lines.append(f"| {x['preset']} | {x['image_size']}x{x['image_size']}x{x['channels']} "
                   f"| {x['batch']} | {x['dtype']} | {x['flops_per_step'] / 1e12:.2f} "
                   f"| {x['bytes_accessed_per_step'] / 1e9:.0f} | {x['flops_per_byte']:.0f} |")
    lines.append("")
  return "\n".join(lines)


def scaling() -> str:
  lines = []
  for name, r in _load("scaling_*.json"):
    lines += [f"`{name}` (fsdp={r['fsdp']})", "",
              "| devices | mesh | global batch | per-device batch | ms/step |", "|---|---|---|---|---|"]
    for x in r["results"]:
      lines.append(f"| {x['devices']} | {x['mesh']} | {x['global_batch']} "
                   f"| {x['per_device_batch']} | {x['ms_per_step_median']:.0f} |")
    lines.append("")
  return "\n".join(lines)


def compare_torch() -> str:
  lines = []
  for name, r in _load("compare_torch_*.json"):
    lines += [f"`{name}` ({r['device']}, jax {r['jax']}, torch {r['torch']}, "
              f"{r['rounds']} alternating rounds)", "",
              "| image | batch | steps per round | ms/step (median of rounds) "
              "| JAX / torch (median, min–max over rounds) |",
              "|---|---|---|---|---|"]
    for x in r["results"]:
      ms = ", ".join(f"{k} {v:.0f}" for k, v in x["ms_per_step_median"].items())
      ratios = "; ".join(f"{k}: {_ratio(v)}" for k, v in x["ratios"].items())
      steps = x.get("steps_per_round", r["steps_per_round"])  # older files: one count
      lines.append(f"| {x.get('preset', 'small')} "
                   f"| {x['image_size']}x{x['image_size']}x{x['channels']} | {x['batch']} "
                   f"| {steps} | {ms} | {ratios} |")
    lines.append("")
  return "\n".join(lines)


def profile_cpu() -> str:
  lines = []
  for name, r in _load("profile_cpu_*.json"):
    lines += [f"`{name}` ({r['device']}, jax {r['jax']}, torch {r['torch']}): ms per step "
              "by kind of op, each side's profile scaled to its wall time", "",
              "| image | kind | JAX ms | PyTorch eager ms | JAX / eager |", "|---|---|---|---|---|"]
    for x in r["results"]:
      size = f"{x['image_size']}x{x['image_size']}x{x['channels']}"
      wall = x["wall_ms_per_step"]
      lines.append(f"| {size} | whole step | {wall['jax']:.0f} | {wall['torch']:.0f} "
                   f"| {x['jax_over_torch']:.2f} |")
      for kind, v in x["kinds"].items():
        lines.append(f"| {size} | {kind} | {v['jax']['wall_ms']:.0f} "
                     f"| {v['torch']['wall_ms']:.0f} | {v['jax_over_torch']:.2f} |")
    lines.append("")
  return "\n".join(lines)


def profile_step() -> str:
  lines = []
  for name, r in _load("profile_step_*.json"):
    kinds = list(r["results"][0]["kinds"])
    lines += [f"`{name}` ({r['device']}, jax {r['jax']}): per step, traced op time and the "
              "bytes the program's ops read and write, by kind (% of each)", "",
              "| preset | image | batch | compute | wall ms | op ms | GB | "
              + " | ".join(f"{k}: time / bytes" for k in kinds) + " | top primitives (ms) |",
              "|---|---|---|---|---|---|---|" + "---|" * (len(kinds) + 1)]
    for x in r["results"]:
      top = ", ".join(f"{k} {v:.0f}" for k, v in list(x["top_primitives"].items())[:4])
      lines.append(f"| {x['preset']} | {x['image_size']}x{x['image_size']}x{x['channels']} "
                   f"| {x['batch']} | {x['dtype']} | {x['wall_ms_per_step']:.1f} "
                   f"| {x['op_ms_per_step']:.1f} | {x['hlo_bytes_per_step'] / 1e9:.1f} | "
                   + " | ".join(f"{100 * x['kinds'][k]['share']:.0f} / "
                                f"{100 * x['bytes_kinds'][k]['share']:.0f}" for k in kinds)
                   + f" | {top} |")
    lines.append("")
  return "\n".join(lines)


def layer_forms() -> str:
  lines = []
  for name, r in _load("layer_forms_*.json"):
    lines += [f"`{name}` ({r['device']}, jax {r['jax']}, {r['rounds']} rounds of "
              f"{r['steps_per_round']} steps)", "",
              "| image | batch | form | ms/step (median of rounds) | form / models (min–max) |",
              "|---|---|---|---|---|"]
    for x in r["results"]:
      for form, ms in x["ms_per_step_median"].items():
        ratio = x["over_models"].get(form)
        ratio = _ratio(ratio) if ratio else "1"
        lines.append(f"| {x['image_size']}x{x['image_size']}x{x['channels']} | {x['batch']} "
                     f"| {form} | {ms:.1f} | {ratio} |")
    lines.append("")
  return "\n".join(lines)


def explain_throughput() -> str:
  lines = []
  for name, r in _load("explain_throughput_*.json"):
    lines += [f"`{name}` ({r['device']}, jax {r['jax']})", "",
              "| method | image | images | maps/s |", "|---|---|---|---|"]
    for x in r["results"]:
      lines.append(f"| {x['method']} | {x['image_size']}x{x['image_size']}x{x['channels']} "
                   f"| {x['images']} | {_rate(x['maps_per_s'])} |")
    lines.append("")
  return "\n".join(lines)


def optimiser_throughput() -> str:
  lines = []
  for name, r in _load("optimiser_throughput_*.json"):
    c = r["config"]
    rounds = f", {r['rounds']} rounds" if "rounds" in r else ""
    lines += [(f"`{name}` ({r['method'].upper()}, {r['device']}, {r['images']} images "
               f"{'x'.join(str(v) for v in r['image_shape'])}, {c['steps']} steps{rounds})"),
              "", "| pattern | images/s | batched / this (median, min–max over rounds) |",
              "|---|---|---|"]
    ratios = r.get("ratios", {"batched / loop": {"median": r["speedup"]}})
    for mode, label in (("python_loop", "one image at a time, a Python loop over steps"),
                        ("loop", "one image at a time, one compiled optimisation each")):
      if mode not in r:  # older files have no python loop
        continue
      x = r[mode]
      note = f" (timed on {x['images_timed']} images)" if x["extrapolated"] else ""
      ratio = ratios[f"batched / {mode}"]
      spread = f" ({ratio['min']:.2f}–{ratio['max']:.2f})" if "min" in ratio else ""
      lines.append(f"| {label}{note} | {x['images_per_s']:.3g} | {ratio['median']:.2f}x"
                   f"{spread} |")
    if "batched_host" in r:  # older files have no host-dispatched batch
      inv = ratios["batched_host / batched"]
      chunk = f", {c['host_chunk']} images at a time" if c.get("host_chunk") else ""
      lines.append(f"| whole batch{chunk}, a Python loop over compiled steps | "
                   f"{r['batched_host']['images_per_s']:.3g} | {1 / inv['median']:.2f}x "
                   f"({1 / inv['max']:.2f}–{1 / inv['min']:.2f}) |")
    lines.append(f"| whole batch, one program | {r['batched']['images_per_s']:.3g} | 1 |")
    if "python_loop_max_abs_diff" in r:
      lines += ["", f"Largest difference from the batched result: one compiled "
                    f"optimisation each {r['max_abs_diff']:.2g}, Python loop "
                    f"{r['python_loop_max_abs_diff']:.2g}"
                    + (f", whole batch over compiled steps {r['batched_host_max_abs_diff']:.2g}."
                       if "batched_host_max_abs_diff" in r else ".")]
    lines.append("")
  return "\n".join(lines)


def step_forms() -> str:
  lines = []
  for name, r in _load("step_forms_*.json"):
    ms = {(x["pool"], x["dispatch"]): x["ms_per_step_median"] for x in r["results"]}
    dispatches = list(dict.fromkeys(d for _, d in ms))
    lines += [f"`{name}` ({r['device']}, batch {r['batch']}, {r['steps']} steps, "
              f"{r['rounds']} rounds; ms per step)", "",
              "| max-pool | " + " | ".join(dispatches) + " |",
              "|---" * (len(dispatches) + 1) + "|"]
    for pool in dict.fromkeys(p for p, _ in ms):
      lines.append(f"| {pool} | " + " | ".join(f"{ms[(pool, d)]:.1f}" for d in dispatches)
                   + " |")
    lines.append("")
  return "\n".join(lines)


def leaderboards() -> str:
  """Headline columns of each committed leaderboard (the full tables are beside them)."""
  columns = ["pixel_auroc", "iou_curve_area", "deletion_auc", "flip_rate", "proximity_l1",
             "fid_classifier"]
  lines = []
  for name, r in _load("leaderboard_*/leaderboard.json"):
    from cfx_jax.jobs.leaderboard import table
    lines += [f"`{name}` ({r['dataset']}, {r['num_images']} test images)", "",
              table(r, columns), ""]
  return "\n".join(lines)


if __name__ == "__main__":
  for title, text in (("Step time", step_time()), ("FLOPs and bytes per step", step_count()),
                      ("JAX against PyTorch", compare_torch()),
                      ("Where the CPU step's time goes", profile_cpu()),
                      ("Where the step's time goes, on its own device", profile_step()),
                      ("The step with each layer rewrite undone", layer_forms()),
                      ("Explanation throughput", explain_throughput()),
                      ("FIDO and DISC: batched against one at a time", optimiser_throughput()),
                      ("One step in the forms XLA compiles differently", step_forms()),
                      ("Leaderboards", leaderboards()), ("Scaling", scaling())):
    if text:
      print(f"### {title}\n\n{text}\n")
