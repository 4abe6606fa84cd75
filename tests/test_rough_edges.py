"""What a new user meets first: saved settings that come back, figures of any value
range, errors that name the cause and the fix, help text and progress."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from conftest import linear_logits

import cfx_jax

# FIDO trains nothing in `fit`, and two steps of two samples explain in a second.
FIDO = {"samples": 2, "steps": 2, "warn_failures": False, "progress": False}


def _probabilities(images):
  return jax.nn.softmax(linear_logits(images), axis=-1)


def _same_explanation(a, b):
  for name in ("maps", "target", "probs", "counterfactual", "cf_probs"):
    np.testing.assert_allclose(getattr(b, name), getattr(a, name), rtol=1e-6, atol=1e-6,
                               err_msg=name)


# Persistence --------------------------------------------------------------------------

def test_probabilities_explainer_loads_back(images, tmp_path):
  e = cfx_jax.fit_explainer(_probabilities, images, method="fido", config=FIDO,
                            outputs="probabilities")
  path = str(tmp_path / "saved")
  e.save(path)
  loaded = cfx_jax.load_explainer(path, _probabilities)
  assert loaded.outputs == "probabilities"
  _same_explanation(e.explain(images[:3]), loaded.explain(images[:3]))
  # The kind may be given again, or overridden.
  again = cfx_jax.load_explainer(path, _probabilities, outputs="probabilities")
  _same_explanation(e.explain(images[:3]), again.explain(images[:3]))
  with pytest.raises(ValueError, match="look like probabilities"):
    cfx_jax.load_explainer(path, _probabilities, outputs="logits")

