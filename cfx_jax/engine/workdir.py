"""What a work directory holds results of, so that a rerun resumes only the same run.

Each stage that writes into a work directory (the train job's classifier, an explainer)
records its identity in `<workdir>/identity.json`: the settings that determine its
result, a hash of its training images, its seed and the classifier's fingerprint. A
rerun whose identity differs is refused with the list of what changed; with
`restart=True` that stage, and every stage recorded after it, starts over: what they
wrote is deleted. Settings that change no result (how often to log or checkpoint,
progress output, the device layout) are not part of it, and more training steps
continue a run.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import warnings

import numpy as np

from cfx_jax.engine.logging import is_main_process

RECORD = "identity.json"
LOCK = ".lock"
# Settings that change how a run reports or where it runs, not what it computes: a
# checkpoint resumes on another device layout (tests/test_scaling.py).
CADENCE = ("log_every", "checkpoint_every", "keep_checkpoints", "progress",
           "log_example_ids", "warn_failures", "num_devices", "fsdp", "chunk_size")
# Step counts that may grow: the rerun continues training from the last checkpoint.
GROWING = ("steps", "vae_steps", "predictor_steps", "shift_steps")
CLASSIFIER_TOLERANCE = 1e-3


class WorkdirWarning(UserWarning):
  """A work directory was taken over or started over."""


def data_hash(*arrays) -> str:
  """sha256 of the arrays' shapes, dtypes and bytes."""
  h = hashlib.sha256()
  for a in arrays:
    if a is None:
      continue
    a = np.ascontiguousarray(np.asarray(a))
    h.update(f"{a.shape}{a.dtype}".encode())
    h.update(memoryview(a).cast("B"))
  return h.hexdigest()


def settings_identity(flat: dict) -> dict:
  """The settings of a flat dict that determine a result (all but `CADENCE`)."""
  out = {k: v for k, v in flat.items() if k.rsplit(".", 1)[-1] not in CADENCE}
  return json.loads(json.dumps(out, default=str))


def differences(old: dict, new: dict) -> list[str]:
  """`key: old -> new` for each entry that differs, where more steps do not count."""
  lines = []
  for key in sorted(set(old) | set(new)):
    a, b = old.get(key), new.get(key)
    if key in GROWING and (a is None or b is None or b >= a):
      continue
    if key == "classifier":
      if not _same_outputs(a, b):
        lines.append("classifier: its outputs on the probe images differ (another "
                     "classifier)")
      continue
    if a != b:
      lines.append(f"{key}: {_short(a)} -> {_short(b)}")
  return lines


def _same_outputs(a, b) -> bool:
  try:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  except (TypeError, ValueError):
    return a == b
  return a.shape == b.shape and np.allclose(a, b, atol=CLASSIFIER_TOLERANCE,
                                            rtol=CLASSIFIER_TOLERANCE)


def _short(value) -> str:
  text = json.dumps(value) if not isinstance(value, str) else value
  if isinstance(value, str) and len(value) == 64:  # a hash
    return value[:12]
  return text if len(text) <= 60 else text[:57] + "..."


def read(workdir: str) -> list[dict]:
  """The recorded stages, in the order they first ran."""
  path = os.path.join(workdir, RECORD)
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return json.load(f)["stages"]


def _write(workdir: str, stages: list[dict]) -> None:
  path = os.path.join(workdir, RECORD)
  with open(path + ".tmp", "w") as f:
    json.dump({"stages": stages}, f, indent=2)
  os.replace(path + ".tmp", path)


def claim(workdir: str, stage: str, identity: dict, *, restart: bool = False) -> None:
  """Record `identity` for `stage` in `workdir`, or refuse a rerun of another one.

  A stage seen for the first time notes what the folder held before it, which is kept
  when it starts over. Raises ValueError with the differences unless `restart`.
  """
  if not is_main_process():
    return
  os.makedirs(workdir, exist_ok=True)
  identity = json.loads(json.dumps(identity, default=str))
  stages = read(workdir)
  names = [s["stage"] for s in stages]
  if stage not in names:
    kept = sorted(set(os.listdir(workdir)) - {RECORD, LOCK, RECORD + ".tmp"})
    _write(workdir, stages + [{"stage": stage, "identity": identity, "kept": kept}])
    return
  i = names.index(stage)
  changed = differences(stages[i]["identity"], identity)
  if changed and not restart:
    raise ValueError(f"{workdir} holds the {stage} of a run with other settings:\n  "
                     + "\n  ".join(f"{stage}.{c}" for c in changed)
                     + "\nrerun with the recorded settings, use another workdir, or start "
                     "this stage over with restart=True (--config.runtime.restart=True)")
  if changed:
    kept = set(stages[i]["kept"]) | {RECORD, LOCK}
    removed = sorted(set(os.listdir(workdir)) - kept)
    for name in removed:
      path = os.path.join(workdir, name)
      shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
    later = [s["stage"] for s in stages[i + 1:]]
    warnings.warn(f"{stage} in {workdir} starts over ({'; '.join(changed)}): removed "
                  f"{', '.join(removed) or 'nothing'}"
                  + (f" and the record of {', '.join(later)}" if later else ""),
                  WorkdirWarning, stacklevel=2)
    stages = stages[:i]
    stages.append({"stage": stage, "identity": identity, "kept": sorted(kept - {RECORD,
                                                                               LOCK})})
  else:
    stages[i]["identity"] = identity  # more steps: the record follows the run
  _write(workdir, stages)
