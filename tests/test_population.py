"""A population: several explainers in one compiled program, each as if fitted alone."""

from __future__ import annotations

import jax
import ml_collections
import numpy as np
import pytest

from cfx_jax.methods.conditional import config as config_lib
from cfx_jax.methods.conditional import population
from cfx_jax.methods.conditional.train import train_group

from conftest import model_config


def _config(seed=0, **weights) -> ml_collections.ConfigDict:
  c = config_lib.explainer_config("syce")
  c.update_from_flattened_dict({f"model.{k}": v for k, v in
                                model_config()["model"].items()})
  c.num_devices, c.progress, c.log_every, c.checkpoint_every = 1, False, 1, 2
  c.steps, c.batch_size, c.seed = 3, 8, seed
  for k, v in weights.items():
    c.weights[k] = v
  return c


# One seed: a population's members see the batches of its first member's seed, so only
# then is member 1 fitted alone on the same batches.
MEMBERS = [dict(seed=0, l1=1.0, flip_margin=0.0, flip_partial=0.0),
           dict(seed=0, l1=3.0, flip_margin=3.0, flip_partial=0.5)]


def _params(explainer):
  return jax.tree.leaves(explainer.gen_params)


@pytest.fixture(scope="module")
def alone(classifier, images):
  return [train_group(classifier, images, [_config(**m)])[0] for m in MEMBERS]


@pytest.mark.parametrize("mode", ["loop", "map", "vmap"])
def test_population_members_equal_separate_fits(classifier, images, alone, mode):
  together = train_group(classifier, images, [_config(**m) for m in MEMBERS],
                         population_mode=mode)
  assert len(together) == 2
  for a, b in zip(alone, together):
    # Adam's first steps move each weight by about the learning rate whatever the
    # gradient's size, so rounding differences show at a fraction of it (1e-4 per step)
    for x, y in zip(_params(a), _params(b)):
      np.testing.assert_allclose(x, y, atol=3e-5)
    assert b.config["weights"]["l1"] == a.config["weights"]["l1"]
    assert [r["g_loss"] for r in b.history] == pytest.approx(
        [r["g_loss"] for r in a.history], rel=1e-4)
  # the members did learn different things
  assert not np.allclose(_params(together[0])[0], _params(together[1])[0])


def test_population_resumes_like_uninterrupted(classifier, images, tmp_path):
  configs = [_config(**m) for m in MEMBERS]
  whole = train_group(classifier, images, configs)
  short = [c.copy_and_resolve_references() for c in configs]
  for c in short:
    c.steps = 2
  train_group(classifier, images, short, str(tmp_path))
  resumed = train_group(classifier, images, configs, str(tmp_path))
  for a, b in zip(whole, resumed):
    for x, y in zip(_params(a), _params(b)):
      np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)


def test_population_refuses_a_changed_member_on_resume(classifier, images, tmp_path):
  configs = [_config(**m) for m in MEMBERS]
  short = [c.copy_and_resolve_references() for c in configs]
  for c in short:
    c.steps = 2
  train_group(classifier, images, short, str(tmp_path))
  configs[1].weights.l1 = 5.0
  with pytest.raises(ValueError, match="population"):
    train_group(classifier, images, configs, str(tmp_path))


def test_members_must_share_structure():
  a, b = _config(), _config()
  b.model.residual = False
  with pytest.raises(ValueError, match="differ only in their loss weights"):
    population.traced_weights([a, b], 2)
  with pytest.raises(ValueError, match="population_mode"):
    population.resolve_mode("parallel")


def test_only_differing_weights_are_traced():
  traced = population.traced_weights([_config(l1=1.0, adv=1.0), _config(l1=2.0, adv=1.0)], 2)
  assert list(traced) == ["l1"]
  np.testing.assert_array_equal(traced["l1"], [1.0, 2.0])
  assert population.traced_weights([_config()], 2) == {}
  # a weight one member leaves at the method's default (SyCE: tv 0) differs from one set
  a, b = _config(), _config(tv=3.0)
  assert "tv" not in a.weights
  np.testing.assert_array_equal(population.traced_weights([a, b], 2)["tv"], [0.0, 3.0])
