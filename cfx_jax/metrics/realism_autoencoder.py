"""An autoencoder's code as a second feature space for realism scores.

Realism scores computed in a classifier's feature space reward images that
look like the class to that same classifier; the counterfactual papers also
report them in the code space of an autoencoder trained on the real images,
which knows nothing about the decision (`models.autoencoder`).
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
from flax import nnx

from cfx_jax.batching import map_in_chunks
from cfx_jax.engine.autoencoder_fit import fit_autoencoder
from cfx_jax.models.autoencoder import ConvAutoencoder

__all__ = ["AutoencoderEncoder", "ConvAutoencoder", "train_autoencoder"]


@dataclasses.dataclass(frozen=True)
class AutoencoderEncoder:
  """Trained autoencoder used as `encode_fn(images) -> (N, code_dim)`.

  Calls run compiled in padded chunks (see `cfx_jax.batching`), so any number
  of images reuses a few programs. `losses` is the training loss at each logging step.
  """

  graphdef: nnx.GraphDef
  params: nnx.State
  losses: np.ndarray
  chunk_size: int = 256
  _fns: dict = dataclasses.field(init=False, repr=False, compare=False)

  def __post_init__(self):
    graphdef = self.graphdef
    fns = {
        'encode': jax.jit(lambda p, x: nnx.merge(graphdef, p).encode(x)),
        'reconstruct': jax.jit(lambda p, x: nnx.merge(graphdef, p)(x)),
    }
    object.__setattr__(self, '_fns', fns)

  def _run(self, name: str, images) -> np.ndarray:
    fn = self._fns[name]
    images = np.asarray(images, np.float32)
    return map_in_chunks(lambda x: fn(self.params, x), [images],
                         self.chunk_size)

  def __call__(self, images) -> np.ndarray:
    return self._run('encode', images)

  def reconstruct(self, images) -> np.ndarray:
    return self._run('reconstruct', images)


def train_autoencoder(images, *, steps: int = 500, batch_size: int = 64,
                      seed: int = 0, code_dim: int = 32,
                      learning_rate: float = 2e-3, workdir: str | None = None,
                      log_every: int = 10,
                      checkpoint_every: int = 500) -> AutoencoderEncoder:
  """Fit the autoencoder to (N, H, W, C) images in [-1, 1] (`engine.autoencoder_fit`).

  With `workdir`, a stopped run resumes from `<workdir>/autoencoder_checkpoints`.
  """
  graphdef, params, losses = fit_autoencoder(
      images, steps=steps, batch_size=batch_size, seed=seed, code_dim=code_dim,
      learning_rate=learning_rate, workdir=workdir, log_every=log_every,
      checkpoint_every=checkpoint_every)
  return AutoencoderEncoder(graphdef, params, losses)
