"""Metrics as JSON lines and a progress bar; only process 0 writes."""

from __future__ import annotations

import json
import math
import os
import sys
import time

import jax
import numpy as np
from tqdm.auto import tqdm


def is_main_process() -> bool:
  return jax.process_index() == 0


def _plain(v):
  """A float, or a list of them for a metric with one value per population member."""
  a = np.asarray(v)
  if a.ndim:
    return [_plain(x) for x in a.reshape(-1)]
  v = float(a)
  return None if math.isnan(v) or math.isinf(v) else v


class MetricsLog:
  """Appends one JSON object per logging step to `path` (None: keep in memory only)."""

  def __init__(self, path: str | None):
    self.path = path if is_main_process() else None
    self.history: list[dict] = []
    if self.path:
      os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)

  def write(self, step: int, metrics: dict, **raw) -> dict:
    """`metrics` are scalars (NaN/inf become null); `raw` values are written as given."""
    row = {"step": int(step), **{k: _plain(v) for k, v in metrics.items()}, **raw}
    self.history.append(row)
    if self.path:
      with open(self.path, "a") as f:
        f.write(json.dumps(row) + "\n")
    return row


  def truncate_after(self, step: int) -> None:
    """Drop rows past `step`: a resumed run rewrites them, so none appears twice."""
    if not self.path or not os.path.exists(self.path):
      return
    with open(self.path) as f:
      rows = [line for line in f if line.strip() and json.loads(line)["step"] <= step]
    with open(self.path, "w") as f:
      f.writelines(rows)


class Progress:
  """A tqdm bar with ETA on a terminal; periodic one-line updates otherwise."""

  def __init__(self, total: int, initial: int = 0, desc: str = "train",
               enabled: bool = True, unit: str = "step"):
    self.enabled = enabled and is_main_process()
    self.interactive = sys.stderr.isatty()
    self.total, self.desc, self.start, self.first = total, desc, time.time(), initial
    self.unit = unit
    self.bar = None
    if self.enabled and self.interactive:
      self.bar = tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True)

  def update(self, step: int, metrics: dict | None = None) -> None:
    """Called on logging steps with freshly fetched metrics."""
    if not self.enabled:
      return
    shown = {k: (f"{v:.3g}" if not isinstance(v, list) else
                 "/".join("-" if x is None else f"{x:.2g}" for x in v))
             for k, v in (metrics or {}).items() if v is not None}
    if self.bar is not None:
      self.bar.n = step
      self.bar.set_postfix(shown, refresh=True)
      return
    done = step - self.first
    rate = done / max(time.time() - self.start, 1e-9)
    eta = (self.total - step) / rate if rate > 0 else float("nan")
    text = " ".join(f"{k}={v}" for k, v in shown.items())
    print(f"[{self.desc}] {self.unit} {step}/{self.total} {rate:.2f} it/s eta {eta:.0f}s {text}",
          file=sys.stderr, flush=True)

  def close(self) -> None:
    if self.bar is not None:
      self.bar.close()
