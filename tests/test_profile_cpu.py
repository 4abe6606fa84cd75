"""The CPU profile traces each XLA thunk back to the JAX primitive and pass it came from."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from benchmarks import profile_cpu

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _conv_loss(w, x):
  y = jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                   dimension_numbers=("NHWC", "HWIO", "NHWC"))
  return jnp.sum(jnp.tanh(y) ** 2)


def test_thunks_of_a_convolution_gradient_name_the_convolution_in_both_passes():
  grad = jax.jit(jax.grad(_conv_loss, argnums=(0, 1)))
  text = grad.lower(jnp.ones((3, 3, 3, 4)), jnp.ones((2, 8, 8, 3))).compile().as_text()
  origins = set(profile_cpu.hlo_origins(text).values())
  assert ("conv_general_dilated", "forward") in origins
  assert ("conv_general_dilated", "backward") in origins
  kinds = {profile_cpu.jax_kind(p) for p, _ in origins}
  assert "convolution" in kinds and "element-wise and reductions" in kinds


def test_kinds_of_layout_ops_on_both_sides():
  assert profile_cpu.jax_kind("transpose_copy_fusion") == "layout and data movement"
  assert profile_cpu.jax_kind("gather") == "layout and data movement"
  assert profile_cpu.jax_kind("select_n") == "element-wise and reductions"
  assert profile_cpu.torch_kind("aten::convolution_backward") == "convolution"
  assert profile_cpu.torch_kind(
      "autograd::engine::evaluate_function: ConvolutionBackward0") == "convolution"
  assert profile_cpu.torch_kind("aten::copy_") == "layout and data movement"


@pytest.mark.slow
def test_profile_smoke(tmp_path):
  """A fresh process, since XLA reads the trace flag when its CPU client starts."""
  pytest.importorskip("torch")
  out = tmp_path / "profile.json"
  env = {**os.environ, "PYTHONPATH": ROOT}
  env.pop("XLA_FLAGS", None)
  subprocess.run([sys.executable, "-m", "benchmarks.profile_cpu", "--smoke", "--out", str(out)],
                 cwd=ROOT, env=env, check=True, timeout=300)
  (row,) = json.loads(out.read_text())["results"]
  for side in ("jax", "torch"):
    shares = [row["kinds"][k][side]["share"] for k in profile_cpu.KINDS]
    assert sum(shares) == pytest.approx(1.0)
    assert row["kinds"]["convolution"][side]["share"] > 0.2, side
    assert row["wall_ms_per_step"][side] > 0
