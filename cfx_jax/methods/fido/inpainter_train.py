"""Train a mask-conditioned in-painter for FIDO with the project's GAN machinery.

Each step draws random keep masks for a batch of real images: FIDO's own masks (a
relaxed-Bernoulli grid upsampled bilinearly, so the in-filler sees exactly the soft
masks it will meet) mixed with random rectangles (large contiguous holes). The
discriminator learns to tell real (image, mask) pairs from in-filled ones; the generator
minimises the L1 error on the dropped pixels plus a small adversarial term that keeps
its fills sharp instead of the blurry mean the L1 alone converges to. Both updates are
one compiled, sharded program; the state is `GanState`, checkpointed and resumed
like the explainers'.
"""

from __future__ import annotations

import dataclasses
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from cfx_jax import data as data_lib
from cfx_jax import persistence
from cfx_jax.methods import losses
from cfx_jax.methods.fido.explainer import upsample
from cfx_jax.models import inpainter as inpainter_lib
from cfx_jax.models.inpainter import Inpainter, composite, disc_logits
from cfx_jax.engine.state import (GanModels, GanState, commit_if_finite, init_gan,
                                  optimizer)
from cfx_jax.engine import mesh as mesh_lib
from cfx_jax.engine.loop import LoopConfig, train_loop

META_FILE = "inpainter.json"
TREE_DIR = "network"


def inpainter_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.steps = 3000
  c.batch_size = 64
  c.learning_rate = 2e-4
  c.b1 = 0.5
  c.seed = 0
  # recon: L1 on the dropped pixels; adv: non-saturating GAN term of the generator;
  # gp: gradient penalty of the discriminator.
  c.weights = ml_collections.ConfigDict(dict(recon=1.0, adv=0.01, gp=1.0))
  c.model = ml_collections.ConfigDict(dict(
      features=(32, 64, 128), disc_features=(32, 64, 96), residual=True, dtype="float32"))
  c.masks = ml_collections.ConfigDict(dict(
      grid_fractions=(0.25, 0.125),  # grid side / image side; FIDO's default is 1/4
      drop=(0.1, 0.9),               # range of the per-mask drop probability
      temperature=0.1,               # of the relaxed Bernoulli cells, as in FIDO
      rect_fraction=0.3,             # share of masks made of rectangles
      max_rects=3,
      rect_size=(0.15, 0.5)))        # rectangle sides, as fractions of the image side
  c.num_devices = 0                  # 0: every device
  c.fsdp = 1
  c.log_every = 50
  c.checkpoint_every = 500
  c.keep_checkpoints = 3
  c.chunk_size = 256
  c.progress = True
  c.eval = ml_collections.ConfigDict(dict(num_images=512, seed=1, figure_rows=6))
  return c


# Masks --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class MaskSpec:
  """Hashable mask settings for one image size (closed over by the compiled step)."""

  grid_sides: tuple[int, ...]
  drop: tuple[float, float]
  temperature: float
  rect_fraction: float
  max_rects: int
  rect_size: tuple[float, float]

  @property
  def kinds(self) -> tuple[str, ...]:
    """Names of the mask kinds, indexed by the `kind` that `sample_masks` returns."""
    return tuple(f"grid{g}" for g in self.grid_sides) + ("rect",)


def mask_spec(masks, image_size: int) -> MaskSpec:
  sides = tuple(dict.fromkeys(max(1, round(image_size * f)) for f in masks["grid_fractions"]))
  lo, hi = (float(v) for v in masks["drop"])
  if not 0 < lo <= hi < 1:
    raise ValueError(f"masks.drop must satisfy 0 < low <= high < 1, got {(lo, hi)}")
  rect_lo, rect_hi = (float(v) for v in masks["rect_size"])
  if not 0 < rect_lo <= rect_hi <= 1:
    raise ValueError(f"masks.rect_size must satisfy 0 < low <= high <= 1, got "
                     f"{(rect_lo, rect_hi)}")
  if not sides and masks["rect_fraction"] < 1:
    raise ValueError("masks.grid_fractions is empty: set masks.rect_fraction to 1")
  return MaskSpec(sides, (lo, hi), float(masks["temperature"]),
                  float(masks["rect_fraction"]), max(1, int(masks["max_rects"])),
                  (rect_lo, rect_hi))


def grid_masks(key, n: int, height: int, width: int, side: int, drop, temperature):
  """FIDO's masks: keep = 1 - upsample(sigmoid((theta + logistic noise) / T)).

  theta is the logit of a drop probability drawn per mask from `drop`.
  """
  k_p, k_noise = jax.random.split(key)
  p = jax.random.uniform(k_p, (n, 1, 1), minval=drop[0], maxval=drop[1])
  noise = jax.random.logistic(k_noise, (n, side, side))
  cells = jax.nn.sigmoid((jnp.log(p) - jnp.log1p(-p) + noise) / temperature)
  return (1.0 - upsample(cells, height, width))[..., None]


def rect_masks(key, n: int, height: int, width: int, max_rects: int, size):
  """1 to `max_rects` axis-aligned rectangles dropped per mask (binary keep masks)."""
  k_count, k_size, k_pos = jax.random.split(key, 3)
  count = jax.random.randint(k_count, (n, 1), 1, max_rects + 1)
  sides = jax.random.uniform(k_size, (n, max_rects, 2), minval=size[0], maxval=size[1])
  sides = sides * jnp.asarray([height, width], jnp.float32)
  lo = jax.random.uniform(k_pos, (n, max_rects, 2)) * (
      jnp.asarray([height, width], jnp.float32) - sides)
  ys = jnp.arange(height, dtype=jnp.float32) + 0.5
  xs = jnp.arange(width, dtype=jnp.float32) + 0.5
  in_y = (ys >= lo[..., 0:1]) & (ys < lo[..., 0:1] + sides[..., 0:1])  # (n, R, H)
  in_x = (xs >= lo[..., 1:2]) & (xs < lo[..., 1:2] + sides[..., 1:2])  # (n, R, W)
  active = jnp.arange(max_rects)[None, :] < count                      # (n, R)
  dropped = jnp.any(active[..., None, None] & in_y[..., :, None] & in_x[..., None, :],
                    axis=1)
  return (1.0 - dropped.astype(jnp.float32))[..., None]


def sample_masks(key, n: int, image_shape, spec: MaskSpec):
  """Keep masks (n, H, W, 1) in [0, 1] and each mask's kind (index into `spec.kinds`)."""
  height, width = image_shape[:2]
  k_kind, k_rect, *k_sides = jax.random.split(key, 2 + len(spec.grid_sides))
  k_which, k_rectness = jax.random.split(k_kind)
  kind = jnp.full((n,), len(spec.grid_sides), jnp.int32)
  keep = rect_masks(k_rect, n, height, width, spec.max_rects, spec.rect_size)
  if spec.grid_sides:
    which = jax.random.randint(k_which, (n,), 0, len(spec.grid_sides))
    is_rect = jax.random.uniform(k_rectness, (n,)) < spec.rect_fraction
    kind = jnp.where(is_rect, kind, which)
    for i, (side, k) in enumerate(zip(spec.grid_sides, k_sides)):
      grid = grid_masks(k, n, height, width, side, spec.drop, spec.temperature)
      keep = jnp.where((kind == i)[:, None, None, None], grid, keep)
  return keep, kind


# Losses -------------------------------------------------------------------------------


def dropped_l1(fills, images, keep) -> jax.Array:
  """Mean absolute error of the fills on the dropped pixels, weighted by (1 - keep).

  Pooled over the batch: sum((1 - keep) |fills - images|) / (C * sum(1 - keep)).
  """
  drop = 1.0 - keep
  err = jnp.sum(drop * jnp.abs(fills - images))
  return err / jnp.maximum(images.shape[-1] * jnp.sum(drop), 1e-6)


def discriminator_loss(disc_fn, images, fakes, keep, key, w):
  """BCE real/fake on (image, mask) pairs plus the gradient penalty on the images."""
  real = losses.bce_logits(disc_fn(images, keep), True)
  fake = losses.bce_logits(disc_fn(fakes, keep), False)
  gp = losses.gradient_penalty(lambda z: disc_fn(z, keep), images, fakes, key)
  loss = real + fake + w["gp"] * gp
  return loss, {"d_real": real, "d_fake": fake, "d_gp": gp, "d_loss": loss}


def generator_loss(disc_fn, fills, images, keep, w):
  """L1 on the dropped pixels plus the non-saturating adversarial term of the composite."""
  recon = dropped_l1(fills, images, keep)
  adv = losses.bce_logits(disc_fn(composite(images, keep, fills), keep), True)
  loss = w["recon"] * recon + w["adv"] * adv
  return loss, {"g_recon": recon, "g_adv": adv, "g_loss": loss}


# Train step ---------------------------------------------------------------------------


def init(image_shape, config):
  """Build the networks once and split them; returns (GanModels, GanState)."""
  net, disc = inpainter_lib.build_networks(image_shape, config.model, nnx.Rngs(config.seed))
  tx = optimizer(config.learning_rate, config.b1)
  return init_gan(net, disc, tx, tx, config.seed)


def make_train_step(models: GanModels, weights: dict, spec: MaskSpec):
  """The pure step `(state, images (B, H, W, C)) -> (state, metrics)`: D, then G."""
  w = dict(weights)

  def step(state: GanState, images):
    key = jax.random.fold_in(jax.random.wrap_key_data(state.key), state.step)
    k_mask, k_gp = jax.random.split(key)
    keep, _ = sample_masks(k_mask, images.shape[0], images.shape[1:], spec)
    keep = keep.astype(images.dtype)
    gen = nnx.merge(models.gen_def, state.gen)
    fakes = jax.lax.stop_gradient(composite(images, keep, gen(images, keep)))

    def d_loss(disc_params):
      disc = nnx.merge(models.disc_def, disc_params)
      return discriminator_loss(lambda x, k: disc_logits(disc, x, k), images, fakes, keep,
                                k_gp, w)

    (_, d_metrics), d_grads = jax.value_and_grad(d_loss, has_aux=True)(state.disc)
    d_updates, disc_opt = models.disc_tx.update(d_grads, state.disc_opt, state.disc)
    disc_params = optax.apply_updates(state.disc, d_updates)

    def g_loss(gen_params):
      g = nnx.merge(models.gen_def, gen_params)
      d = nnx.merge(models.disc_def, disc_params)
      return generator_loss(lambda x, k: disc_logits(d, x, k), g(images, keep), images,
                            keep, w)

    (_, g_metrics), g_grads = jax.value_and_grad(g_loss, has_aux=True)(state.gen)
    g_updates, gen_opt = models.gen_tx.update(g_grads, state.gen_opt, state.gen)
    gen_params = optax.apply_updates(state.gen, g_updates)

    metrics = {**d_metrics, **g_metrics, "drop_fraction": 1.0 - jnp.mean(keep)}
    finite = jnp.isfinite(metrics["d_loss"]) & jnp.isfinite(metrics["g_loss"])
    return commit_if_finite(state, finite, gen=gen_params, disc=disc_params, gen_opt=gen_opt,
                            disc_opt=disc_opt), metrics

  return step


# Loop ---------------------------------------------------------------------------------

# Jitted steps by everything they close over, so that training the same networks again
# in one process (a resumed run, an experiment sweep) reuses the compiled program.
_STEPS: dict = {}


def compiled_train_step(models: GanModels, config, spec: MaskSpec, mesh,
                        state_sharding, images_sharding):
  """The jitted, sharded, state-donating step for these networks, settings and mesh."""
  weights = tuple(sorted((k, float(v)) for k, v in dict(config.weights).items()))
  key = (models.gen_def, models.disc_def, float(config.learning_rate), float(config.b1),
         weights, spec, mesh)
  if key not in _STEPS:
    if len(_STEPS) >= 8:
      _STEPS.clear()
    _STEPS[key] = jax.jit(make_train_step(models, dict(weights), spec),
                          in_shardings=(state_sharding, images_sharding),
                          out_shardings=(state_sharding, mesh_lib.replicated(mesh)),
                          donate_argnums=0)
  return _STEPS[key]



def train_inpainter(images: np.ndarray, config: ml_collections.ConfigDict,
                    workdir: str | None = None) -> Inpainter:
  """Fit the in-painter to `images` (N, H, W, C) in [-1, 1]; resumes from `workdir`.

  Writes `<workdir>/inpainter_checkpoints`, `<workdir>/inpainter_train.jsonl` and the
  final model to `<workdir>/inpainter`. Every process passes the same `images`.
  """
  images = np.asarray(images, np.float32)
  if images.ndim != 4:
    raise ValueError(f"images must be (N, H, W, C), got shape {images.shape}")
  image_shape = tuple(int(d) for d in images.shape[1:])
  spec = mask_spec(config.masks, image_shape[0])
  steps, batch_size = int(config.steps), int(config.batch_size)
  mesh = mesh_lib.make_mesh(config.num_devices, config.get("fsdp", 1))
  devices = mesh.devices.size
  if batch_size % devices:
    raise ValueError(f"batch_size {batch_size} must be divisible by the {devices} devices")
  dataset = data_lib.batches(data_lib.ArraySource({"image": images}), batch_size,
                             seed=config.seed)

  models, state = init(image_shape, config)
  layout = mesh_lib.describe(mesh, batch_size)
  meta = {"image_shape": list(image_shape), "config": config.to_dict(), "layout": layout}
  state_sharding = mesh_lib.state_shardings(mesh, state)
  images_sharding = mesh_lib.batch_sharding(mesh, 4, axis=0)
  state = jax.device_put(state, state_sharding)
  step_fn = compiled_train_step(models, config, spec, mesh, state_sharding, images_sharding)

  loop = LoopConfig.from_config("inpainter", config, steps,
                                shown=("d_loss", "g_recon", "g_adv"))
  state, log = train_loop(
      state, step_fn, lambda i: data_lib.to_global(
          {"image": dataset[i]["image"]}, {"image": images_sharding})["image"],
      loop, mesh=mesh, workdir=workdir, meta=meta, compare=("image_shape",))
  inpainter = Inpainter(models.gen_def, mesh_lib.to_host(state.gen, mesh), image_shape,
                        config.to_dict(), log.history)
  if workdir:
    save_inpainter(os.path.join(workdir, "inpainter"), inpainter)
  return inpainter


# Persistence --------------------------------------------------------------------------


def save_inpainter(path: str, inpainter: Inpainter) -> None:
  meta = {"image_shape": list(inpainter.image_shape), "config": inpainter.config}
  persistence.save(path, META_FILE, meta, TREE_DIR, inpainter.params)


def load_inpainter(path: str) -> Inpainter:
  """Load an in-painter saved by `save_inpainter` (or by `train_inpainter`'s workdir)."""
  meta = persistence.read_meta(path, META_FILE, "in-painter")
  shape = tuple(meta["image_shape"])
  model = meta["config"]["model"]
  graphdef, abstract = nnx.split(nnx.eval_shape(
      lambda: inpainter_lib.build_net(shape, model, nnx.Rngs(0))))
  params = persistence.restore(path, TREE_DIR, abstract)
  return Inpainter(graphdef, params, shape, meta["config"])
