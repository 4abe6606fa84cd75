"""Score every registered method on one dataset and write a leaderboard.

    python -m train.evaluate --config configs/lesions_leaderboard.py --workdir runs/leaderboard_lesions

Trains what the work directory lacks (classifier, each trained explainer per seed),
then writes leaderboard.md, leaderboard.json, leaderboard_maps.png and, where the
dataset has masks, leaderboard_iou.png. Rerunning reuses everything already trained.
The `cfx-jax evaluate` command: exit status 75 means the job was stopped by SIGTERM after
writing a checkpoint, and the same command resumes it.
"""

import sys

from cfx_jax import cli


def main(argv: list[str] | None = None) -> int:
  return cli.main(["evaluate", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
  sys.exit(main())
