"""Sanity check: does the map depend on what the classifier learned?

Model parameter randomisation (Adebayo et al., 2018; Quantus
ModelParameterRandomisation): re-draw the classifier's parameters layer by
layer and compare the maps before and after. A method whose maps barely change
once the learned weights are gone explains the image (edges, contrast), not
the decision; low rank correlation means it passes.

Layers. Leaves of the parameter pytree are grouped by their top-level key
(after descending through single-child wrappers such as a linen
`{'params': ...}` collection); a top-level group whose children are all
integer-indexed (an `nnx.List` or Python list of layers) is split into its
elements, named e.g. 'convs/0'. Groups keep pytree order, which for NNX state
and dicts is sorted by key, so it is the network's input-to-output order only
when the names say so; pass `layers` to give the order (and the grouping)
explicitly, e.g. ['convs/0', 'norms/0', 'convs/1', 'norms/1', 'head'].

Randomisation. Each floating leaf is replaced by a draw from a normal with
the leaf's own mean and standard deviation, so activations keep their scale
and only the learned structure is destroyed; a constant leaf (e.g. an
untrained zero bias) is therefore left as it is. BatchNorm running statistics
(`nnx.BatchStat`, a linen 'batch_stats' collection, or leaves named
running_mean / running_var) and non-float leaves are never changed: they
describe the data, not the decision.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

_STAT_NAMES = frozenset({'batch_stats', 'running_mean', 'running_var',
                         'moving_mean', 'moving_variance'})


def _average_ranks(x):
  """1-based ranks with ties given the mean of the ranks they span."""
  s = jnp.sort(x)
  lo = jnp.searchsorted(s, x, side='left')
  hi = jnp.searchsorted(s, x, side='right')
  return (lo + hi + 1).astype(jnp.float32) / 2.0


@jax.jit
def spearman_correlation(a_batch, b_batch) -> jax.Array:
  """Per-row Spearman rank correlation of (N, ...) arrays, (N,).

  Pearson correlation of average ranks (ties share their mean rank), as
  `scipy.stats.spearmanr`. NaN where either row is constant.
  """
  a = jnp.asarray(a_batch, jnp.float32)
  b = jnp.asarray(b_batch, jnp.float32)
  if a.shape != b.shape:
    raise ValueError(f'shapes differ: {a.shape} vs {b.shape}')
  n = a.shape[0]
  ra = jax.vmap(_average_ranks)(a.reshape(n, -1))
  rb = jax.vmap(_average_ranks)(b.reshape(n, -1))
  ra = ra - jnp.mean(ra, axis=1, keepdims=True)
  rb = rb - jnp.mean(rb, axis=1, keepdims=True)
  cov = jnp.sum(ra * rb, axis=1)
  norm = jnp.sqrt(jnp.sum(ra * ra, axis=1) * jnp.sum(rb * rb, axis=1))
  rho = cov / jnp.where(norm > 0, norm, 1.0)
  return jnp.where(norm > 0, jnp.clip(rho, -1.0, 1.0), jnp.nan)


def _is_variable(x) -> bool:
  return isinstance(x, nnx.Variable)


def _key_name(k):
  for attr in ('key', 'idx', 'name'):
    if hasattr(k, attr):
      return getattr(k, attr)
  return str(k)


def _leaf_paths(params):
  flat, treedef = jax.tree_util.tree_flatten_with_path(
      params, is_leaf=_is_variable)
  paths = [tuple(_key_name(k) for k in path) for path, _ in flat]
  return paths, [leaf for _, leaf in flat], treedef


def _is_index(k) -> bool:
  return isinstance(k, int) and not isinstance(k, bool)


def _default_groups(paths) -> list[tuple]:
  """Ordered layer prefixes; see the module docstring."""
  depth = 0
  while (len({p[depth] for p in paths if len(p) > depth}) == 1
         and all(len(p) > depth + 1 for p in paths)):
    depth += 1
  groups: list[tuple] = []
  for top in dict.fromkeys(p[:depth + 1] for p in paths):
    members = [p for p in paths if p[:depth + 1] == top]
    children = [p[depth + 1] for p in members if len(p) > depth + 1]
    if len(children) == len(members) and all(map(_is_index, children)):
      groups.extend(dict.fromkeys(p[:depth + 2] for p in members))
    else:
      groups.append(top)
  return groups


def _name(prefix) -> str:
  return '/'.join(str(k) for k in prefix)


def _frozen(path, leaf) -> bool:
  if isinstance(leaf, nnx.BatchStat):
    return True
  if any(str(k) in _STAT_NAMES for k in path):
    return True
  value = leaf.get_value() if _is_variable(leaf) else leaf
  return not jnp.issubdtype(jnp.asarray(value).dtype, jnp.floating)


def _value(leaf):
  return jnp.asarray(leaf.get_value() if _is_variable(leaf) else leaf)


@jax.jit
def _resample(values: list, key):
  """Normal draws with each leaf's own mean and std.

  One draw for all leaves, sliced per leaf: compiling a random generator per
  leaf shape costs more than the whole check on a small network.
  """
  sizes = [v.size for v in values]
  noise = jax.random.normal(key, (sum(sizes),), jnp.float32)
  out, start = [], 0
  for value, size in zip(values, sizes):
    z = noise[start:start + size].reshape(value.shape).astype(value.dtype)
    out.append(jnp.mean(value) + jnp.std(value) * z)
    start += size
  return out


def layer_groups(params) -> list[str]:
  """Default layer names of a parameter pytree, in pytree order."""
  paths, _, _ = _leaf_paths(params)
  return [_name(g) for g in _default_groups(paths)]


def parameter_randomisation(
    map_fn: Callable, params, x_batch, y_batch, *, key: jax.Array,
    order: str = 'top_down', layers: Sequence[str] | None = None,
    jit: bool = True) -> dict[str, jax.Array]:
  """Spearman correlation of maps before / after randomising each layer.

  `map_fn(params, x_batch, y_batch) -> (N, H, W)` maps; compiled once with
  `jax.jit` unless `jit=False` (the randomised parameters keep the original
  tree structure, so every layer reuses that one program). `order`:
  'top_down' randomises cumulatively from the last layer toward the input (the
  Adebayo et al. cascade), 'bottom_up' cumulatively from the input, and
  'independent' one layer at a time. Every leaf is re-drawn once from `key`,
  so the cascade stages share their draws.

  Returns {layer_name: (N,) correlations} in randomisation order, each entry
  after that layer (and, when cumulative, all before it) was randomised.
  Values near 0 mean the map depends on the learned parameters.
  """
  if order not in ('top_down', 'bottom_up', 'independent'):
    raise ValueError(f"order must be 'top_down', 'bottom_up' or "
                     f"'independent', got {order!r}")
  paths, leaves, treedef = _leaf_paths(params)
  if layers is None:
    prefixes = _default_groups(paths)
  else:
    by_name = {}
    for p in paths:
      for d in range(1, len(p) + 1):
        by_name.setdefault(_name(p[:d]), p[:d])
    missing = [name for name in layers if name not in by_name]
    if missing:
      raise ValueError(f'unknown layers {missing}; parameter paths look like '
                       f'{sorted(_name(p) for p in paths)[:6]}')
    prefixes = [by_name[name] for name in layers]
  names = [_name(p) for p in prefixes]

  def members(prefix):
    return [i for i, p in enumerate(paths) if p[:len(prefix)] == prefix
            and not _frozen(p, leaves[i])]

  chosen = sorted({i for prefix in prefixes for i in members(prefix)})
  drawn = dict(zip(chosen, _resample([_value(leaves[i]) for i in chosen],
                                     key)))
  redrawn = {i: (leaves[i].replace(drawn[i]) if _is_variable(leaves[i])
                 else drawn[i]) for i in chosen}

  fn = jax.jit(map_fn) if jit else map_fn
  reference = fn(params, x_batch, y_batch)
  sequence = list(zip(names, prefixes))
  if order == 'top_down':
    sequence.reverse()
  out: dict[str, jax.Array] = {}
  current = list(leaves)
  for name, prefix in sequence:
    if order == 'independent':
      current = list(leaves)
    for i in members(prefix):
      current[i] = redrawn[i]
    randomised = jax.tree_util.tree_unflatten(treedef, current)
    out[name] = spearman_correlation(reference, fn(randomised, x_batch,
                                                   y_batch))
  return out
