"""A tiny train-job config for tests that run `python -m train` as a real process."""

from cfx_jax.configs import common


def get_config():
  d = common.lesions(num_train=600, num_test=64)
  d.kwargs.image_size = 16
  c = common.experiment(d, method="syce")
  c.classifier.steps, c.classifier.num_devices, c.classifier.progress = 20, 1, False
  c.classifier.features = (8, 16)
  e = c.explainer
  e.steps, e.batch_size, e.num_devices, e.progress = 60, 8, 1, False
  e.model.gen_features, e.model.disc_features = (8, 16), (8, 16)
  e.log_every, e.checkpoint_every, e.log_example_ids = 1, 20, True
  e.select.enabled = False   # the job's mechanics, one fixed setting (test_selection selects)
  c.eval.num_images, c.eval.grid_rows, c.eval.oracle_steps = 32, 2, 5
  return c
