"""Process-level setup before any device is touched: multi-host start, compile cache.

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

logger = logging.getLogger(__name__)


def runtime_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.distributed = False
  c.coordinator_address = ml_collections.FieldReference(None, field_type=str)  # host:port
  c.num_processes = ml_collections.FieldReference(None, field_type=int)
  c.process_id = ml_collections.FieldReference(None, field_type=int)
  c.initialization_timeout = 300     # seconds to wait for every process
  c.compilation_cache_dir = ml_collections.FieldReference(None, field_type=str)
  return c


def setup(c: ml_collections.ConfigDict) -> None:
  if c.compilation_cache_dir:
    # Restarts after preemption then load compiled programs instead of recompiling.
    jax.config.update("jax_compilation_cache_dir", os.path.abspath(c.compilation_cache_dir))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
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

  from cfx_jax.engine.preemption import EXIT_PREEMPTED, Preempted

  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  absl_logging.set_verbosity(absl_logging.WARNING)
  setup(config.runtime)
  try:
    job(config, workdir)
  except Preempted as e:
    logger.warning("preempted: %s", e)
    sys.exit(EXIT_PREEMPTED)
