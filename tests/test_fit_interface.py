"""One fit interface for every method: steps, batch_size and seed; config names; the
Explanation's file and figure."""

from __future__ import annotations

import jax
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from conftest import linear_logits, model_config, random_images  # noqa: E402

import cfx_jax  # noqa: E402
from cfx_jax.explanation import Explanation  # noqa: E402
from cfx_jax.methods.fido.explainer import fido_config  # noqa: E402
from cfx_jax.methods.registry import GENERATOR_METHODS  # noqa: E402

STEPS = 2
BATCH = 8
# The settings `steps` and `batch_size` stand for, per method (registry docstring).
STEPS_SETTINGS = {"cae": ("steps",), "disc": ("steps",), "fido": ("steps",),
                  "latent": ("vae_steps", "predictor_steps", "shift_steps"),
                  **{g: ("steps",) for g in GENERATOR_METHODS}}
BATCH_SETTINGS = {"cae": "batch_size", "disc": "chunk_size", "fido": "chunk_size",
                  "latent": "batch_size", **{g: "batch_size" for g in GENERATOR_METHODS}}
# Tiny networks, quiet, one device; whatever each method needs to fit in seconds.
TINY = {
    **{g: model_config() for g in GENERATOR_METHODS},
    "cae": {"num_devices": 1, "progress": False, "log_every": 1, "checkpoint_every": 100,
            "chunk_size": 16, "model": {"features": (8, 16), "content_channels": 8,
                                        "mlp_width": 16, "disc_features": (8, 16),
                                        "style_dim": 4}},
    "disc": {"bn": 0.0, "manifold": 0.0, "fit_steps": 2, "confidence": (0.6,),
             "inr_frequencies": 8, "inr_width": 16, "warn_failures": False,
             "progress": False},
    "fido": {"samples": 2, "warn_failures": False, "progress": False},
    "latent": {"latent_dim": 4, "vae_features": (8, 16), "predictor_features": (8, 16),
               "shift_hidden": (16,), "progress": False, "log_every": 1,
               "checkpoint_every": 100, "chunk_size": 16, "num_samples": 16,
               "warn_failures": False},
}


def _fit(method, images, seed=0, **kwargs):
  kwargs.setdefault("config", TINY[method])
  return cfx_jax.fit_explainer(linear_logits, images, method=method, seed=seed, **kwargs)


def _setting(explainer, name):
  config = explainer.config
  return config[name] if isinstance(config, dict) else getattr(config, name)


class _Stop(Exception):
  """Raised by a stand-in trainer once it has seen the settings it was given."""


FITTED = ("fido", "disc")  # nothing to train: a real fit costs nothing


@pytest.fixture(scope="module")
def fitted(images):
  """method -> its fit with steps=STEPS, batch_size=BATCH, seed 0, made on first use."""
  cache = {}

  def get(method):
    if method not in cache:
      cache[method] = _fit(method, images, steps=STEPS, batch_size=BATCH)
    return cache[method]

  return get


def _settings_at_trainer(method, images, monkeypatch):
  """The settings the method's training receives; the training itself is skipped (the
  seed tests train syce and CAE for real and count the steps run)."""
  seen = {}

  def stand_in(*args, **kwargs):
    seen.update(next(a for a in args if hasattr(a, "to_dict")).to_dict())
    raise _Stop

  if method in GENERATOR_METHODS:
    from cfx_jax.methods.conditional import train as generator_train
    monkeypatch.setattr(generator_train, "train_explainer", stand_in)
  elif method == "cae":
    from cfx_jax.methods.cae import train as cae_train
    monkeypatch.setattr(cae_train, "train_cae", stand_in)
  else:
    from cfx_jax.methods.latent import explainer as latent_explainer
    monkeypatch.setattr(latent_explainer, "load_or_train_generator", stand_in)
  with pytest.raises(_Stop):
    _fit(method, images, steps=STEPS, batch_size=BATCH)
  return seen


def test_the_table_covers_every_method():
  assert set(STEPS_SETTINGS) == set(BATCH_SETTINGS) == set(TINY) == set(cfx_jax.METHODS)


@pytest.mark.parametrize("method", cfx_jax.METHODS)
def test_steps_and_batch_size_are_honoured(fitted, images, method, monkeypatch):
  if method in FITTED:
    explainer = fitted(method)
    settings = {name: _setting(explainer, name)
                for name in STEPS_SETTINGS[method] + (BATCH_SETTINGS[method],)}
  else:
    settings = _settings_at_trainer(method, images, monkeypatch)
  for name in STEPS_SETTINGS[method]:
    assert settings[name] == STEPS
  assert settings[BATCH_SETTINGS[method]] == BATCH


def _params(explainer, method):
  if method in GENERATOR_METHODS:
    return explainer.gen_params
  return explainer.model.params


@pytest.mark.parametrize("method", ["syce", "cae"])
def test_the_seed_decides_the_fit(images, method):
  explainer = _fit(method, images, steps=STEPS, batch_size=BATCH)
  history = explainer.history if method in GENERATOR_METHODS else explainer.model.history
  assert [row["step"] for row in history] == list(range(1, STEPS + 1))  # the steps run
  first = jax.tree.leaves(_params(explainer, method))
  same = jax.tree.leaves(_params(_fit(method, images, steps=STEPS, batch_size=BATCH), method))
  other = jax.tree.leaves(_params(_fit(method, images, seed=1, steps=STEPS, batch_size=BATCH),
                                  method))
  for a, b in zip(first, same):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert any(not np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(first, other))


def test_the_seed_decides_fido_masks(fitted, images):
  first = fitted("fido").explain(images[:4]).maps
  again = _fit("fido", images, steps=STEPS, batch_size=BATCH).explain(images[:4]).maps
  other = _fit("fido", images, seed=1, steps=STEPS, batch_size=BATCH).explain(images[:4]).maps
  np.testing.assert_array_equal(first, again)
  assert not np.array_equal(first, other)


@pytest.mark.parametrize("method", cfx_jax.METHODS)
def test_a_config_that_disagrees_with_a_keyword_raises(images, method):
  steps_name = STEPS_SETTINGS[method][-1]
  with pytest.raises(ValueError, match=f"steps={STEPS} disagrees with config {steps_name}=3"):
    _fit(method, images, steps=STEPS, config={**TINY[method], steps_name: 3})
  batch_name = BATCH_SETTINGS[method]
  with pytest.raises(ValueError, match=f"batch_size={BATCH} disagrees with config "
                                       f"{batch_name}=4"):
    _fit(method, images, batch_size=BATCH, config={**TINY[method], batch_name: 4})


def test_an_agreeing_config_and_a_defaults_configdict_do_not_raise(images):
  e = _fit("fido", images, steps=STEPS, config={**TINY["fido"], "steps": STEPS})
  assert e.config.steps == STEPS
  # A ConfigDict holds every default: only settings changed from them count as set.
  e = _fit("fido", images, steps=3, batch_size=BATCH, config=fido_config(**TINY["fido"]))
  assert e.config.steps == 3 and e.config.chunk_size == BATCH and e.config.samples == 2


@pytest.mark.parametrize("method", cfx_jax.METHODS)
@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_bad_steps_raise(images, method, bad):
  with pytest.raises(ValueError, match="steps must be >= 1"):
    _fit(method, images, steps=bad)


@pytest.mark.parametrize("method", cfx_jax.METHODS)
def test_an_unknown_setting_names_the_nearest(images, method):
  name = STEPS_SETTINGS[method][0]
  typo = name[:-1] + "z"
  with pytest.raises(ValueError, match=f"unknown .*setting '{typo}' \\(did you mean '{name}'"):
    _fit(method, images, config={**TINY[method], typo: 5})


NESTED = [
    ("syce", {"weights": {"l1x": 0.0}}, r"weights setting 'l1x' \(did you mean 'l1'\?\); "
     r"available: \['adv', 'cycle', .*'flip'"),
    ("sagen", {"weights": {"cycle_grad": 0.0}}, r"weights setting 'cycle_grad'.*'stable_prox'"),
    ("cyce", {"model": {"residul": False}}, r"model setting 'residul' \(did you mean 'residual'"),
    ("cae", {"weights": {"recn": 1.0}}, r"weights setting 'recn' \(did you mean 'recon'"),
    ("cae", {"model": {"style_dimm": 4}}, r"model setting 'style_dimm' \(did you mean 'style_dim'"),
]


@pytest.mark.parametrize("method, nested, match", NESTED,
                         ids=[f"{m}-{next(iter(n))}" for m, n, _ in NESTED])
def test_an_unknown_nested_setting_names_the_nearest(images, method, nested, match):
  with pytest.raises(ValueError, match=match):
    _fit(method, images, config={**TINY[method], **nested})


def test_a_configdict_with_an_unknown_name_raises(images):
  c = cfx_jax.explainer_config("syce")
  c.stepz = 5
  with pytest.raises(ValueError, match="did you mean 'steps'"):
    _fit("syce", images, config=c)


def test_progress_is_shown_per_chunk_and_can_be_turned_off(images, capsys):
  e = _fit("fido", images, steps=STEPS, batch_size=BATCH,
           config={**TINY["fido"], "progress": True})
  capsys.readouterr()
  e.explain(images[:10])
  lines = [line for line in capsys.readouterr().err.splitlines() if "[FIDO]" in line]
  assert [line.split(" ")[2] for line in lines] == ["8/10", "10/10"]
  _fit("fido", images, steps=STEPS, batch_size=BATCH).explain(images[:10])
  assert "[FIDO]" not in capsys.readouterr().err


# Explanation files and figures -----------------------------------------------------------

def _explanation(n=5, counterfactual=True):
  rng = np.random.default_rng(0)
  x = random_images(n, seed=1)
  probs = rng.dirichlet(np.ones(2), n).astype(np.float32)
  fields = dict(maps=rng.random((n, 16, 16)).astype(np.float32),
                target=(1 - probs.argmax(-1)).astype(np.int32), probs=probs)
  if counterfactual:
    fields.update(counterfactual=np.clip(x + 0.1, -1, 1),
                  cf_probs=rng.dirichlet(np.ones(2), n).astype(np.float32))
  return x, Explanation(**fields)


@pytest.mark.parametrize("counterfactual", [True, False])
def test_save_load_round_trip(tmp_path, counterfactual):
  _, out = _explanation(counterfactual=counterfactual)
  path = tmp_path / "sub" / "explanation.npz"
  assert out.save(path) == str(path)
  back = Explanation.load(path)
  for name in ("maps", "target", "probs", "counterfactual", "stable", "cf_probs"):
    a, b = getattr(out, name), getattr(back, name)
    if a is None:
      assert b is None
    else:
      assert b.dtype == a.dtype
      np.testing.assert_array_equal(a, b)


def test_load_rejects_other_files(tmp_path):
  path = tmp_path / "other.npz"
  np.savez(path, maps=np.zeros((1, 2, 2)), weights=np.zeros(3))
  with pytest.raises(ValueError, match="not a saved Explanation"):
    Explanation.load(path)


def _is_png(path) -> bool:
  with open(path, "rb") as f:
    return f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_plot_writes_a_png(tmp_path, fitted, images):
  x, out = _explanation(n=12)
  assert _is_png(out.plot(x, tmp_path / "figure.png"))
  x, map_only = _explanation(n=3, counterfactual=False)
  assert _is_png(map_only.plot(x, str(tmp_path / "map_only.png")))
  real = fitted("fido").explain(images[:3])
  assert _is_png(real.plot(images[:3], tmp_path / "real.png"))
  with pytest.raises(ValueError, match="are not the"):
    out.plot(x[:, :8], tmp_path / "wrong.png")


def test_plot_draws_on_given_axes():
  x, out = _explanation(n=4)
  fig, axes = plt.subplots(2, 3)
  assert out.plot(x, axes) is axes
  assert all(ax.images for ax in axes.ravel())
  with pytest.raises(ValueError, match=r"shape \(rows, 3\)"):
    out.plot(x, axes[:, :2])
  single_fig, ax = plt.subplots()
  out.plot(x, ax)
  assert len(ax.images) == 2  # the input in grey and the map over it
  plt.close(fig)
  plt.close(single_fig)
