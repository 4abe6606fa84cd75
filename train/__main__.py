"""Run an experiment config: train the classifier, then fit and evaluate an explainer.

    python -m train --config configs/lesions_syce.py --workdir runs/lesions
    python -m train --config configs/lesions_syce.py --workdir runs/x --config.explainer.steps=2000
"""

from absl import app, flags, logging
from ml_collections import config_flags

from cfx_jax.training.jobs import train_and_evaluate

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints and reports.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)  # keep checkpointing chatter out of the output
  train_and_evaluate(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  app.run(main)
