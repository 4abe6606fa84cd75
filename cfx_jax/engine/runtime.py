"""Process-level setup before any device is touched: multi-host start, compile cache.

The commands (`cfx-jax`, `python -m train`) keep compiled programs on disk, so the same
shapes compiled again (a rerun, a resumed job, another seed) are loaded instead:
`runtime.compilation_cache_dir` of the config, else $CFX_JAX_COMPILATION_CACHE, else the
folder JAX was given (JAX_COMPILATION_CACHE_DIR), else $XDG_CACHE_HOME/cfx_jax/jax
(~/.cache/cfx_jax/jax). An empty value, in the config or the variable, turns it off.

A multi-host job (TPU pod slice, several GPU hosts) runs the same command on every
host; `jax.distributed.initialize` connects them. It is called when the config asks for
it or when `CFX_DISTRIBUTED=1`; the coordinator address, process count and id come from
the config or are detected by JAX (TPU pods, SLURM, ...).
"""

from __future__ import annotations

import logging
import os
import socket
import time

import jax
import ml_collections

ENV_FLAG = "CFX_DISTRIBUTED"
CACHE_ENV = "CFX_JAX_COMPILATION_CACHE"

logger = logging.getLogger(__name__)


def runtime_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.distributed = False
  c.coordinator_address = ml_collections.FieldReference(None, field_type=str)  # host:port
  c.num_processes = ml_collections.FieldReference(None, field_type=int)
  c.process_id = ml_collections.FieldReference(None, field_type=int)
  c.initialization_timeout = 300     # seconds to wait for every process
  # None: the default folder (module docstring); "": no cache.
  c.compilation_cache_dir = ml_collections.FieldReference(None, field_type=str)
  # A workdir made with other settings or data is refused with what changed; True starts
  # the stages that changed over, deleting their results (docs/reliability.md).
  c.restart = False
  return c


def compilation_cache_dir(path: str | None = None) -> str:
  """The cache folder that `path` (a config's setting) names; "" when it is off."""
  if path is None:
    path = os.environ.get(CACHE_ENV)
  if path is None:
    path = jax.config.jax_compilation_cache_dir
  if path is None:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    path = os.path.join(base, "cfx_jax", "jax")
  return os.path.abspath(os.path.expanduser(path)) if path else ""


def enable_compilation_cache(path: str | None = None) -> str:
  """Cache compiled programs in `compilation_cache_dir(path)`, the small ones too: JAX
  skips programs compiled in under a second by default, which is most of them on a CPU.
  Thresholds set in the environment are kept. Returns the folder, "" when off."""
  folder = compilation_cache_dir(path)
  if folder:
    jax.config.update("jax_compilation_cache_dir", folder)
    for option, lowest in (("jax_persistent_cache_min_compile_time_secs", 0.0),
                           ("jax_persistent_cache_min_entry_size_bytes", 0)):
      if option.upper() not in os.environ:
        jax.config.update(option, lowest)
  return folder


def setup(c: ml_collections.ConfigDict) -> None:
  enable_compilation_cache(c.compilation_cache_dir)
  if c.distributed or os.environ.get(ENV_FLAG) == "1":
    initialize_distributed(c)


def initialize_distributed(c: ml_collections.ConfigDict) -> None:
  kwargs = {k: c[k] for k in ("coordinator_address", "num_processes", "process_id")
            if c[k] is not None}
  address, process_id = c.coordinator_address, c.process_id
  if address and process_id not in (None, 0):
    # JAX aborts the whole process when the coordinator never answers; say why first.
    wait_for_coordinator(address, c.initialization_timeout)
  jax.distributed.initialize(initialization_timeout=int(c.initialization_timeout), **kwargs)


def wait_for_coordinator(address: str, timeout: float) -> None:
  host, _, port = address.rpartition(":")
  if not host or not port.isdigit():
    raise ValueError(f"coordinator_address must be host:port, got {address!r}")
  deadline = time.monotonic() + timeout
  while True:
    try:
      with socket.create_connection((host, int(port)), timeout=2):
        return
    except OSError as e:
      if time.monotonic() >= deadline:
        raise ConnectionError(f"the coordinator at {address} did not answer within "
                              f"{timeout:g} s ({e}); is process 0 running and is the "
                              "address reachable from this host?") from e
      time.sleep(0.5)


def run_job(argv, job, config: ml_collections.ConfigDict, workdir: str) -> None:
  """The body of a `python -m train...` main: reject stray arguments, quiet absl's
  checkpointing chatter, set up the process, run `job(config, workdir)`. A job stopped
  by SIGTERM after its checkpoint exits with status 75: rerunning it resumes."""
  import sys

  from absl import app
  from absl import logging as absl_logging

  from cfx_jax.engine import lock
  from cfx_jax.engine.preemption import EXIT_PREEMPTED, Preempted

  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  absl_logging.set_verbosity(absl_logging.WARNING)
  setup(config.runtime)
  try:
    with lock.held(workdir):
      job(config, workdir)
  except Preempted as e:
    logger.warning("preempted: %s", e)
    sys.exit(EXIT_PREEMPTED)
