"""Saved models on disk: a JSON description beside an orbax pytree of arrays, sealed by a
manifest of content hashes (`cfx_jax.integrity`) and checked against it when read."""

from __future__ import annotations

import hashlib
import json
import os

import jax
import orbax.checkpoint as ocp

from cfx_jax import integrity


def save(path: str, meta_file: str, meta: dict, tree_dir: str, tree) -> None:
  """Every process calls this (orbax synchronises them); only process 0 writes the JSON."""
  with integrity.saving(path) as folder:
    if jax.process_index() == 0:
      with open(os.path.join(folder, meta_file), "w") as f:
        json.dump(meta, f, indent=2, default=str)
    with ocp.StandardCheckpointer() as ckpt:
      ckpt.save(os.path.join(folder, tree_dir), tree, force=True)


def read_meta(path: str, meta_file: str, what: str) -> dict:
  """The JSON of the model saved at `path`, after checking the folder against its manifest
  (unless a caller already checked a folder around it)."""
  integrity.check(path, what)
  meta_path = os.path.join(os.path.abspath(path), meta_file)
  if not os.path.exists(meta_path):
    raise FileNotFoundError(f"no saved {what} at {os.path.abspath(path)} (missing {meta_file})")
  with open(meta_path) as f:
    return json.load(f)


def restore(path: str, tree_dir: str, abstract):
  """Restore into the structure, shapes and dtypes of `abstract`, after checking that the
  saved arrays have that structure and those shapes: the network the JSON describes must
  be the one the weights were trained as."""
  folder = os.path.join(os.path.abspath(path), tree_dir)
  with ocp.StandardCheckpointer() as ckpt:
    saved, wanted = _shapes(ckpt.metadata(folder).item_metadata), _shapes(abstract)
    if saved != wanted:
      diff = sorted(set(saved.items()) ^ set(wanted.items()))[:3]
      raise ValueError(f"the weights in {folder} do not fit the network its JSON describes "
                       f"(first differences, name and shape: {diff}); refit it")
    return ckpt.restore(folder, abstract)


def _shapes(tree) -> dict[str, tuple[int, ...]]:
  """{path: shape} of the arrays of a tree, paths written the same for every tree kind."""
  out = {}
  for keys, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    if hasattr(leaf, "shape"):
      name = "/".join(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k))))
                      for k in keys)
      out[name] = tuple(leaf.shape)
  return out


def digest(path: str) -> str:
  """Content hash of a saved model's directory (names and bytes of every file): a cache
  keyed on it is invalidated by a new model, not by a copy or a touch."""
  h = hashlib.sha256()
  root = os.path.abspath(path)
  for d, dirs, files in sorted(os.walk(root)):
    for name in sorted(files):
      full = os.path.join(d, name)
      h.update(os.path.relpath(full, root).encode() + b"\0")
      with open(full, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
          h.update(block)
  return h.hexdigest()[:16]
