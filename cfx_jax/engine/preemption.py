"""Stopping a training loop cleanly: SIGTERM (preemption) and non-finite losses.

Shared by every train loop, so a job killed by a scheduler always leaves a checkpoint
and the exit status that means "run me again".
"""

from __future__ import annotations

import signal
import threading

import jax


class NonFiniteError(FloatingPointError):
  """Training produced NaN/inf losses; the last good checkpoint is kept."""


# Exit status of a job stopped by SIGTERM after saving (EX_TEMPFAIL: run it again).
EXIT_PREEMPTED = 75


class Preempted(Exception):
  """SIGTERM arrived; a checkpoint of `step` was written. Rerun the job to resume."""

  def __init__(self, step: int):
    super().__init__(f"stopped by SIGTERM after saving step {step}; rerun to resume")
    self.step = step


class Preemption:
  """Turns SIGTERM into a request to checkpoint and stop at the end of the current step.

  One process: our own handler. Several: orbax's `reached_preemption`, which makes every
  process agree on the same step (the JAX distributed runtime listens for SIGTERM).
  """

  def __init__(self):
    self.signalled = False
    self.previous = None
    if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
      self.previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    self.signalled = True

  def requested(self, ckpts, step: int) -> bool:
    if jax.process_count() > 1 and ckpts is not None:
      return bool(ckpts.manager.reached_preemption(step))
    return self.signalled

  def checkpoint_or_stop(self, ckpts, done: int, steps: int, every: int, state, meta,
                         before_save=None) -> None:
    """End of step `done`: save when due (every `every` steps, the last step, or a stop
    request), then raise `Preempted` if a stop was requested. `ckpts` may be None (no
    work directory); `before_save` runs first (e.g. a check for non-finite values)."""
    stop = self.requested(ckpts, done)
    if ckpts is not None and (done % int(every) == 0 or done == steps or stop):
      if before_save is not None:
        before_save()
      ckpts.save(done, state, meta)
    if stop:
      if ckpts is not None:
        ckpts.wait()
      raise Preempted(done)

  def restore(self) -> None:
    if self.previous is not None:
      signal.signal(signal.SIGTERM, self.previous)
