"""The one train loop: every trained model stops cleanly on SIGTERM, resumes to the same
weights as an uninterrupted run, and falls back from a corrupted newest checkpoint."""

from __future__ import annotations

import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import cfx_jax
from cfx_jax.engine import loop as loop_lib
from cfx_jax.engine.checkpoints import Checkpoints, CheckpointWarning
from cfx_jax.engine.mesh import make_mesh
from cfx_jax.engine.preemption import NonFiniteError, Preempted, Preemption
from conftest import linear_logits, linear_predict, model_config, random_images

STEPS = 4          # checkpoints at 2 and 4


@pytest.fixture(scope="module")
def data():
  images = random_images(32, seed=0)
  return {"image": images, "label": linear_predict(images)}


def _explainer(data, workdir):
  ex = cfx_jax.fit_explainer(linear_logits, data["image"], steps=STEPS, batch_size=8,
                             workdir=workdir, config=model_config(checkpoint_every=2))
  return ex.gen_params


def _cae(data, workdir):
  from cfx_jax.methods.cae.explainer import cae_config, training_config
  from cfx_jax.methods.cae import train as cae_train
  c = training_config(cae_config(
      steps=STEPS, batch_size=8, num_devices=1, progress=False, log_every=1,
      checkpoint_every=2, model={"features": (8, 16), "content_channels": 8,
                                 "mlp_width": 16, "disc_features": (8, 16),
                                 "style_dim": 4}))
  return cae_train.train_cae(data["image"], data["label"], c, workdir).params


def _inpainter(data, workdir):
  from cfx_jax.methods.fido import inpainter_train
  c = inpainter_train.inpainter_config()
  c.steps, c.batch_size, c.num_devices, c.progress = STEPS, 8, 1, False
  c.log_every, c.checkpoint_every = 1, 2
  c.model.features, c.model.disc_features = (8, 16), (8, 16)
  return inpainter_train.train_inpainter(data["image"], c, workdir).params


def _latent_vae(data, workdir):
  from cfx_jax.methods.latent.config import latent_config
  from cfx_jax.methods.latent.fitting import train_vae
  cfg = latent_config(latent_dim=4, vae_features=(8, 16), vae_steps=STEPS, batch_size=8,
                      progress=False, log_every=1, checkpoint_every=2)
  return train_vae(data["image"], cfg, workdir)[1]


def _classifier(data, workdir):
  from cfx_jax.jobs.classifier_training import classifier_config, train_classifier
  c = classifier_config()
  c.features, c.steps, c.batch_size, c.num_devices = (8, 16), STEPS, 8, 1
  c.progress, c.log_every, c.checkpoint_every = False, 1, 2
  return train_classifier(c, data, data, workdir)[0].params


def _auxiliary(data, workdir):
  from cfx_jax.methods.disc.auxiliary import auxiliary_config, train_auxiliary
  c = auxiliary_config(features=(8, 8, 8), steps=STEPS, batch_size=8, log_every=1,
                       checkpoint_every=2)
  return train_auxiliary(c, data, None, workdir)[0].params


def _autoencoder(data, workdir):
  from cfx_jax.metrics import train_autoencoder
  return train_autoencoder(data["image"], steps=STEPS, batch_size=8, code_dim=4,
                           workdir=workdir, log_every=1, checkpoint_every=2).params


def _oracle(data, workdir):
  from cfx_jax.metrics.oracle import train_oracle
  return train_oracle(data, data, steps=STEPS, batch_size=8, progress=False,
                      workdir=workdir, checkpoint_every=2).params


TRAINERS = {"explainer": _explainer, "cae": _cae, "inpainter": _inpainter,
            "latent_vae": _latent_vae, "classifier": _classifier, "auxiliary": _auxiliary,
            "autoencoder": _autoencoder, "oracle": _oracle}


def _assert_same(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


class _SigtermAfterStep2(Preemption):
  """SIGTERM arrives during step 2 (the handler is called as the signal would call it;
  test_scaling.py sends a real one to a real job)."""

  def checkpoint_or_stop(self, ckpts, done, *args, **kwargs):
    if done == 2:
      self._handle(signal.SIGTERM, None)
    return super().checkpoint_or_stop(ckpts, done, *args, **kwargs)


def _corrupt_newest_checkpoint(workdir):
  newest = [os.path.join(root, "state") for root, dirs, _ in os.walk(workdir)
            if os.path.basename(root) == str(STEPS) and "state" in dirs]
  assert len(newest) == 1, newest
  for root, _, files in os.walk(newest[0]):
    for f in files:
      with open(os.path.join(root, f), "r+b") as fh:
        fh.truncate(max(os.path.getsize(fh.name) // 3, 1))


@pytest.mark.parametrize("name", sorted(TRAINERS))
def test_sigterm_resume_and_corrupt_checkpoint(name, data, tmp_path, monkeypatch):
  """Stopped by SIGTERM after step 2, rerun: the same weights as a run never stopped.
  Then the newest checkpoint is corrupted: the rerun falls back to step 2 and again
  reaches the same weights."""
  train, cut = TRAINERS[name], str(tmp_path / "cut")
  straight = train(data, str(tmp_path / "straight"))
  with monkeypatch.context() as m:
    m.setattr(loop_lib, "Preemption", _SigtermAfterStep2)
    with pytest.raises(Preempted, match="after saving step 2"):
      train(data, cut)
  handler = signal.getsignal(signal.SIGTERM)
  assert not isinstance(getattr(handler, "__self__", None), Preemption), "handler restored"
  _assert_same(train(data, cut), straight)
  _corrupt_newest_checkpoint(cut)
  with pytest.warns(CheckpointWarning, match=f"checkpoint {STEPS} .* previous"):
    _assert_same(train(data, cut), straight)


# The loop itself, on a quadratic -------------------------------------------------------


def _quadratic(workdir, *, steps=6, lr=0.1, meta=None, **loop):
  def step(state, target):
    grad = 2 * (state["w"] - target)
    loss = jnp.sum((state["w"] - target) ** 2)
    return {"w": state["w"] - lr * grad, "step": state["step"] + 1}, {"loss": loss}

  state = {"w": jnp.zeros(3), "step": jnp.zeros((), jnp.int32)}
  cfg = loop_lib.LoopConfig("quadratic", steps, log_every=1, checkpoint_every=2,
                            progress=False, **loop)
  return loop_lib.train_loop(state, jax.jit(step), lambda i: jnp.full(3, float(i % 3)), cfg,
                             mesh=make_mesh(1), workdir=workdir,
                             meta=meta or {"config": {"model": {"width": 3}}})


def test_loop_logs_every_step_once_across_a_resume(tmp_path):
  _quadratic(str(tmp_path), steps=4)
  state, log = _quadratic(str(tmp_path), steps=6)
  assert [row["step"] for row in log.history] == [5, 6]
  with open(tmp_path / "quadratic_train.jsonl") as f:
    assert [int(line.split('"step": ')[1].split(",")[0]) for line in f] == [1, 2, 3, 4, 5, 6]
  straight, _ = _quadratic(None, steps=6)
  _assert_same(state, straight)


def test_loop_refuses_another_model_or_fewer_steps(tmp_path):
  _quadratic(str(tmp_path), steps=4)
  with pytest.raises(ValueError, match="made for the model"):
    _quadratic(str(tmp_path), meta={"config": {"model": {"width": 4}}})
  with pytest.raises(ValueError, match="at step 4, past the 2 steps"):
    _quadratic(str(tmp_path), steps=2)


def test_loop_stops_on_nonfinite_loss_and_keeps_the_good_checkpoint(tmp_path):
  with pytest.raises(NonFiniteError, match="quadratic losses .*loss.* non-finite"):
    _quadratic(str(tmp_path), steps=20, lr=1e30)
  ckpts = Checkpoints(str(tmp_path / "quadratic_checkpoints"))
  assert ckpts.latest_step() is not None
  w = ckpts.restore({"w": jnp.zeros(3), "step": jnp.zeros((), jnp.int32)})["w"]
  ckpts.close()
  assert np.all(np.isfinite(np.asarray(w)))
