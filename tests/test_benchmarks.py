"""The benchmark scripts run (smoke mode) so they cannot rot; no timing is asserted."""

import json

import pytest

from benchmarks import step_time


def test_step_time_smoke(tmp_path):
  out = tmp_path / "step_time.json"
  result = step_time.main(["--smoke", "--out", str(out)])
  assert json.loads(out.read_text())["results"] == json.loads(json.dumps(result["results"]))
  rows = result["results"]
  assert [r["steps_per_dispatch"] for r in rows] == [1, 2]
  for r in rows:
    assert r["ms_per_step_median"] > 0 and r["flops_per_step"] > 0
    assert r["images_per_s"] > 0 and 0 < r["fraction_of_peak"]


def test_explain_throughput_smoke(tmp_path):
  from benchmarks import explain_throughput
  out = tmp_path / "throughput.json"
  result = explain_throughput.main(["--smoke", "--out", str(out)])
  rows = json.loads(out.read_text())["results"]
  assert {r["method"] for r in rows} == (set(explain_throughput.MAKERS)
                                          - set(explain_throughput.OPTIMISERS))
  assert all(r["maps_per_s"] > 0 for r in result["results"])


@pytest.mark.parametrize("method", ["fido", "disc"])
def test_optimiser_throughput_smoke(tmp_path, method):
  from benchmarks import optimiser_throughput
  out = tmp_path / f"{method}.json"
  result = optimiser_throughput.main(["--method", method, "--smoke", "--out", str(out)])
  saved = json.loads(out.read_text())
  assert saved == json.loads(json.dumps(result)) and saved["method"] == method
  for k in ("seconds", "images_per_s", "compile_s"):
    assert saved["batched"][k] > 0 and saved["loop"][k] > 0
  assert saved["loop"]["images_timed"] <= saved["images"]
  # The same optimisation batched and one at a time: equal up to rounding for FIDO;
  # DISC's prior fit amplifies rounding (see the benchmark's docstring).
  assert saved["max_abs_diff"] < (1e-3 if method == "fido" else 2.0)
