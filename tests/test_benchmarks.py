"""The benchmark scripts run (smoke mode) so they cannot rot; no timing is asserted."""

import json

import pytest

from benchmarks import step_time


@pytest.mark.slow
def test_step_time_smoke(tmp_path):
  out = tmp_path / "step_time.json"
  result = step_time.main(["--smoke", "--out", str(out)])
  assert json.loads(out.read_text())["results"] == json.loads(json.dumps(result["results"]))
  rows = result["results"]
  assert [r["steps_per_dispatch"] for r in rows] == [1, 2]
  for r in rows:
    assert r["ms_per_step_median"] > 0 and r["flops_per_step"] > 0
    assert r["images_per_s"] > 0 and 0 < r["mfu"] and r["bound"] in ("compute", "memory")
  # On the CPU the host count of the program as it runs is the device's own count; the
  # model's FLOPs leave out the space-to-depth convolutions' zero taps. With two steps per
  # dispatch both are still per step.
  assert rows[0]["executed_flops_per_step"] == rows[0]["device_reported_flops_per_step"]
  assert rows[0]["flops_per_step"] < rows[0]["executed_flops_per_step"]
  assert rows[1]["flops_per_step"] == rows[0]["flops_per_step"]


def test_recount_and_count_give_the_host_count_of_the_measured_step(tmp_path):
  """An accelerator result measured before FLOPs were counted on the host gets the same
  count a CPU measurement has, its time kept, and with a bandwidth the memory roof; the
  count alone gives the same numbers."""
  path = tmp_path / "old.json"
  row = {"image_size": 16, "channels": 3, "batch": 8, "dtype": "float32",
         "steps_per_dispatch": 1, "ms_per_step_median": 2.0, "flops_per_step": 1e6,
         "fraction_of_peak": 1e-4}
  path.write_text(json.dumps({"peak_matmul_flops_per_s": {"float32": 1e12}, "results": [row]}))
  (new,) = step_time.main(["--recount", str(path), "--bandwidth", "1e11"])["results"]
  _, info = step_time.prepare(16, 3, 8, "float32")
  cost = info["compiled"].cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  # On the CPU the program counted as it runs is the measured one.
  assert new["executed_flops_per_step"] == info["device_flops"]
  assert new["bytes_accessed_per_step"] == cost["bytes accessed"]
  # The model's FLOPs leave out the zero taps of the space-to-depth convolutions.
  flops, nbytes = new["flops_per_step"], new["bytes_accessed_per_step"]
  assert 0.5 * info["device_flops"] < flops < info["device_flops"]
  assert new["device_reported_flops_per_step"] == 1e6 and "fraction_of_peak" not in new
  assert new["ms_per_step_median"] == 2.0
  assert new["mfu"] == pytest.approx(flops / 2e-3 / 1e12)
  assert new["memory_bound_s"] == pytest.approx(nbytes / 1e11)
  assert new["bound"] == ("compute" if flops / 1e12 >= nbytes / 1e11 else "memory")
  assert json.loads(path.read_text())["bandwidth_source"].endswith("not measured")
  (counted,) = step_time.main(["--count", "--sizes", "16x3", "--batches", "8", "--dtypes",
                               "float32", "--out", str(tmp_path / "count.json")])["results"]
  assert counted["flops_per_step"] == flops
  assert counted["flops_per_byte"] == pytest.approx(flops / nbytes)


def test_step_forms_smoke(tmp_path):
  from benchmarks import step_forms
  out = tmp_path / "forms.json"
  result = step_forms.main(["--smoke", "--out", str(out)])
  rows = json.loads(out.read_text())["results"]
  assert rows == json.loads(json.dumps(result["results"]))
  assert {(r["pool"], r["dispatch"]) for r in rows} == {
      (p, d) for p in step_forms.POOLS for d in step_forms.DISPATCH}
  # Every form is the same computation: equal up to rounding.
  assert all(r["ms_per_step_median"] > 0 and r["max_abs_diff"] < 1e-5 for r in rows)
  # ... but each pooling form is what its program runs.
  import jax.numpy as jnp
  images = jnp.zeros((2, 8, 8, 3))
  hlo = {p: step_forms.programs(p, images, 1)[1]["scan"].as_text() for p in step_forms.POOLS}
  assert "reduce-window" in hlo["reduce_window"] and "reduce-window" not in hlo["reshape"]


def test_explain_throughput_smoke(tmp_path):
  from benchmarks import explain_throughput
  out = tmp_path / "throughput.json"
  result = explain_throughput.main(["--smoke", "--out", str(out)])
  rows = json.loads(out.read_text())["results"]
  assert {r["method"] for r in rows} == (set(explain_throughput.MAKERS)
                                          - set(explain_throughput.OPTIMISERS))
  assert all(r["maps_per_s"] > 0 for r in result["results"])


# DISC without its L1 proximity term: at the first inversion step the counterfactual
# equals the image up to rounding, so that term's gradient signs are rounding, and Adam's
# normalised first step makes them full-size (see the benchmark's docstring).
@pytest.mark.parametrize("method, extra", [("fido", []), ("disc", ["--proximity", "0"])])
def test_optimiser_throughput_smoke(tmp_path, method, extra):
  from benchmarks import optimiser_throughput
  out = tmp_path / f"{method}.json"
  result = optimiser_throughput.main(["--method", method, "--smoke", "--out", str(out)]
                                     + extra)
  saved = json.loads(out.read_text())
  assert saved == json.loads(json.dumps(result)) and saved["method"] == method
  for mode in ("batched", "batched_host", "loop", "python_loop"):
    for k in ("seconds", "images_per_s", "compile_s"):
      assert saved[mode][k] > 0
    assert len(saved[mode]["seconds_rounds"]) == saved["rounds"] == 2
  assert saved["loop"]["images_timed"] == 4 and saved["python_loop"]["images_timed"] == 2
  assert set(saved["ratios"]) == {"batched / loop", "batched / python_loop",
                                  "loop / python_loop", "batched_host / batched",
                                  "batched_host / python_loop"}
  # The same optimisation batched (in one program or one step per Python iteration), one
  # compiled optimisation per image, and one compiled step per Python iteration (same
  # keys, steps and optimiser state): equal up to rounding.
  # A wrong key or step index in the stepped loop moves the results by 0.1 or more.
  assert saved["max_abs_diff"] < 1e-4
  assert saved["python_loop_max_abs_diff"] < 1e-4
  assert saved["python_loop_vs_loop_max_abs_diff"] < 1e-4
  assert saved["batched_host_max_abs_diff"] < 1e-4


def test_host_flop_count_matches_the_layers_by_hand():
  import jax
  import jax.numpy as jnp
  from flax import nnx

  import numpy as np

  from benchmarks import flops
  from cfx_jax.models import CNNClassifier, layers

  # One convolution, exactly: odd sizes, stride 2, SAME padding (only in-image taps).
  x, w = jnp.zeros((4, 15, 17, 5)), jnp.zeros((4, 4, 5, 7))
  conv = lambda x, w: jax.lax.conv_general_dilated(  # noqa: E731
      x, w, (2, 2), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
  assert flops.host_cost(conv, x, w)["flops"] == flops.conv2d_flops(4, 15, 17, 5, 7, (4, 4),
                                                                     (2, 2))
  # A stride-2 convolution of the models (space-to-depth form, `layers.strided_conv`):
  # counted as the plain one, though the program multiplies zero taps too.
  conv = nnx.Conv(5, 7, (3, 3), strides=2, conv_general_dilated=layers.strided_conv,
                  rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(conv)
  apply = lambda p, x: nnx.merge(graphdef, p)(x)  # noqa: E731
  x = jax.random.normal(jax.random.key(0), (4, 16, 18, 5))
  cost = flops.host_cost(apply, params, x)
  by_hand = flops.conv2d_flops(4, 16, 18, 5, 7, (3, 3), (2, 2))
  assert by_hand <= cost["flops"] <= by_hand + 4 * 8 * 9 * 7  # + the bias
  assert cost["executed_flops"] > 1.5 * by_hand
  with layers.textbook_forms():
    textbook = apply(params, x)
  np.testing.assert_allclose(textbook, apply(params, x), atol=1e-5)
  # The reference CNN: convolutions and the head by hand; XLA adds the element-wise
  # work (BatchNorm, ReLU, pooling), a few percent here.
  n, side, feats = 8, 16, (8, 16, 32)
  graphdef, params = nnx.split(CNNClassifier(3, 2, features=feats, rngs=nnx.Rngs(0)))
  counted = flops.host_cost(lambda p, x: nnx.merge(graphdef, p)(x), params,
                            jnp.zeros((n, side, side, 3)))["flops"]
  by_hand, c_in, s = 0, 3, side
  for i, f in enumerate(feats):
    by_hand += flops.conv2d_flops(n, s, s, c_in, f, (3, 3))
    c_in, s = f, s // 2 if i < len(feats) - 1 else s
  by_hand += flops.dense_flops(n, c_in, 2)
  assert by_hand <= counted <= 1.1 * by_hand


@pytest.mark.slow
def test_layer_forms_smoke(tmp_path):
  from benchmarks import layer_forms
  out = tmp_path / "layer_forms.json"
  result = layer_forms.main(["--smoke", "--out", str(out)])
  (row,) = json.loads(out.read_text())["results"]
  assert set(row["g_loss"]) == set(layer_forms.FORMS)
  for loss in row["g_loss"].values():
    assert loss == pytest.approx(row["g_loss"]["models"], rel=1e-5)
  assert all(len(v) == 2 for v in row["ms_per_step_rounds"].values())
  assert set(result["results"][0]["over_models"]) == set(layer_forms.FORMS) - {"models"}


def test_every_command_of_the_accelerator_script_parses(monkeypatch):
  """The script runs only where an accelerator is lent: a flag that a benchmark does not
  take must show up here, not there. Each `run` line's arguments go through the
  benchmark's own parser, which then stops it."""
  import argparse
  import importlib
  import os
  import shlex

  class Parsed(Exception):
    pass

  parse_args = argparse.ArgumentParser.parse_args

  def parse_only(self, args=None, namespace=None):
    parse_args(self, args, namespace)  # a bad flag exits here
    raise Parsed

  monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_only)
  script = os.path.join(os.path.dirname(step_time.__file__), "run_accelerator.sh")
  with open(script) as f:
    lines = [shlex.split(line) for line in f if line.startswith("run ")]
  assert len(lines) >= 6
  for _, limit, name, module, *args in lines:
    assert int(limit) > 0 and name
    with pytest.raises(Parsed):
      importlib.import_module(module).main(args + ["--smoke", "--out", "unused.json"])


def test_the_accelerator_benchmarks_import_without_the_data_packages():
  """The accelerator machines have jax, flax and optax but not grain, TFDS or torch."""
  import os
  import subprocess
  import sys

  script = """
import importlib.abc, sys
class Absent(importlib.abc.MetaPathFinder):
  def find_spec(self, name, path, target=None):
    if name.split(".")[0] in {"grain", "tensorflow_datasets", "torch"}:
      raise ImportError(name + " is not installed here")
sys.meta_path.insert(0, Absent())
for module in sys.argv[1:]:
  __import__(module)
"""
  modules = ["benchmarks.step_time", "benchmarks.profile_step", "benchmarks.layer_forms",
             "benchmarks.explain_throughput", "benchmarks.optimiser_throughput"]
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  subprocess.run([sys.executable, "-c", script, *modules], cwd=root, check=True, timeout=120,
                 env={**os.environ, "PYTHONPATH": root})


@pytest.mark.slow
def test_population_and_one_device_jit_smoke():
  from benchmarks import one_device_jit, population
  pop = population.main(["--smoke", "--modes", "loop", "map"])
  assert set(pop["results"]) == {"separate", "loop", "map"}
  assert all(r["ratio_to_separate"] > 0 for k, r in pop["results"].items() if k != "separate")
  jit = one_device_jit.main(["--smoke"])
  assert jit["results"]["plain"]["ratio_to_plain"] == 1.0
  assert set(jit["results"]) == {"plain", "mesh_shardings", "set_mesh"}
