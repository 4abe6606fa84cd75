"""Train states the loop can checkpoint and resume.

One network and one optimizer: a dict {"params", "opt", "step"} plus any non-trained
collections such as BatchNorm statistics (`init`, `apply_gradients`). A generator and a
discriminator trained against each other (the conditional generators, CAE, the
in-painter): `GanState`, with the static halves of both networks in `GanModels`."""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax
from flax import nnx


def init(params, tx: optax.GradientTransformation, **extra) -> dict:
  return {"params": params, "opt": tx.init(params), "step": jnp.zeros((), jnp.int32), **extra}


def apply_gradients(state: dict, tx: optax.GradientTransformation, grads, **replace) -> dict:
  """One optimizer step; `replace` overrides other entries (e.g. new BatchNorm stats)."""
  updates, opt = tx.update(grads, state["opt"], state["params"])
  return {**state, **replace, "params": optax.apply_updates(state["params"], updates),
          "opt": opt, "step": state["step"] + 1}


@flax.struct.dataclass
class GanState:
  step: jax.Array
  gen: Any
  disc: Any
  gen_opt: Any
  disc_opt: Any
  key: jax.Array            # raw uint32 key data, so checkpoints stay plain arrays
  nonfinite_step: jax.Array  # -1 while every step so far was finite


@flax.struct.dataclass
class GanModels:
  """The static halves of the split networks and the optimisers (not in the state)."""
  gen_def: Any = flax.struct.field(pytree_node=False)
  disc_def: Any = flax.struct.field(pytree_node=False)
  gen_tx: Any = flax.struct.field(pytree_node=False)
  disc_tx: Any = flax.struct.field(pytree_node=False)


def optimizer(lr: float, b1: float, b2: float = 0.999) -> optax.GradientTransformation:
  return optax.adam(lr, b1=b1, b2=b2)


def commit_if_finite(state: GanState, finite, **updates) -> GanState:
  """The state after one GAN step: `updates` applied when the step's losses are `finite`
  and every earlier step's were; otherwise the old state, with the index of the first
  non-finite step kept in `nonfinite_step`, so the last good state is never overwritten."""
  ok = finite & (state.nonfinite_step < 0)
  updated = state.replace(**updates)
  return jax.tree.map(lambda a, b: jnp.where(ok, a, b), updated, state).replace(
      step=state.step + 1,
      nonfinite_step=jnp.where(ok | (state.nonfinite_step >= 0), state.nonfinite_step,
                               state.step))


def init_gan(gen, disc, gen_tx: optax.GradientTransformation,
             disc_tx: optax.GradientTransformation, seed: int) -> tuple[GanModels, GanState]:
  """Split a generator and a discriminator (NNX modules) into their static halves and a
  fresh `GanState` at step 0, with the state's key drawn from `seed + 1`."""
  gen_def, gen_params = nnx.split(gen)
  disc_def, disc_params = nnx.split(disc)
  state = GanState(
      step=jnp.zeros((), jnp.int32), gen=gen_params, disc=disc_params,
      gen_opt=gen_tx.init(gen_params), disc_opt=disc_tx.init(disc_params),
      key=jax.random.key_data(jax.random.key(seed + 1)),
      nonfinite_step=jnp.full((), -1, jnp.int32))
  return GanModels(gen_def, disc_def, gen_tx, disc_tx), state
