"""The train state of a model with one network and one optimizer: a dict the loop can
checkpoint and resume ({"params", "opt", "step"} plus any non-trained collections such
as BatchNorm statistics). The GAN-style models keep their own two-network state."""

from __future__ import annotations

import jax.numpy as jnp
import optax


def init(params, tx: optax.GradientTransformation, **extra) -> dict:
  return {"params": params, "opt": tx.init(params), "step": jnp.zeros((), jnp.int32), **extra}


def apply_gradients(state: dict, tx: optax.GradientTransformation, grads, **replace) -> dict:
  """One optimizer step; `replace` overrides other entries (e.g. new BatchNorm stats)."""
  updates, opt = tx.update(grads, state["opt"], state["params"])
  return {**state, **replace, "params": optax.apply_updates(state["params"], updates),
          "opt": opt, "step": state["step"] + 1}
