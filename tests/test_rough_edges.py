"""What a new user meets first: saved settings that come back, figures of any value
range, errors that name the cause and the fix, help text and progress."""

from __future__ import annotations

import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import linear_logits, model_config

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


# Figures ------------------------------------------------------------------------------

def _drawn_input(images, explanation, **kwargs) -> np.ndarray:
  """The input panel of the first row, as imshow holds it (in [0, 1])."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(1, 3)
  explanation.plot(images, axes, **kwargs)
  drawn = np.asarray(axes[0].images[0].get_array())
  plt.close(fig)
  return drawn


@pytest.mark.parametrize("uint8", [True, False])
def test_plot_draws_images_in_their_value_range(uint8, tmp_path):
  rng = np.random.default_rng(0)
  pixels = rng.integers(0, 200, (2, 8, 8, 3)).astype(np.uint8)
  images = pixels if uint8 else pixels.astype(np.float32)
  out = cfx_jax.Explanation(maps=np.ones((2, 8, 8), np.float32),
                            target=np.array([1, 0], np.int32),
                            probs=np.array([[0.9, 0.1], [0.2, 0.8]], np.float32),
                            counterfactual=images)
  kwargs = {} if uint8 else {"value_range": (0, 255)}
  drawn = _drawn_input(images, out, **kwargs)
  assert drawn.max() < 1.0  # not a blank white panel
  np.testing.assert_allclose(drawn, pixels[0] / 255.0, atol=1e-6)
  if not uint8:
    with pytest.raises(ValueError, match=r"must lie in \[-1, 1\]"):
      out.plot(images, tmp_path / "figure.png")


# Errors that name the cause and the fix -----------------------------------------------

def test_images_without_channel_axis_are_named(images):
  grey = images[..., 0]  # (N, H, W)
  with pytest.raises(ValueError, match=r"add a channel axis with images\[\.\.\., None\]"):
    cfx_jax.fit_explainer(linear_logits, grey, method="syce", steps=2, batch_size=8,
                          config=model_config())
  e = cfx_jax.fit_explainer(linear_logits, grey[:8, ..., None], method="fido", config=FIDO)
  with pytest.raises(ValueError, match=r"Add one with images\[\.\.\., None\]"):
    e.explain(grey[:5])


def test_channels_first_images_are_named(images):
  nchw = images.transpose(0, 3, 1, 2)
  with pytest.raises(ValueError, match=r"look channels-first \(N, C, H, W\).*"
                                       r"transpose\(0, 2, 3, 1\)"):
    cfx_jax.fit_explainer(linear_logits, nchw, method="fido", config=FIDO)
  e = cfx_jax.fit_explainer(linear_logits, images[:8], method="fido", config=FIDO)
  with pytest.raises(ValueError, match=r"look channels-first \(C, H, W\)"):
    e.explain(nchw[0])


def test_linen_module_that_needs_train_is_named(images):
  from flax import linen as nn

  class Net(nn.Module):
    @nn.compact
    def __call__(self, x, train):
      x = nn.Dense(2)(jnp.mean(x, axis=(1, 2)))
      return nn.Dropout(0.5, deterministic=not train)(x)

  net = Net()
  variables = net.init(jax.random.key(0), images[:2], train=False)
  with pytest.raises(TypeError, match=r"needs `train`.*lambda variables, x: "
                                      r"model\.apply\(variables, x, train=False\)"):
    cfx_jax.fit_explainer(net, images, method="fido", config=FIDO, variables=variables)
  # The function the message suggests is accepted.
  clf = cfx_jax.as_classifier(lambda v, x: net.apply(v, x, train=False), images.shape[1:],
                              variables=variables)
  assert clf.num_classes == 2


@pytest.mark.parametrize("method", ["gradient", "integrated_gradients"])
def test_fitting_a_baseline_points_to_explain_baseline(images, method):
  with pytest.raises(ValueError, match=rf"explain_baseline\('{method}', classifier, images\)"):
    cfx_jax.fit_explainer(linear_logits, images, method=method)


# Help text ----------------------------------------------------------------------------

def test_explain_has_help_text(images):
  import inspect

  protocol = inspect.getdoc(cfx_jax.Explainer.explain) or ""
  assert "target" in protocol and "Returns" in protocol
  assert "load_explainer" in (inspect.getdoc(cfx_jax.Explainer.save) or "")
  e = cfx_jax.fit_explainer(lambda x: linear_logits(2.0 * x - 1.0), (images + 1.0) / 2.0,
                            method="fido", config=FIDO, value_range=(0, 1))
  assert isinstance(e, cfx_jax.api.InCallerSpace)
  text = inspect.getdoc(e.explain) or ""
  assert "caller's value range" in text and "Returns" in text
  assert "ids: integers that seed" in text  # FIDO's own explain, below the wrapper's
  assert "ids" in inspect.signature(e.explain).parameters
  assert "load_explainer" in (inspect.getdoc(e.save) or "")
  np.testing.assert_allclose(e.explain(images[:2] * 0.5 + 0.5, ids=[3, 4]).maps,
                             e.inner.explain(images[:2], ids=[3, 4]).maps, atol=1e-5)


# Progress -----------------------------------------------------------------------------

DISC = {"bn": 0.0, "manifold": 0.0, "fit_steps": 2, "steps": 2, "confidence": (0.6,),
        "inr_frequencies": 8, "inr_width": 16, "warn_failures": False}


@pytest.mark.parametrize("method, config", [("fido", FIDO), ("disc", DISC)])
def test_explain_shows_progress_without_logging_setup(images, capsys, monkeypatch, method,
                                                      config):
  e = cfx_jax.fit_explainer(linear_logits, images, method=method,
                            config={**config, "progress": True, "chunk_size": 4})
  capsys.readouterr()
  e.explain(images[:6])
  err = capsys.readouterr().err
  assert f"[{method.upper()}] images 4/6" in err and f"[{method.upper()}] images 6/6" in err
  # On a terminal, a bar.
  monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
  e.explain(images[:6])
  err = capsys.readouterr().err
  assert method.upper() in err and "6/6" in err and "█" in err
