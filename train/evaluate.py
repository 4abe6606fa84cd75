"""Score every registered method on one dataset and write a leaderboard.

    python -m train.evaluate --config configs/lesions_leaderboard.py --workdir runs/leaderboard_lesions

Trains what the work directory lacks (classifier, each trained explainer per seed),
then writes leaderboard.md, leaderboard.json, leaderboard_maps.png and, where the
dataset has masks, leaderboard_iou.png. Rerunning reuses everything already trained.
"""

from absl import app, flags, logging
from ml_collections import config_flags

from cfx_jax.cli import console_logging
from cfx_jax.engine import runtime
from cfx_jax.jobs.leaderboard import run_leaderboard

_CONFIG = config_flags.DEFINE_config_file("config", None, "Leaderboard config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for models and the leaderboard.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)
  config = _CONFIG.value
  runtime.setup(config.runtime)
  with console_logging():
    run_leaderboard(config, _WORKDIR.value)
  print(f"wrote {_WORKDIR.value}/leaderboard.md", flush=True)


if __name__ == "__main__":
  app.run(main)
