"""Ground-truth counterfactual scores: twins, change outside the evidence, the oracle."""

import dataclasses

import jax
import numpy as np
import pytest

from cfx_jax.data import lesion_twins, make_lesions
from cfx_jax.explanation import Explanation
from cfx_jax.metrics import change_outside, truth_report, twin_removal
from cfx_jax.metrics.truth import edit_concentration
from cfx_jax.metrics import oracle as oracle_lib


@pytest.fixture(scope="module")
def twins():
  return lesion_twins(16, seed=3)


def test_twins_differ_exactly_on_the_mask(twins):
  with_lesion, without, mask = twins
  diff = np.abs(with_lesion - without).sum(-1)
  assert np.all(diff[mask == 0] == 0)
  assert np.all(diff.reshape(16, -1).max(1) > 0)
  # The same images as the labelled renderings of the lesion set.
  np.testing.assert_array_equal(with_lesion, make_lesions(16, seed=3, positive_fraction=1.0)["image"])
  np.testing.assert_array_equal(without, make_lesions(16, seed=3, positive_fraction=0.0)["image"])


def test_removal_is_one_for_the_twin_and_zero_for_the_identity(twins):
  x, x0, m = twins
  np.testing.assert_allclose(twin_removal(x, x0, x0, m), 1.0)
  np.testing.assert_allclose(twin_removal(x, x0, x, m), 0.0)
  np.testing.assert_allclose(change_outside(x, x0, m), 0.0)
  half = x + 0.5 * (x0 - x)
  np.testing.assert_allclose(twin_removal(x, x0, half, m), 0.5, atol=1e-6)


def test_a_tint_on_the_lesion_is_not_a_removal(twins):
  x, x0, m = twins
  tint = np.array([-0.3, 0.2, 0.25], np.float32)
  tinted = np.clip(x + m[..., None] * tint, -1, 1)
  assert np.all(twin_removal(x, x0, tinted, m) < 0.3)


def test_removal_does_not_depend_on_batch_order(twins):
  x, x0, m = twins
  cf = x + 0.3 * (x0 - x) + 0.05 * np.random.default_rng(0).normal(size=x.shape)
  order = np.random.default_rng(1).permutation(len(x))
  np.testing.assert_allclose(twin_removal(x, x0, cf, m)[order],
                             twin_removal(x[order], x0[order], cf[order], m[order]))


def test_shape_mismatch_is_an_error(twins):
  x, x0, m = twins
  with pytest.raises(ValueError, match="cf_batch"):
    twin_removal(x, x0, x[:3], m)


class _ThresholdOracle:
  """Stands in for a trained oracle: class 1 when the image has a bright pixel."""
  test_accuracy = 1.0

  def predict(self, images):
    return (np.asarray(images).max(axis=(1, 2, 3)) > 0.9).astype(np.int32)

  def features(self, images):
    return np.asarray(images).reshape(len(images), -1)[:, :8]


def test_truth_report_scores_true_counterfactuals_perfectly():
  d = make_lesions(24, seed=5, twins=True)
  probs = np.eye(2)[d["label"]]
  out = Explanation(maps=np.zeros(d["mask"].shape), target=1 - d["label"],
                    probs=probs, counterfactual=d["twin"], cf_probs=probs[:, ::-1])
  r = truth_report(d, out, _ThresholdOracle())
  assert r["twin_removal_median"] == pytest.approx(1.0)
  assert r["change_outside_evidence"] == pytest.approx(0.0)
  assert r["twin_images"] == int(d["label"].sum())
  assert set(r["oracle_agreement_by_direction"]) == {"0->1", "1->0"}
  assert "fid" in r["oracle_realism"]
  assert r["added_concentration_median"] == pytest.approx(1.0)
  # Nothing added anywhere: the concentration is undefined and left out, not NaN.
  negative = d["label"][:, None, None, None] == 0
  unchanged = dataclasses.replace(
      out, counterfactual=np.where(negative, d["image"], d["twin"]))
  assert "added_concentration_median" not in truth_report(d, unchanged, _ThresholdOracle())


def test_concentration_is_one_for_a_drawn_spot_and_low_for_stripes(twins):
  x, x0, m = twins
  # Adding the true lesion (the twin read backwards) is one lesion-sized spot.
  np.testing.assert_allclose(edit_concentration(x0, x, radius=0.15 * 32), 1.0)
  stripes = x0 + 0.1 * np.sin(np.arange(32) * 1.3)[None, :, None, None]
  assert np.all(edit_concentration(x0, stripes, radius=0.15 * 32) < 0.2)
  two_spots = x0.copy()
  two_spots[:, 2:5, 2:5] += 0.3
  two_spots[:, 26:29, 26:29] += 0.3
  np.testing.assert_allclose(edit_concentration(x0, two_spots, radius=3), 0.5, atol=1e-6)
  assert np.isnan(edit_concentration(x0, x0, radius=3)).all()


def _small_split(seed):
  d = make_lesions(96, seed=seed)
  return {"image": d["image"], "label": d["label"]}


def test_oracle_training_is_deterministic_from_its_seed():
  train, test = _small_split(0), _small_split(1)
  a = oracle_lib.train_oracle(train, test, steps=3, batch_size=16, seed=4)
  b = oracle_lib.train_oracle(train, test, steps=3, batch_size=16, seed=4)
  c = oracle_lib.train_oracle(train, test, steps=3, batch_size=16, seed=5)
  same = jax.tree.map(lambda u, v: np.array_equal(u, v), a.params, b.params)
  assert all(jax.tree.leaves(same))
  assert not all(jax.tree.leaves(jax.tree.map(lambda u, v: np.array_equal(u, v),
                                              a.params, c.params)))


def test_oracle_cache_is_keyed_on_data_and_settings(tmp_path, monkeypatch):
  train, test = _small_split(0), _small_split(1)
  first = oracle_lib.load_or_train_oracle(str(tmp_path), train, test, steps=2, batch_size=16)
  calls = []
  real = oracle_lib.train_oracle
  monkeypatch.setattr(oracle_lib, "train_oracle",
                      lambda *a, **k: calls.append(1) or real(*a, **k))
  again = oracle_lib.load_or_train_oracle(str(tmp_path), train, test, steps=2, batch_size=16)
  assert calls == []
  np.testing.assert_array_equal(first.predict(test["image"]), again.predict(test["image"]))
  # A setting given at its default value is the same oracle (seed 17 is the default).
  oracle_lib.load_or_train_oracle(str(tmp_path), train, test, steps=2, batch_size=16, seed=17)
  assert calls == []
  other = dict(train, image=train["image"][::-1].copy())
  oracle_lib.load_or_train_oracle(str(tmp_path), other, test, steps=2, batch_size=16)
  assert calls == [1]


def test_jitter_changes_colour_but_keeps_shape_and_range():
  from cfx_jax.data.augment import jitter
  x = make_lesions(8, seed=2)["image"]
  y = np.asarray(jitter(jax.random.key(0), x))
  assert y.shape == x.shape and y.min() >= -1 and y.max() <= 1
  assert np.abs(y - x).mean() > 0.02
  grouped = np.asarray(jitter(jax.random.key(0), x.reshape(2, 4, 32, 32, 3)))
  np.testing.assert_allclose(grouped.reshape(x.shape), y, atol=1e-6)
