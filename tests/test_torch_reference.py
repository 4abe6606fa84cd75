"""The PyTorch twin used by the benchmarks computes what the JAX networks and step do."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from benchmarks import torch_reference as tr  # noqa: E402


@pytest.fixture(scope="module")
def report():
  torch.set_num_threads(1)   # tiny networks: threads only add contention
  return tr.check_against_jax(image_size=16, channels=3, per_class=4, steps=2)


def test_parameter_counts_match(report):
  assert report["params_torch"] == report["params_jax"]


def test_forward_passes_match(report):
  for name in ("generator", "discriminator", "classifier"):
    assert report[name] < 1e-5, (name, report[name])


def test_train_step_losses_match(report):
  """Every loss term of two steps, so the second also checks both Adam updates."""
  for step in report["steps"]:
    assert step["max_loss_diff"] < 1e-4, step
    assert abs(step["g_loss_jax"] - step["g_loss_torch"]) < 1e-4, step
  assert report["params_after_steps"] < 1e-4


def test_same_padding_is_lax_padding():
  """Stride 2 on an even size pads only after; on an odd size both sides."""
  assert tr._same_pads(16, 3, 2) == (0, 1)
  assert tr._same_pads(7, 3, 2) == (1, 1)
  assert tr._same_pads(16, 3, 1) == (1, 1)


def test_compare_driver_smoke(tmp_path):
  """Alternating JAX/torch rounds: one ratio per pair, parameter counts checked."""
  import json

  from benchmarks import compare_torch
  out = tmp_path / "compare.json"
  compare_torch.main(["--smoke", "--out", str(out)])
  (row,) = json.loads(out.read_text())["results"]
  assert set(row["ratios"]) == {"jax-float32 / torch-eager"}
  assert all(len(v) == 2 for v in row["ms_per_step_rounds"].values())
  assert row["ratios"]["jax-float32 / torch-eager"]["median"] > 0
  assert row["steps_per_round"] == 1 and row["rounds"] == 2


def test_compare_driver_steps_per_size():
  """--steps takes one count for every size or one per size, nothing else."""
  from benchmarks import compare_torch
  with pytest.raises(SystemExit):
    compare_torch.main(["--sizes", "16x3", "--steps", "1", "2"])
