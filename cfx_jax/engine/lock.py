"""One writer per work directory: a second process is refused, not interleaved.

Two runs on one folder would write the same checkpoints and logs and crash one of them
deep in orbax. The lock is a file `<workdir>/.lock` created exclusively, holding the
writer's process id and host; it is removed when the writer is done. A lock whose
process no longer runs on this host (a run killed hard) is taken over with a warning.
The same process may take the lock again (a job that fits an explainer inside it).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
import warnings

from cfx_jax.engine.logging import is_main_process
from cfx_jax.engine.workdir import LOCK, WorkdirWarning

_held: dict[str, int] = {}  # lock path -> how many times this process holds it


def holder(path: str) -> dict | None:
  """The pid, host and start time written in the lock, None if it cannot be read."""
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


def _acquire(path: str, workdir: str) -> None:
  me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
  for _ in range(50):
    try:
      fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
      other = holder(path)
      if other is None:  # being written right now, or emptied by a crash
        time.sleep(0.1)
        if holder(path) is None and os.path.exists(path):
          os.remove(path)
        continue
      pid, host = int(other.get("pid", -1)), other.get("host", "?")
      if host == me["host"] and not _alive(pid):
        warnings.warn(f"{workdir} was locked by process {pid} on {host}, which no longer "
                      "runs; taking the lock over", WorkdirWarning, stacklevel=4)
        with contextlib.suppress(FileNotFoundError):
          os.remove(path)
        continue
      raise ValueError(f"{workdir} is in use by process {pid} on host {host}: one run per "
                       f"workdir; wait for it to finish or use another workdir (if that "
                       f"process is gone, delete {path})")
    with os.fdopen(fd, "w") as f:
      json.dump(me, f)
    return
  raise ValueError(f"could not take the lock {path}")


@contextlib.contextmanager
def held(workdir: str | None):
  """Hold the lock of `workdir` (nothing when None, or on other than process 0)."""
  if not workdir or not is_main_process():
    yield
    return
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(os.path.abspath(workdir), LOCK)
  if _held.get(path):
    _held[path] += 1
  else:
    _acquire(path, workdir)
    _held[path] = 1
  try:
    yield
  finally:
    _held[path] -= 1
    if not _held[path]:
      del _held[path]
      other = holder(path)
      if other is not None and other.get("pid") == os.getpid():
        os.remove(path)
