"""Orbax checkpoints: keep the last N, save asynchronously, restore into an abstract target.

Each checkpoint holds the train state and a JSON `meta` item (what the state was made
for: method, image shape, classifier fingerprint, config), so a work directory is
never resumed with the wrong model. Once orbax has finished writing a step, a manifest
of content hashes (`cfx_jax.integrity`) seals it; a resume skips a step that fails its
hashes or holds non-finite values and takes the previous one, with a warning.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from cfx_jax import integrity

logger = logging.getLogger(__name__)


class Checkpoints:

  def __init__(self, directory: str, *, keep: int = 3, async_save: bool = True):
    self.directory = os.path.abspath(directory)
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                           enable_async_checkpointing=async_save)
    self.manager = ocp.CheckpointManager(self.directory, options=options,
                                         item_names=("state", "meta"))
    self._unsealed: list[int] = []

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state, meta: dict) -> None:
    self.seal(wait=True)  # orbax waits for the previous save here anyway
    if self.manager.save(int(step), args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))):
      self._unsealed.append(int(step))

  def seal(self, wait: bool = False) -> None:
    """Write the manifest of every step orbax has finished writing (all of them after
    waiting, when `wait`), so that a later resume can tell a damaged step."""
    if not self._unsealed:
      return
    if wait:
      self.manager.wait_until_finished()
    elif self.manager.is_saving_in_progress():
      return
    for step in self._unsealed:
      folder = self.step_dir(step)
      if jax.process_index() == 0 and os.path.isdir(folder):  # else: already rotated out
        integrity.write_manifest(folder)
    self._unsealed = []

  def step_dir(self, step: int) -> str:
    return os.path.join(self.directory, str(int(step)))

  def read_meta(self, step: int | None = None) -> dict | None:
    step = self.latest_step() if step is None else step
    if step is None:
      return None
    return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

  def restore_latest_good(self, state_like, check_meta=None):
    """Newest checkpoint that is whole and finite; a broken one is reported and skipped.

    A checkpoint can be truncated or corrupted by a host dying mid-write on a shared
    file system, or by the disk later; the previous one is then the last good state. A
    step without a manifest (its run was killed between orbax's write and the seal, or
    it predates manifests) cannot be checked byte for byte: it is used with a warning if
    it restores and is finite. `check_meta(meta)` may raise to refuse a checkpoint that
    belongs to another model (that error propagates). Returns (state, meta, step), or
    None when there is no checkpoint at all.
    """
    steps = sorted(self.manager.all_steps(), reverse=True)
    # Before any read: a failed read's late errors can race ahead of its exception.
    quiet_late_callbacks()
    for step in steps:
      where = f"checkpoint {step} in {self.directory}"
      damage = integrity.problems(self.step_dir(step))
      if damage and not os.path.exists(os.path.join(self.step_dir(step), integrity.MANIFEST)):
        _warn(f"{where} has no {integrity.MANIFEST}, so its bytes cannot be checked; it "
              "is used if it restores and is finite")
      elif damage:
        self._discard(step, f"is damaged ({'; '.join(damage[:3])})")
        continue
      try:
        meta = self.read_meta(step)
      except Exception as e:  # noqa: BLE001 -- any unreadable checkpoint is skipped
        _warn(f"{where} is unreadable ({type(e).__name__}: {e}); trying the previous one")
        continue
      if check_meta is not None:
        check_meta(meta, step)
      try:
        state = self.restore(state_like, step)
      except Exception as e:  # noqa: BLE001
        _warn(f"{where} failed to restore ({type(e).__name__}: {str(e)[:200]}); trying "
              "the previous one")
        continue
      if not all_finite(state):
        self._discard(step, "holds non-finite values (NaN or inf)")
        continue
      return state, meta, step
    if steps:
      raise RuntimeError(f"no checkpoint in {self.directory} could be restored "
                         f"(tried steps {steps})")
    return None

  def _discard(self, step: int, why: str) -> None:
    """Warn about a bad step and delete it: the resumed run writes that step again (orbax
    saves no step at or below the newest one) and no later resume falls back to it."""
    _warn(f"checkpoint {step} in {self.directory} {why}; removed it and trying the "
          "previous one", stacklevel=4)
    self.manager.delete(step)

  def restore(self, state_like, step: int | None = None):
    """Restore into the shapes, dtypes and shardings of `state_like` (arrays or abstract)."""
    step = self.latest_step() if step is None else step
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state_like)
    out = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract)))
    return out["state"]

  def wait(self) -> None:
    self.seal(wait=True)

  def close(self) -> None:
    self.seal(wait=True)
    self.manager.close()


@jax.jit
def _finite(leaves) -> jax.Array:
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(a)) for a in leaves] or [jnp.bool_(True)]))


def all_finite(tree) -> bool:
  """Whether every float leaf of `tree` is finite (one compiled check, any sharding)."""
  return bool(_finite([a for a in jax.tree.leaves(tree)
                       if jnp.issubdtype(jnp.asarray(a).dtype, jnp.inexact)]))


def quiet_late_callbacks() -> None:
  """Drop the "Event loop is closed" errors of a failed orbax read.

  Orbax runs a restore's reads on an event loop it closes as soon as one read fails;
  tensorstore then completes the other reads into the closed loop, and each one prints
  a traceback (dozens for a large state) after the failure was already reported.
  Only that error, with no object attached, is dropped; everything else is passed on.
  """
  previous = sys.unraisablehook
  if getattr(previous, "_cfx_quiet", False):
    return

  def hook(unraisable):
    e = unraisable.exc_value
    if (unraisable.object is None and isinstance(e, RuntimeError)
        and str(e) == "Event loop is closed"):
      return
    previous(unraisable)

  hook._cfx_quiet = True
  sys.unraisablehook = hook


class CheckpointWarning(UserWarning):
  """A checkpoint was skipped because it could not be read."""


def _warn(message: str, stacklevel: int = 3) -> None:
  warnings.warn(message, CheckpointWarning, stacklevel=stacklevel)
  logger.warning("%s", message)
