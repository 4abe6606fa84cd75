"""The one train loop every trained model runs on.

A model supplies its initial state, a jitted `step(state, batch) -> (state, metrics)` and
the global batch of each step; the loop owns everything a long job needs around that:
resume from the newest good checkpoint (refusing one made for another model), metrics
fetched to the host only on logging steps, a stop on non-finite losses that keeps the
last good checkpoint, a checkpoint on SIGTERM with the "run me again" exit, and a
progress line. The step is the iterator state: batch `i` is a pure function of `i`, so a
resumed run sees the same batches as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Any, Callable

import jax
import numpy as np

from cfx_jax.engine import mesh as mesh_lib
from cfx_jax.engine.checkpoints import Checkpoints, all_finite
from cfx_jax.engine.logging import MetricsLog, Progress, is_main_process
from cfx_jax.engine.preemption import NonFiniteError, Preemption

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class LoopConfig:
  """Where a model's run is written and how often; `name` labels files and messages."""
  name: str
  steps: int
  log_every: int = 100
  checkpoint_every: int = 500
  keep_checkpoints: int = 2
  progress: bool = True
  checkpoint_dir: str | None = None   # default <name>_checkpoints
  metrics_file: str | None = None     # default <name>_train.jsonl
  shown: tuple[str, ...] = ("loss",)  # metrics on the progress line

  @classmethod
  def from_config(cls, name: str, config, steps: int, **fields) -> "LoopConfig":
    """Cadence fields read from a model's ConfigDict (missing ones keep their defaults)."""
    kw = {f: type(getattr(cls, f))(config[f]) for f in
          ("log_every", "checkpoint_every", "keep_checkpoints", "progress") if f in config}
    return cls(name=name, steps=int(steps), **{**kw, **fields})


def step_of(state) -> int:
  """The state's step (a population's members, stacked or a tuple, all share it)."""
  if isinstance(state, tuple):
    state = state[0]
  step = state["step"] if isinstance(state, dict) else state.step
  return int(np.max(mesh_lib.to_host(step)))


def _nonfinite_steps(state):
  """The first non-finite step of a GAN state, or of each member of a population (-1:
  none); None for states that do not record it."""
  members = state if isinstance(state, tuple) else (state,)
  bad = [getattr(m, "nonfinite_step", None) for m in members]
  if any(b is None for b in bad):
    return None
  return np.concatenate([np.ravel(mesh_lib.to_host(b)) for b in bad])


def check_finite(state, metrics: dict | None, name: str, step: int,
                 advice: Callable[[Any], str] | None = None) -> None:
  """States that record their first non-finite step (the GAN states) are checked by it;
  others by their logged metrics. `advice(state)` says what to do instead of the lower
  learning rate suggested by default (a model that knows other causes checks them)."""
  hint = (lambda: advice(state)) if advice else (lambda: "try a lower learning rate")
  bad = _nonfinite_steps(state)
  if bad is not None:
    # A population stops only when every member has: the others train on, and a member
    # that went non-finite keeps its last good state.
    bad = int(np.min(bad))
    if bad >= 0:
      raise NonFiniteError(f"{name} losses became non-finite at step {bad}; training "
                           f"stopped and the last good checkpoint was kept ({hint()})")
  elif metrics is None:  # before a save: never checkpoint a non-finite state
    if not all_finite(state):
      raise NonFiniteError(f"{name} weights became non-finite by step {step}; the last "
                           f"good checkpoint was kept ({hint()})")
  else:
    nonfinite = sorted(k for k, v in metrics.items() if not np.all(np.isfinite(v)))
    if nonfinite:
      raise NonFiniteError(f"{name} losses ({', '.join(nonfinite)}) became non-finite by "
                           f"step {step}; the last good checkpoint was kept ({hint()})")


def check_resumable(saved: dict, meta: dict, *, name: str, where: str, latest: int,
                    steps: int, compare: tuple[str, ...] | None = None) -> None:
  """A work directory resumes only the same model: the `compare` keys of the metadata
  (all but config and layout when None) and the config's `model` must match."""
  keys = compare if compare is not None else [k for k in meta if k not in ("config",
                                                                              "layout")]
  normal = json.loads(json.dumps(meta, default=str))  # tuples read back as lists
  for key in keys:
    if saved.get(key) != normal.get(key):
      raise ValueError(f"{name} checkpoint in {where} was made for other {key} "
                       f"({saved.get(key)}; this run has {normal.get(key)}); use another "
                       "workdir")
  if "config" in meta and "model" in meta["config"]:
    old, new = saved["config"]["model"], normal["config"]["model"]
    if old != new:
      raise ValueError(f"{name} checkpoint in {where} was made for the model {old}, this "
                       f"run asks for {new}; use another workdir")
  if latest > steps:
    raise ValueError(f"{name} checkpoint in {where} is at step {latest}, past the {steps} "
                     "steps asked for; ask for at least that many or use another workdir")


def train_loop(state, step: Callable, batch_at: Callable[[int], Any], loop: LoopConfig, *,
               mesh, workdir: str | None, meta: dict, compare: tuple[str, ...] | None = None,
               check_saved: Callable[[dict], None] | None = None,
               extra_logs: tuple[MetricsLog, ...] = (),
               advice: Callable[[Any], str] | None = None) -> tuple[Any, MetricsLog]:
  """Run `state` from its newest good checkpoint in `workdir` (or from the start) to
  `loop.steps`; returns the final state (still on device) and the metrics log.

  `meta` is saved with every checkpoint; a checkpoint whose metadata differs (see
  `check_resumable`) or that `check_saved(saved_meta)` rejects is refused with an error.
  `extra_logs` are cut back to the resumed step like the metrics log; `advice` is
  `check_finite`'s.
  """
  ckpts = (Checkpoints(os.path.join(workdir, loop.checkpoint_dir or f"{loop.name}_checkpoints"),
                       keep=loop.keep_checkpoints) if workdir else None)
  log = MetricsLog(os.path.join(workdir, loop.metrics_file or f"{loop.name}_train.jsonl")
                   if workdir else None)
  meta = json.loads(json.dumps(meta, default=str))

  def resumable(saved, latest):
    check_resumable(saved, meta, name=loop.name, where=workdir, latest=latest,
                    steps=loop.steps, compare=compare)
    if check_saved is not None:
      check_saved(saved)

  preemption = Preemption()
  try:
    start = 0
    if ckpts is not None:
      restored = ckpts.restore_latest_good(state, resumable)
      if restored is not None:
        state = restored[0]
        start = step_of(state)
        for lg in (log, *extra_logs):
          lg.truncate_after(start)
    if is_main_process() and loop.progress and "layout" in meta:
      logger.info("%s: %s", loop.name, meta["layout"])
    progress = Progress(loop.steps, start, desc=loop.name, enabled=loop.progress)
    with jax.set_mesh(mesh):
      for i in range(start, loop.steps):
        state, metrics = step(state, batch_at(i))
        done = i + 1
        if done % loop.log_every == 0 or done == loop.steps:
          host = mesh_lib.to_host(metrics)
          check_finite(state, host, loop.name, done, advice)
          row = log.write(done, host)
          progress.update(done, {k: row[k] for k in loop.shown if k in row})
        preemption.checkpoint_or_stop(ckpts, done, loop.steps, loop.checkpoint_every, state,
                                      meta, lambda: check_finite(state, None, loop.name, done,
                                                                   advice))
        if ckpts is not None:
          ckpts.seal()  # as soon as orbax is done: a killed run leaves a checkable step
    progress.close()
  finally:
    preemption.restore()
    if ckpts is not None:
      ckpts.close()
  return state, log
