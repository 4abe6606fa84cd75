"""Random saliency: the floor any informative map should beat."""

from __future__ import annotations

import functools

import jax

from cfx_jax.baselines import base
from cfx_jax.explanation import Explanation


@functools.partial(jax.jit, static_argnames=("size",))
def _random_maps(index, key, size: tuple[int, int]):
  # One key per image position, so a map does not depend on the batch it is in.
  return jax.vmap(lambda i: jax.random.uniform(jax.random.fold_in(key, i), size))(index)


def random_map(classifier, images, target=None, *, key=None,
               chunk_size: int = 256) -> Explanation:
  """Uniform [0, 1) noise maps from `key`; target and probs as for the other baselines."""
  key = base.check_key(key, "random")
  prep = base.prepare(classifier, images, target, chunk_size)
  size = tuple(prep.images.shape[1:3])
  maps = base.run(prep, lambda x, c, i: _random_maps(i, key, size), with_index=True)
  return base.explanation(prep, maps)
