"""Saved models on disk: a JSON description beside an orbax pytree of arrays."""

from __future__ import annotations

import hashlib
import json
import os

import jax
import orbax.checkpoint as ocp


def save(path: str, meta_file: str, meta: dict, tree_dir: str, tree) -> None:
  """Every process calls this (orbax synchronises them); only process 0 writes the JSON."""
  path = os.path.abspath(path)
  if jax.process_index() == 0:
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, meta_file), "w") as f:
      json.dump(meta, f, indent=2, default=str)
  with ocp.StandardCheckpointer() as ckpt:
    ckpt.save(os.path.join(path, tree_dir), tree, force=True)


def read_meta(path: str, meta_file: str, what: str) -> dict:
  meta_path = os.path.join(os.path.abspath(path), meta_file)
  if not os.path.exists(meta_path):
    raise FileNotFoundError(f"no saved {what} at {os.path.abspath(path)} (missing {meta_file})")
  with open(meta_path) as f:
    return json.load(f)


def restore(path: str, tree_dir: str, abstract):
  """Restore into the structure, shapes and dtypes of `abstract`."""
  with ocp.StandardCheckpointer() as ckpt:
    return ckpt.restore(os.path.join(os.path.abspath(path), tree_dir), abstract)


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
