"""The profiles trace each XLA op (CPU thunk or GPU kernel) back to the JAX primitive and
pass it came from."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import pytest

from benchmarks import profile_cpu, profile_step

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _conv_loss(w, x):
  y = jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                   dimension_numbers=("NHWC", "HWIO", "NHWC"))
  return jnp.sum(jnp.tanh(y) ** 2)


def test_thunks_of_a_convolution_gradient_name_the_convolution_in_both_passes():
  grad = jax.jit(jax.grad(_conv_loss, argnums=(0, 1)))
  text = grad.lower(jnp.ones((3, 3, 3, 4)), jnp.ones((2, 8, 8, 3))).compile().as_text()
  origins = set(profile_step.hlo_origins(text).values())
  assert ("conv_general_dilated", "forward") in origins
  assert ("conv_general_dilated", "backward") in origins
  kinds = {profile_step.jax_kind(p) for p, _ in origins}
  assert "convolution" in kinds and "element-wise and reductions" in kinds


def test_kinds_of_layout_ops_on_both_sides():
  assert profile_step.jax_kind("transpose_copy_fusion") == "layout and data movement"
  assert profile_step.jax_kind("gather") == "layout and data movement"
  assert profile_step.jax_kind("select_n") == "element-wise and reductions"
  assert profile_cpu.torch_kind("aten::convolution_backward") == "convolution"
  assert profile_cpu.torch_kind(
      "autograd::engine::evaluate_function: ConvolutionBackward0") == "convolution"
  assert profile_cpu.torch_kind("aten::copy_") == "layout and data movement"


# An excerpt in the form of a GPU module: cuDNN and cuBLAS calls and a fusion of XLA's own.
_GPU_HLO = """HloModule jit_run, entry_computation_layout={}

%fused_transpose (p: f32[8,4]) -> f32[4,8] {
  %p = f32[8,4]{1,0} parameter(0)
  ROOT %t = f32[4,8]{1,0} transpose(%p), dimensions={1,0}
}

ENTRY %main (a: f32[2,8,8,3], w: f32[3,3,3,4], m: f32[8,4]) -> f32[4,8] {
  %a = f32[2,8,8,3]{3,2,1,0} parameter(0)
  %w = f32[3,3,3,4]{3,2,1,0} parameter(1)
  %m = f32[8,4]{1,0} parameter(2)
  %custom-call.1 = (f32[2,8,8,4]{3,2,1,0}, u8[0]{0}) custom-call(%a, %w), custom_call_target="__cudnn$convBackwardFilter"
  %custom-call.2 = (f32[8,8]{1,0}, s8[4]{0}) custom-call(%m, %m), custom_call_target="__cublas$gemm", metadata={op_name="jit(run)/jvp(dense)/dot_general"}
  ROOT %transpose_fusion = f32[4,8]{1,0} fusion(%m), kind=kLoop, calls=%fused_transpose
}
"""


def test_gpu_library_calls_and_xla_copies_are_named():
  origins = profile_step.hlo_origins(_GPU_HLO)
  assert origins["custom-call.1"] == ("conv_general_dilated", "no metadata")
  assert origins["custom-call.2"] == ("dot_general", "forward")
  assert origins["transpose_fusion"] == ("transpose_fusion", "no metadata")
  assert profile_step.jax_kind(origins["transpose_fusion"][0]) == "layout and data movement"


def test_bytes_of_each_op_are_its_result_and_operands():
  # On the CPU they add up to XLA's own count of the program.
  fn = jax.jit(lambda w, x: _conv_loss(w, x))
  compiled = fn.lower(jnp.ones((3, 3, 3, 4)), jnp.ones((2, 8, 8, 3))).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  assert sum(profile_step.hlo_bytes(compiled.as_text()).values()) == cost["bytes accessed"]
  # A cuDNN call's result is a tuple with its scratch space; parameters move nothing.
  traffic = profile_step.hlo_bytes(_GPU_HLO)
  assert traffic["custom-call.1"] == 4 * (2 * 8 * 8 * 4 + 2 * 8 * 8 * 3 + 3 * 3 * 3 * 4)
  assert traffic["custom-call.2"] == 4 * (8 * 8 + 8 * 4 + 8 * 4) + 4
  assert traffic["transpose_fusion"] == 2 * 4 * 8 * 4 and "m" not in traffic


def _plane(name, *events):
  return SimpleNamespace(name=name, lines=[SimpleNamespace(events=[
      SimpleNamespace(duration_ns=ns, stats=stats) for ns, stats in events])])


def test_traced_ops_come_from_the_device_when_it_has_them_and_from_this_module():
  host = _plane("/host:CPU", (5, [("hlo_op", "fusion.1"), ("hlo_module", "jit_run")]))
  gpu = _plane("/device:GPU:0",
               (7, [("hlo_op", "fusion.1"), ("hlo_module", "jit_run")]),
               (2, [("hlo_op", "fusion.1"), ("hlo_module", "jit_run")]),
               (9, [("hlo_op", "fusion.1"), ("hlo_module", "jit_other")]),
               (4, [("name", "memcpy")]))
  assert profile_step.traced_op_ns([host, gpu], "jit_run") == {"fusion.1": 9}
  assert profile_step.traced_op_ns([host], "jit_run") == {"fusion.1": 5}
  assert profile_step.module_name(_GPU_HLO) == "jit_run"


def _run_module(module, out):
  """A fresh process, since XLA reads the trace flag when its CPU client starts."""
  env = {**os.environ, "PYTHONPATH": ROOT}
  env.pop("XLA_FLAGS", None)
  subprocess.run([sys.executable, "-m", module, "--smoke", "--out", str(out)],
                 cwd=ROOT, env=env, check=True, timeout=300)
  (row,) = json.loads(out.read_text())["results"]
  return row


@pytest.mark.slow
def test_profile_step_smoke(tmp_path):
  row = _run_module("benchmarks.profile_step", tmp_path / "profile.json")
  assert sum(row["kinds"][k]["share"] for k in profile_step.KINDS) == pytest.approx(1.0)
  assert row["kinds"]["convolution"]["share"] > 0.2
  assert sum(row["top_primitives"].values()) <= row["op_ms_per_step"] + 1e-6
  assert sum(row["bytes_kinds"][k]["share"] for k in profile_step.KINDS) == pytest.approx(1.0)
  assert row["hlo_bytes_per_step"] > 0
  assert row["wall_ms_per_step"] > 0


@pytest.mark.slow
def test_profile_cpu_against_torch_smoke(tmp_path):
  pytest.importorskip("torch")
  row = _run_module("benchmarks.profile_cpu", tmp_path / "profile.json")
  for side in ("jax", "torch"):
    shares = [row["kinds"][k][side]["share"] for k in profile_step.KINDS]
    assert sum(shares) == pytest.approx(1.0)
    assert row["kinds"]["convolution"][side]["share"] > 0.2, side
    assert row["wall_ms_per_step"][side] > 0
