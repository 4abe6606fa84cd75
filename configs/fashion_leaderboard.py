"""Every method on real images: Fashion-MNIST sneaker against ankle boot.

    python -m train.evaluate --config configs/fashion_leaderboard.py --workdir runs/leaderboard_fashion

No masks (no localization scores) and no twins: the counterfactuals are judged by the
independent oracle (agreement with the target class, FID/KID in its features). Needs
`apt-get install dataset-fashion-mnist`.
"""

from cfx_jax.configs import common


def get_config():
  d = common.fashion_mnist((7, 9))  # Sneaker, Ankle boot
  d.num_train, d.num_test = 6000, 1000
  c = common.leaderboard(d)
  c.classifier.steps = 600
  c.trained.seeds = (0,)
  return c
