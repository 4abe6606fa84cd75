"""Several explainers of one method trained at once: a population.

Members that share their networks' structure, optimiser, step count and batch size (a
group, `group_key`) differ only in loss weights and seed. Their train states are stacked
on a leading axis and one compiled step updates them all, on the same batches; the
weights that differ between members enter the step as arrays (`gan.make_train_step`'s
`traced`), so one program serves the whole group.

How the step runs the members (`resolve_mode`): "vmap" batches them into one program
whose convolutions carry a member axis, which fills an accelerator that one small
explainer leaves mostly idle; "map" runs them one after another inside one program
(`lax.map`); "loop" keeps one state per member and calls one compiled member step for
each in turn: one compilation for the group, the batches and the classifier shared. On
XLA:CPU both one-program forms were more than twice as slow as the members fitted apart
(docs/selection.md), so "auto" loops on the CPU and vmaps elsewhere.
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np

from cfx_jax.methods.conditional import get_recipe

# Settings that members of one group may not differ in: everything but `seed` and the
# loss weights (`weights`; `prior` changes the program, so it stays shared).
_PER_MEMBER = ("seed", "weights")
MODES = ("auto", "vmap", "map", "loop")


def group_key(config) -> str:
  """A canonical string of what one compiled population step must share."""
  d = config.to_dict()
  shared = {k: v for k, v in d.items() if k not in _PER_MEMBER}
  shared["prior_weight"] = float(d.get("weights", {}).get("prior", 0.0))
  return json.dumps(shared, sort_keys=True, default=str)


def traced_weights(configs, num_classes: int) -> dict[str, np.ndarray]:
  """{weight: (K,) values} for every loss weight that differs between the members (a
  weight a config does not set has the method's default); weights all members share
  stay Python numbers in the step (a group of one is the plain step)."""
  if len(configs) < 2:
    return {}
  keys = {group_key(c) for c in configs}
  if len(keys) > 1:
    raise ValueError("population members may differ only in their loss weights and seed; "
                     "group the others apart (population.group_key)")
  method = get_recipe(configs[0].method)
  weights = [method.weights(num_classes, dict(c.weights)) for c in configs]
  out = {}
  for name in sorted(set().union(*weights)):
    values = [w.get(name, 0.0) for w in weights]
    if name != "prior" and len(set(float(v) for v in values)) > 1:
      out[name] = np.asarray(values, np.float32)
  return out


def stack(states, mode: str):
  """The population's state in the form its step takes (see `population_step`)."""
  if resolve_mode(mode) == "loop":
    return tuple(states)
  return jax.tree.map(lambda *a: jnp.stack(a), *states)


def unstack(state, size: int) -> list:
  if isinstance(state, tuple):
    return list(state)
  return [jax.tree.map(lambda a: a[i], state) for i in range(size)]


def resolve_mode(mode: str) -> str:
  if mode not in MODES:
    raise ValueError(f"population_mode must be one of {MODES}, got {mode!r}")
  if mode == "auto":
    return "loop" if jax.default_backend() == "cpu" else "vmap"
  return mode


def population_step(step, traced: dict, mode: str):
  """`step(state, frozen, images, traced)` of one member -> the same signature without
  `traced` for the population's state (stacked for "vmap" and "map", a tuple of member
  states for "loop", whose `step` is the compiled member step): every member on the same
  batch, member i with `traced[name][i]`. Metrics come back with a leading member axis."""
  weights = {k: jnp.asarray(v) for k, v in traced.items()}
  mode = resolve_mode(mode)
  if mode == "loop":
    members = [{k: v[i] for k, v in weights.items()} for i in range(len(next(iter(
        weights.values()))))] if weights else None

    def run(states, frozen, images):
      out = [step(s, frozen, images, members[i] if members else {})
             for i, s in enumerate(states)]
      return tuple(s for s, _ in out), jax.tree.map(lambda *m: jnp.stack(m),
                                                     *[m for _, m in out])
  elif mode == "vmap":
    def run(state, frozen, images):
      return jax.vmap(step, in_axes=(0, None, None, 0))(state, frozen, images, weights)
  else:
    def run(state, frozen, images):
      return jax.lax.map(lambda a: step(a[0], frozen, images, a[1]), (state, weights))
  return run


def member_history(history: list[dict], index: int, size: int) -> list[dict]:
  """Member `index`'s rows of a metrics log whose values are per-member lists."""
  if size == 1:
    return history
  return [{k: (v[index] if isinstance(v, list) and len(v) == size else v)
           for k, v in row.items()} for row in history]
