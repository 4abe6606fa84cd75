"""Default settings of a generative explainer, as an ml_collections ConfigDict.

Experiment files in `configs/` start from these and override what they need; every
field can also be set from the command line (`--config.explainer.steps=2000`).
"""

from __future__ import annotations

import ml_collections


# Measured with studies/counterfactual_truth.py (lesion quick-start setting,
# docs/counterfactual_truth.md): detached cycles, a 4x stronger adversarial weight and a 4x
# faster discriminator turn SyCE's tints into fades the oracle accepts. CyCE and SAGen
# keep the papers' weights until they are measured the same way.
TRUTH_WEIGHTS = {"syce": {"cycle_grad": 0.0, "adv": 1.0}}
TRUTH_DISC_LR_SCALE = {"syce": 4.0}

# Network widths. "small" is the CPU default; "paper" is about the width of the original
# conditional-generator explainer (a U-Net of 64 -> 512 channels), for 128-256 px images
# on an accelerator.
PRESETS = {
    "small": {"gen_features": (16, 32, 64), "disc_features": (32, 64, 96)},
    "paper": {"gen_features": (64, 128, 256, 512), "disc_features": (64, 128, 256, 512)},
}


def explainer_config(method: str = "syce", preset: str = "small") -> ml_collections.ConfigDict:
  """The defaults of `method`, with the network widths of `preset` (see PRESETS)."""
  if preset not in PRESETS:
    raise ValueError(f"unknown preset {preset!r}; available: {sorted(PRESETS)}")
  c = ml_collections.ConfigDict()
  c.method = method
  c.steps = ml_collections.FieldReference(None, field_type=int)  # None: by image size
  c.batch_size = ml_collections.FieldReference(None, field_type=int)  # global, all classes
  c.learning_rate = 1e-4
  c.b1 = 0.5
  c.seed = 0
  # Loss weights that override the method's defaults, e.g. {"l1": 0.0}.
  c.weights = ml_collections.ConfigDict(dict(TRUTH_WEIGHTS.get(method, {})))
  c.model = ml_collections.ConfigDict(dict(
      **PRESETS[preset], residual=True, shared=ml_collections.FieldReference(None, field_type=bool),
      mask=False, infill=False, hard_mask=False, fill_only=(), mask_grow=0, disc_kind="global",
      dtype="float32"))
  # Realism and validity that a tint cannot satisfy (0 = off): the discriminator sees
  # real and generated images under the same random colour, contrast and noise jitter,
  # and the flip loss is an expectation over jittered copies (data/augment.py).
  c.disc_jitter = 0.0
  c.flip_jitter = 0.0
  c.disc_steps = 1                 # discriminator updates per generator update
  # The class prior (methods/conditional/prior.py), fitted when weights.prior > 0: one
  # autoencoder per class, its training steps and code size.
  c.prior = ml_collections.ConfigDict(dict(steps=1500, code_dim=128))
  # More than two classes: the share of images trained toward their runner-up class (the
  # class `explain` aims at by default) rather than a random other one (0: one random
  # shift of every group per step). docs/fashion_mnist.md, "Ten classes".
  c.runner_up_share = 0.5
  # The discriminator's learning rate as a multiple of the generator's.
  c.disc_lr_scale = TRUTH_DISC_LR_SCALE.get(method, 1.0)
  c.num_devices = 0          # 0: every device (a multi-process job always uses all)
  c.fsdp = 1                 # size of the mesh's fsdp axis (parameters sharded along it)
  c.log_every = 50
  c.checkpoint_every = 500
  c.keep_checkpoints = 3
  c.chunk_size = 256         # images per compiled explain call
  # Map |input - cf| ("input") or |stable - cf| ("stable"); "auto": "input" for the
  # residual generator, the method paper's choice otherwise.
  c.map_reference = "auto"
  c.progress = True
  c.log_example_ids = False  # write the ids of every batch to example_ids.jsonl
  # Choose the setting by judges (cfx_jax/selection): candidates trained side by side
  # on all but `held_out` of the images, judged on the rest by an oracle trained for
  # `judge_steps`; `seeds` members of each candidate form train as one population (on
  # an accelerator they cost little more than one); `report_judge`: a second oracle
  # scores the choice (the train job's evaluation oracle does that there). Each candidate
  # trains `steps` steps (at most the explainer's) of `batch_per_class` images of each
  # class (where `batch_size` above is None); then the chosen setting trains again from
  # the start for the explainer's `steps`, or `final_steps` where that is None (0: keep
  # the chosen candidate as it is). docs/selection.md has the times on a 2-core CPU.
  # `fit_explainer` without a config turns it on.
  c.select = ml_collections.ConfigDict(dict(enabled=False, held_out=0.15, judge_steps=300,
                                            seeds=1, report_judge=True, steps=300,
                                            batch_per_class=16, final_steps=600))
  return c


def paper_form(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The papers' exact form: re-synthesis with tanh, no direct L1 or total-variation
  proximity, the papers' adversarial weight and flip, cycles that train both passes, one
  discriminator learning rate, and no selection."""
  c = c.copy_and_resolve_references()
  c.model.residual = False
  c.model.mask, c.model.infill, c.model.hard_mask, c.model.fill_only = False, False, False, ()
  c.model.mask_grow = 0
  c.weights.l1 = 0.0
  c.weights.tv, c.weights.flip_partial, c.weights.prior = 0.0, 0.0, 0.0
  for name in ("cycle_grad", "adv"):
    if name in c.weights:
      del c.weights[name]
  c.disc_lr_scale = 1.0
  c.select.enabled = False  # one fixed setting, nothing chosen
  return c


def default_steps(image_size: int) -> int:
  return 1200 if image_size <= 32 else 3000


def default_batch_size(num_classes: int) -> int:
  """32 per class for two classes (the measured setting), 16 per class beyond."""
  return 64 if num_classes == 2 else 16 * num_classes
