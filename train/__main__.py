"""Run an experiment config: train the classifier, then fit and evaluate an explainer.

    python -m train --config configs/lesions_syce.py --workdir runs/lesions
    python -m train --config configs/lesions_syce.py --workdir runs/x --config.explainer.steps=2000

Exit status 75 means the job was stopped by SIGTERM after writing a checkpoint: run the
same command again to resume.
"""

from absl import app, flags
from ml_collections import config_flags

from cfx_jax.cli import console_logging
from cfx_jax.engine import runtime
from cfx_jax.jobs.train import train_and_evaluate

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints and reports.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  with console_logging():
    runtime.run_job(argv, train_and_evaluate, _CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  app.run(main)
