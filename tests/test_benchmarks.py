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
  # On the CPU the host count is the device's own count of the same program; with two
  # steps per dispatch it is still per step.
  assert rows[0]["flops_per_step"] == rows[0]["device_reported_flops_per_step"]
  assert rows[1]["flops_per_step"] == rows[0]["flops_per_step"]


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


def test_host_flop_count_matches_the_layers_by_hand():
  import jax
  import jax.numpy as jnp
  from flax import nnx

  from benchmarks import flops
  from cfx_jax.models import CNNClassifier

  # One convolution, exactly: odd sizes, stride 2, SAME padding (only in-image taps).
  x, w = jnp.zeros((4, 15, 17, 5)), jnp.zeros((4, 4, 5, 7))
  conv = lambda x, w: jax.lax.conv_general_dilated(  # noqa: E731
      x, w, (2, 2), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
  assert flops.host_cost(conv, x, w)["flops"] == flops.conv2d_flops(4, 15, 17, 5, 7, (4, 4),
                                                                     (2, 2))
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

