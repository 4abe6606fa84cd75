"""Orbax checkpoints: keep the last N, save asynchronously, restore into an abstract target.

Each checkpoint holds the train state and a JSON `meta` item (what the state was made
for: method, image shape, classifier fingerprint, config), so a work directory is
never resumed with the wrong model.
"""

from __future__ import annotations

import logging
import os
import warnings

import jax
import orbax.checkpoint as ocp

logger = logging.getLogger(__name__)


class Checkpoints:

  def __init__(self, directory: str, *, keep: int = 3, async_save: bool = True):
    self.directory = os.path.abspath(directory)
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                           enable_async_checkpointing=async_save)
    self.manager = ocp.CheckpointManager(self.directory, options=options,
                                         item_names=("state", "meta"))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state, meta: dict) -> None:
    self.manager.save(int(step), args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)))

  def read_meta(self, step: int | None = None) -> dict | None:
    step = self.latest_step() if step is None else step
    if step is None:
      return None
    return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

  def restore_latest_good(self, state_like, check_meta=None):
    """Newest checkpoint that restores; a broken one is reported and skipped.

    A checkpoint can be truncated or corrupted by a host dying mid-write on a shared
    file system; the previous one is then the last good state. `check_meta(meta)` may
    raise to refuse a checkpoint that belongs to another model (that error propagates).
    Returns (state, meta, step), or None when there is no checkpoint at all.
    """
    steps = sorted(self.manager.all_steps(), reverse=True)
    for step in steps:
      try:
        meta = self.read_meta(step)
      except Exception as e:  # noqa: BLE001 -- any unreadable checkpoint is skipped
        _warn(f"checkpoint {step} in {self.directory} is unreadable ({type(e).__name__}: "
              f"{e}); trying the previous one")
        continue
      if check_meta is not None:
        check_meta(meta, step)
      try:
        return self.restore(state_like, step), meta, step
      except Exception as e:  # noqa: BLE001
        _warn(f"checkpoint {step} in {self.directory} failed to restore "
              f"({type(e).__name__}: {str(e)[:200]}); trying the previous one")
    if steps:
      raise RuntimeError(f"no checkpoint in {self.directory} could be restored "
                         f"(tried steps {steps})")
    return None

  def restore(self, state_like, step: int | None = None):
    """Restore into the shapes, dtypes and shardings of `state_like` (arrays or abstract)."""
    step = self.latest_step() if step is None else step
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state_like)
    out = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract)))
    return out["state"]

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


class CheckpointWarning(UserWarning):
  """A checkpoint was skipped because it could not be read."""


def _warn(message: str) -> None:
  warnings.warn(message, CheckpointWarning, stacklevel=3)
  logger.warning("%s", message)
