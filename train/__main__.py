"""Run an experiment config: train the classifier, then fit and evaluate an explainer.

    python -m train --config configs/lesions_syce.py --workdir runs/lesions
    python -m train --config configs/lesions_syce.py --workdir runs/x --config.explainer.steps=2000

The `cfx-jax train` command under the name the docs first gave it: the same flags, the
same code. Exit status 75 means the job was stopped by SIGTERM after writing a
checkpoint: run the same command again to resume.
"""

import sys

from cfx_jax import cli


def main(argv: list[str] | None = None) -> int:
  return cli.main(["train", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
  sys.exit(main())
