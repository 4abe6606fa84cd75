"""Run the spurious-marker causal study (cfx_jax.training.causal_study).

    python -m train.causal --config configs/attributes_causal.py --workdir runs/causal_study

Writes causal_scores.{md,json,png} and latent_edits.png to the workdir. Exit status 75
means the job was stopped by SIGTERM after writing a checkpoint: rerun it to resume.
"""

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from cfx_jax.training import runtime
from cfx_jax.training.causal_study import run_spurious_marker_study
from cfx_jax.training.preemption import EXIT_PREEMPTED, Preempted

_CONFIG = config_flags.DEFINE_config_file("config", None, "Study config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for models and reports.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)  # keep checkpointing chatter out of the output
  config = _CONFIG.value
  runtime.setup(config.runtime)
  try:
    run_spurious_marker_study(config, _WORKDIR.value)
  except Preempted as e:
    print(f"preempted: {e}", file=sys.stderr, flush=True)
    sys.exit(EXIT_PREEMPTED)


if __name__ == "__main__":
  app.run(main)
