"""FIDO on the lesion set with each in-filler: blur, mean, noise, local mean and the learned
in-painter, scored side by side against the lesion masks, the twins and the oracle.

    python -m train.evaluate --config configs/lesions_fido_infillers.py --workdir runs/fido_infillers

FIDO's claim is that in-filling with a generative model gives more compact, more relevant
maps with fewer artefacts than blur, noise or mean in-fill. The in-painter is trained
first (`configs/lesions_inpainter.py`'s settings, about 7 minutes on a 2-core CPU) or
reused from the work directory. Every row keeps the paper's optimiser settings (SDR, 300
steps x 8 mask samples) and explains 64 test images, one seed. Each counterfactual is the
paper's region, widened along the learned ranking until its in-fill flips the classifier
(FIDO's default `thresholds`); the last row is the in-painter with the paper's one
threshold.
"""

from cfx_jax.configs import common, lesions_inpainter

INFILLERS = ("blur", "mean", "noise", "local_mean", "inpainter")


def get_config():
  c = common.leaderboard(common.lesions())
  c.classifier.steps = 800
  c.inpainter = lesions_inpainter.get_config().inpainter
  rows = {f"fido/{name}": {"infiller": name, "warn_failures": False} for name in INFILLERS}
  rows["fido/inpainter_one_threshold"] = {**rows["fido/inpainter"], "thresholds": ()}
  c.trained.methods = tuple(rows)
  c.trained.settings = rows
  c.trained.seeds = (0,)
  c.trained.optimiser_images = 64
  c.baselines.methods = ()
  c.eval.scores = ("localization", "faithfulness", "counterfactual", "truth")
  return c
