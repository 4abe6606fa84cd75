"""Saved folders that are whole or absent, and that say when they have changed.

A save writes into a hidden sibling folder, lists the sha256 of every file in
`manifest.json` last, and only then renames the folder into place, so a killed save
leaves the previous one whole and a save over an older one leaves only the new files.
A load checks the manifest first: a flipped byte, a truncated, missing or added file, or
an edited JSON is refused with the file's name instead of loading a wrong model.

Saves and loads nest: a folder at or under one being saved is written in place and
covered by the outer manifest; one at or under a folder already checked is not checked
again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import threading

import jax

MANIFEST = "manifest.json"
FORMAT = 1
_local = threading.local()


class DamagedSaveError(ValueError):
  """A saved folder does not hold what its save wrote."""


def file_hash(path: str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()


def _files(root: str) -> list[str]:
  """Every file under `root` but the manifest, relative, sorted."""
  out = []
  for d, _, names in os.walk(root):
    for name in names:
      rel = os.path.relpath(os.path.join(d, name), root)
      if rel != MANIFEST:
        out.append(rel.replace(os.sep, "/"))
  return sorted(out)


def _digest(files: dict) -> str:
  return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()


def write_manifest(root: str) -> None:
  """List every file under `root` with its sha256, in `root/manifest.json`."""
  files = {rel: file_hash(os.path.join(root, rel)) for rel in _files(root)}
  tmp = os.path.join(root, MANIFEST + ".tmp")
  with open(tmp, "w") as f:
    json.dump({"format": FORMAT, "files": files, "digest": _digest(files)}, f, indent=1)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, os.path.join(root, MANIFEST))


def problems(root: str) -> list[str]:
  """What differs between `root` and its manifest, one line per file (empty: intact)."""
  file = os.path.join(root, MANIFEST)
  if not os.path.exists(file):
    return [f"{MANIFEST} is missing (the save did not finish, the folder was edited, or "
            "it was written by a cfx_jax without manifests)"]
  try:
    with open(file) as f:
      manifest = json.load(f)
    files = manifest["files"]
    if manifest.get("format") != FORMAT or manifest.get("digest") != _digest(files):
      raise ValueError("its digest does not match its list")
  except (ValueError, KeyError, TypeError, AttributeError) as e:
    return [f"{MANIFEST} is damaged ({e})"]
  out = []
  for rel, expected in files.items():
    full = os.path.join(root, rel)
    if not os.path.isfile(full):
      out.append(f"{rel} is missing")
    elif file_hash(full) != expected:
      edited = " (the JSON was changed after saving)" if rel.endswith(".json") else ""
      out.append(f"{rel} does not match its content hash{edited}")
  out += [f"{rel} was not written by the save" for rel in _files(root) if rel not in files]
  return out


def _under(path: str, roots) -> bool:
  return any(path == r or path.startswith(r + os.sep) for r in roots)


def _stack(name: str) -> list[str]:
  if not hasattr(_local, name):
    setattr(_local, name, [])
  return getattr(_local, name)


def check(path: str, what: str) -> None:
  """Raise `DamagedSaveError` naming each damaged file unless `path` is intact (or lies
  in a folder being saved or already checked)."""
  path = os.path.abspath(path)
  if _under(path, _stack("saving")) or _under(path, _stack("checked")):
    return
  if not os.path.isdir(path):
    old = _sibling(path, "old")
    hint = (f"; an interrupted save left the previous one at {old}: rename it back"
            if os.path.isdir(old) else "")
    raise FileNotFoundError(f"no saved {what} at {path}{hint}")
  found = problems(path)
  if found:
    raise DamagedSaveError(f"the saved {what} at {path} is damaged: " + "; ".join(found)
                           + ". Refit it or restore it from a backup")


@contextlib.contextmanager
def checked(path: str, what: str):
  """Check `path` once; loads of folders at or under it inside the block skip the check."""
  path = os.path.abspath(path)
  check(path, what)
  stack = _stack("checked")
  stack.append(path)
  try:
    yield path
  finally:
    stack.pop()


def _sibling(path: str, kind: str) -> str:
  parent, name = os.path.split(path)
  return os.path.join(parent, f".{name}.{kind}")


def _sync(name: str) -> None:
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)


@contextlib.contextmanager
def saving(path: str):
  """Yield the folder to write the save of `path` into; on a clean exit seal it with a
  manifest and put it in place of `path`, replacing any older save whole. Every process
  enters it (process 0 does the file work)."""
  path = os.path.abspath(path)
  if _under(path, _stack("saving")):
    os.makedirs(path, exist_ok=True)
    yield path
    return
  staging, main = _sibling(path, "saving"), jax.process_index() == 0
  if os.path.exists(path) and not os.path.isdir(path):
    raise NotADirectoryError(f"cannot save to {path}: it is a file")
  if main:
    shutil.rmtree(staging, ignore_errors=True)
    os.makedirs(staging)
  _sync(f"cfx_jax saving {path}")
  stack = _stack("saving")
  stack.append(staging)
  try:
    yield staging
  except BaseException:
    if main:
      shutil.rmtree(staging, ignore_errors=True)
    raise
  finally:
    stack.pop()
  _sync(f"cfx_jax saved {path}")
  if main:
    write_manifest(staging)
    _replace(staging, path)
  _sync(f"cfx_jax placed {path}")


def _replace(new: str, path: str) -> None:
  """Move the sealed folder `new` to `path`; an older save there is removed only after."""
  old = _sibling(path, "old")
  shutil.rmtree(old, ignore_errors=True)
  if os.path.isdir(path):
    os.rename(path, old)
  os.rename(new, path)
  shutil.rmtree(old, ignore_errors=True)


__all__ = ["DamagedSaveError", "MANIFEST", "check", "checked", "problems", "saving",
           "write_manifest"]
