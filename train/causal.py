"""Run the spurious-marker causal study (cfx_jax.jobs.causal_study).

    python -m train.causal --config configs/attributes_causal.py --workdir runs/causal_study

Writes causal_scores.{md,json,png} and latent_edits.png to the workdir. Exit status 75
means the job was stopped by SIGTERM after writing a checkpoint: rerun it to resume.
"""


from absl import app, flags
from ml_collections import config_flags

from cfx_jax.cli import console_logging
from cfx_jax.engine import runtime
from cfx_jax.jobs.causal_study import run_spurious_marker_study

_CONFIG = config_flags.DEFINE_config_file("config", None, "Study config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for models and reports.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  with console_logging():
    runtime.run_job(argv, run_spurious_marker_study, _CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  app.run(main)
