"""Pieces shared by the experiment configs."""

import ml_collections

from cfx_jax.jobs.classifier_training import classifier_config
from cfx_jax.jobs.datasets import dataset_config
from cfx_jax.engine.runtime import runtime_config
from cfx_jax.methods.conditional.config import explainer_config


def experiment(dataset: ml_collections.ConfigDict, method: str | None,
               preset: str = "small") -> ml_collections.ConfigDict:
  """`preset`: the generator explainer's network widths
  (`cfx_jax.methods.conditional.config.PRESETS`); the configs take it as their config
  string, `--config configs/lesions_syce.py:paper`."""
  c = ml_collections.ConfigDict()
  c.dataset = dataset
  c.classifier = classifier_config()
  c.explainer = explainer_config(method, preset) if method else None
  if c.explainer is not None:
    # The job chooses the explainer's setting by judges, as `fit_explainer` without a
    # config does (docs/selection.md); --config.explainer.select.enabled=False fits the
    # method's fixed defaults. The second judge is the evaluation's oracle (trained on
    # the labels, its own seed and widths), which the selection never sees.
    c.explainer.select.enabled = True
    c.explainer.select.report_judge = False
  # scores: families of `cfx_jax.jobs.evaluators.SCORE_FAMILIES` in metrics.json and
  # report.md. oracle_steps: train (once, cached in <workdir>/oracle) the independent
  # oracle that the truth scores need; 0 turns them off.
  c.eval = ml_collections.ConfigDict(dict(
      scores=("counterfactual", "truth", "localization"), num_images=512, grid_rows=8,
      oracle_steps=1200))
  c.runtime = runtime_config()
  return c


def method_config(method: str, seed: int = 0, **settings) -> ml_collections.ConfigDict:
  """`config.explainer` of a method whose settings are not an `explainer_config` (fido,
  disc, cae, latent): its name, seed and settings side by side."""
  return ml_collections.ConfigDict({"method": method, "seed": seed, **settings})


def lesions(num_train: int = 6000, num_test: int = 1000) -> ml_collections.ConfigDict:
  d = dataset_config("lesions", image_size=32, channels=3, seed=0)
  d.num_train, d.num_test = num_train, num_test
  return d


def digits(classes=(3, 8)) -> ml_collections.ConfigDict:
  return dataset_config("digits", classes=tuple(classes), image_size=32, channels=1)


def fashion_mnist(classes=(7, 9)) -> ml_collections.ConfigDict:
  """Fashion-MNIST IDX files at 32x32, so the U-Net's stride-2 levels divide evenly."""
  return dataset_config("fashion_mnist", classes=tuple(classes), image_size=32, channels=1)


def leaderboard(dataset: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Every registered method on one dataset; `methods=None` means all of them."""
  c = ml_collections.ConfigDict()
  c.dataset = dataset
  c.classifier = classifier_config()
  generator = {"steps": 600}
  # `methods`: typed so that `--config.trained.methods="('disc',)"` can replace the None.
  c.trained = ml_collections.ConfigDict(dict(
      methods=ml_collections.FieldReference(None, field_type=tuple), seeds=(0, 1, 2),
      # Settings of every method (or row: "fido/mean" is FIDO with its own), by name.
      # Optimisation methods keep their paper settings but explain fewer images (each
      # image costs an optimisation).
      settings={"syce": generator, "cyce": generator, "sagen": generator,
                "fido": {"warn_failures": False},
                "disc": {"warn_failures": False},
                "cae": {"steps": 600},
                "latent": {"vae_steps": 3000, "shift_steps": 1000,
                           "progress": False, "warn_failures": False}},
      optimiser_images=32))
  # methods: None for every baseline, () for none.
  c.baselines = ml_collections.ConfigDict(dict(
      methods=ml_collections.FieldReference(None, field_type=tuple), seed=0))
  # scores: families of `cfx_jax.jobs.evaluators`, each a table of the leaderboard.
  c.eval = ml_collections.ConfigDict(dict(
      scores=("localization", "faithfulness", "counterfactual", "truth", "realism",
              "sanity"),
      num_images=512, sanity_images=32, faithfulness_steps=16, autoencoder_steps=600,
      grid_rows=6, oracle_steps=1200))
  c.runtime = runtime_config()
  return c
