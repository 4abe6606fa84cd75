"""The in-painter stage of a train job: train or reuse FIDO's learned in-filler, score
its dropped-pixel L1 against mask-free in-fillers on held-out masks, draw the figure."""

from __future__ import annotations

import logging
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from cfx_jax import report
from cfx_jax.batching import map_in_chunks
from cfx_jax.engine.logging import is_main_process
from cfx_jax.methods.fido import infillers as infillers_lib
from cfx_jax.methods.fido.inpainter_train import (META_FILE, dropped_l1, load_inpainter,
                                                  mask_spec, sample_masks, train_inpainter)
from cfx_jax.models.inpainter import Inpainter

logger = logging.getLogger(__name__)

# Fillers the in-painter is compared with. FIDO's registered ones ignore the mask, so
# they read the very pixels they replace; the "kept_" ones see only the kept pixels,
# like the in-painter, and are the fair reference for reconstruction error.
BASELINE_FILLERS = ("blur", "mean", "local_mean", "kept_mean", "kept_blur")

# Sigma of `kept_blur` as a fraction of the image side: wide enough to bridge FIDO's holes.
KEPT_BLUR_FRACTION = 0.1

def held_out_masks(inpainter: Inpainter, n: int, seed: int):
  """The training mask distribution, drawn with a fixed seed: (keep, kind) as NumPy."""
  spec = mask_spec(inpainter.config["masks"], inpainter.image_shape[0])
  keep, kind = jax.jit(sample_masks, static_argnums=(1, 2, 3))(
      jax.random.key(seed), n, inpainter.image_shape, spec)
  return np.asarray(keep), np.asarray(kind), spec


def kept_mean_fill(images, keep, key=None):
  """Per-image, per-channel mean of the kept pixels only."""
  del key
  total = jnp.sum(images * keep, axis=(1, 2), keepdims=True)
  count = jnp.sum(keep, axis=(1, 2), keepdims=True)
  mean = jnp.where(count > 1e-6, total / jnp.maximum(count, 1e-6), 0.0)
  return jnp.broadcast_to(mean, images.shape)


def kept_blur_fill(images, keep, key=None):
  """Normalised convolution: blur(x * keep) / blur(keep), the kept mean where nothing is near."""
  sigma = KEPT_BLUR_FRACTION * min(images.shape[1], images.shape[2])
  num = infillers_lib.gaussian_blur(images * keep, sigma)
  den = infillers_lib.gaussian_blur(jnp.broadcast_to(keep, images.shape[:3] + (1,)), sigma)
  return jnp.where(den > 1e-3, num / jnp.maximum(den, 1e-3), kept_mean_fill(images, keep))


_EVAL_FILLERS = {"kept_mean": kept_mean_fill, "kept_blur": kept_blur_fill}


def baseline_fills(images: np.ndarray, keep: np.ndarray, name: str,
                   chunk_size: int = 256) -> np.ndarray:
  """Fills of a registered in-filler or of a `kept_` reference, in compiled chunks."""
  fill = _EVAL_FILLERS.get(name) or infillers_lib.get_infiller(name)
  # Run op by op: jitted, XLA spends seconds constant-folding `local_mean`'s window counts.
  fn = lambda x, k: fill(jnp.asarray(x), jnp.asarray(k), jax.random.key(0))  # noqa: E731
  return map_in_chunks(fn, [images, keep], chunk_size)


def evaluate_inpainter(inpainter: Inpainter, images: np.ndarray, *, seed: int = 1,
                       chunk_size: int = 256, baselines=BASELINE_FILLERS):
  """Dropped-pixel L1 of the in-painter and of mask-free in-fillers on the same masks.

  Returns (metrics, samples): metrics per filler overall and per mask kind; samples
  holds the images, masks and fills for a figure.
  """
  images = np.asarray(images, np.float32)
  keep, kind, spec = held_out_masks(inpainter, len(images), seed)
  fills = {"inpainter": inpainter.fills(images, keep, chunk_size)}
  for name in baselines:
    fills[name] = baseline_fills(images, keep, name, chunk_size)

  def l1(f, rows):
    return float(dropped_l1(jnp.asarray(f[rows]), jnp.asarray(images[rows]),
                            jnp.asarray(keep[rows])))

  everything = np.arange(len(images))
  metrics = {
      "num_images": len(images),
      "mask_seed": seed,
      "drop_fraction": float(1.0 - keep.mean()),
      "l1_dropped": {name: l1(f, everything) for name, f in fills.items()},
      "l1_dropped_by_mask": {},
  }
  for i, kind_name in enumerate(spec.kinds):
    rows = np.flatnonzero(kind == i)
    if rows.size:
      metrics["l1_dropped_by_mask"][kind_name] = {
          "count": int(rows.size), **{name: l1(f, rows) for name, f in fills.items()}}
  samples = {"images": images, "keep": keep, "kind": kind, "fills": fills}
  return metrics, samples


def _display(image: np.ndarray):
  img = np.clip((np.asarray(image, np.float32) + 1.0) / 2.0, 0.0, 1.0)
  return (img[..., 0], "gray") if img.shape[-1] == 1 else (img, None)


def save_inpainting_figure(path: str, samples: dict, rows: int = 6,
                           columns=("blur", "inpainter")) -> str:
  """Rows of: masked input | each named fill composited | original."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  images, keep = samples["images"], samples["keep"]
  rows = min(rows, len(images))
  titles = ["masked input"] + [f"{c} fill" for c in columns] + ["original"]
  fig, axes = plt.subplots(rows, len(titles), figsize=(1.8 * len(titles), 1.8 * rows),
                           squeeze=False)
  for r in range(rows):
    panels = [images[r] * keep[r]]
    panels += [keep[r] * images[r] + (1.0 - keep[r]) * samples["fills"][c][r] for c in columns]
    panels.append(images[r])
    for ax, panel, title in zip(axes[r], panels, titles):
      img, cmap = _display(panel)
      ax.imshow(img, cmap=cmap, vmin=0.0, vmax=1.0, interpolation="nearest")
      ax.set_xticks([])
      ax.set_yticks([])
      if r == 0:
        ax.set_title(title, fontsize=9)
  return report.save_figure(fig, path)


def run_inpainter_stage(config: ml_collections.ConfigDict, train: dict, test: dict,
                        workdir: str) -> dict:
  """Train (or reuse `<workdir>/inpainter`), evaluate on held-out images, write outputs,
  and register it as FIDO's in-filler "inpainter" for the explainers of the same job.

  Writes `<workdir>/inpainter_metrics.json` and `<workdir>/inpainter.png`.
  """
  path = os.path.join(workdir, "inpainter")
  if os.path.exists(os.path.join(path, META_FILE)):
    inpainter = load_inpainter(path)
    logger.info("inpainter: reusing %s", path)
  else:
    inpainter = train_inpainter(train["image"], config, workdir)
  held_out = np.asarray(test["image"][:int(config.eval.num_images)], np.float32)
  metrics, samples = evaluate_inpainter(inpainter, held_out, seed=int(config.eval.seed),
                                        chunk_size=int(config.chunk_size))
  if is_main_process():
    report.save_json(os.path.join(workdir, "inpainter_metrics.json"), metrics)
    save_inpainting_figure(os.path.join(workdir, "inpainter.png"), samples,
                           rows=int(config.eval.figure_rows))
  logger.info("inpainter dropped-pixel L1: %s", ", ".join(
      f"{k}={v:.4f}" for k, v in metrics["l1_dropped"].items()))
  infillers_lib.register_inpainter(inpainter)
  return metrics
