"""Figures, markdown and JSON that a person reads to judge an explainer."""

from __future__ import annotations

import json
import math
import os
import sys
import warnings
from collections.abc import Mapping, Sequence

import matplotlib

if 'matplotlib.pyplot' not in sys.modules:  # a caller's own backend (and figures) stay
  matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

_PANEL_IN = 2.0
_TOP_PERCENTILE = 95.0


def _to_display(image: np.ndarray,
                value_range=(-1.0, 1.0)) -> tuple[np.ndarray, str | None]:
  """HWC image in `value_range` -> [0, 1] array for imshow, plus a cmap for grayscale."""
  lo, hi = value_range
  img = np.clip((np.asarray(image, np.float32) - lo) / (hi - lo), 0.0, 1.0)
  if img.ndim == 3 and img.shape[-1] == 1:
    return img[..., 0], 'gray'
  if img.ndim == 2:
    return img, 'gray'
  return img, None


def _class_name(k: int, class_names: Sequence[str] | None) -> str:
  if class_names is not None and 0 <= k < len(class_names):
    return str(class_names[k])
  return str(k)


def _pick_rows(predicted: np.ndarray, num_rows: int) -> list[int]:
  """Round-robin over predicted classes so the grid shows a mix of them."""
  by_class: dict[int, list[int]] = {}
  for i, k in enumerate(np.asarray(predicted).tolist()):
    by_class.setdefault(int(k), []).append(i)
  queues = list(by_class.values())
  rows: list[int] = []
  depth = 0
  while len(rows) < num_rows and any(depth < len(q) for q in queues):
    for q in queues:
      if depth < len(q) and len(rows) < num_rows:
        rows.append(q[depth])
    depth += 1
  return rows


def _top_region(saliency: np.ndarray) -> np.ndarray:
  """Pixels strictly above the map's 95th percentile, as the metrics use."""
  return saliency > np.percentile(saliency, _TOP_PERCENTILE)


def _outline(ax, region: np.ndarray, color: str) -> None:
  """Contour of a binary region; skipped when there is no edge to draw."""
  if region.any() and not region.all():
    ax.contour(region.astype(np.float32), levels=[0.5], colors=[color],
               linewidths=1.2)


def save_explanation_grid(path, images, explanation, masks=None, *,
                          num_rows: int = 8,
                          class_names: Sequence[str] | None = None,
                          twins=None, oracle_predictions=None) -> str:
  """One row per example: input, stable (when the method has one), counterfactual,
  the true counterfactual (`twins`, where the dataset renders one), map (and mask).

  `oracle_predictions` (N,), when given, adds the independent oracle's class of each
  counterfactual to its title, so an edit that fools only the explained classifier
  shows as such.

  The map panel is a per-image normalised heatmap with the outline of its
  top-5% region (the region the IoU@95 metric scores) in cyan; the mask panel
  overlays the same outline on the ground truth so overlap is visible at a
  glance.
  """
  images = np.asarray(images)
  maps = np.asarray(explanation.maps, np.float32)
  probs = np.asarray(explanation.probs)
  cf_probs = np.asarray(explanation.cf_probs)
  target = np.asarray(explanation.target)
  predicted = np.argmax(probs, axis=-1)
  rows = _pick_rows(predicted, num_rows)
  if not rows:
    raise ValueError('no examples to plot')

  has_stable = explanation.stable is not None
  columns = (['input'] + (['stable'] if has_stable else []) + ['counterfactual']
             + (['twin'] if twins is not None else []) + ['map'])
  if masks is not None:
    masks = np.asarray(masks)
    columns.append('mask')
  n_rows, n_cols = len(rows), len(columns)
  fig, axes = plt.subplots(
      n_rows, n_cols, squeeze=False,
      figsize=(_PANEL_IN * n_cols, (_PANEL_IN + 0.3) * n_rows))

  for r, i in enumerate(rows):
    ax = axes[r]
    p = int(predicted[i])
    t = int(target[i])
    img, cmap = _to_display(images[i])
    ax[0].imshow(img, cmap=cmap, vmin=0.0, vmax=1.0)
    ax[0].set_title(f'input: {_class_name(p, class_names)} ({probs[i, p]:.2f})')
    ax[0].set_ylabel(f'#{i}', fontsize=9)

    c = 1
    if has_stable:
      img, cmap = _to_display(explanation.stable[i])
      ax[c].imshow(img, cmap=cmap, vmin=0.0, vmax=1.0)
      ax[c].set_title('stable')
      c += 1

    img, cmap = _to_display(explanation.counterfactual[i])
    ax[c].imshow(img, cmap=cmap, vmin=0.0, vmax=1.0)
    flipped = int(np.argmax(cf_probs[i])) == t
    mark = '' if flipped else ' ✗'
    title = f'cf → {_class_name(t, class_names)} ({cf_probs[i, t]:.2f}){mark}'
    if oracle_predictions is not None:
      title += f'\noracle: {_class_name(int(oracle_predictions[i]), class_names)}'
    ax[c].set_title(title)
    if twins is not None:
      c += 1
      img, cmap = _to_display(twins[i])
      ax[c].imshow(img, cmap=cmap, vmin=0.0, vmax=1.0)
      ax[c].set_title('twin (ground truth)')

    m = maps[i]
    top = _top_region(m)
    ax[c + 1].imshow(m, cmap='inferno', vmin=float(m.min()),
                     vmax=float(m.max()) if m.max() > m.min() else float(m.min()) + 1)
    _outline(ax[c + 1], top, 'cyan')
    ax[c + 1].set_title(f'map (max {m.max():.2g})')

    if masks is not None:
      ax[c + 2].imshow(masks[i].astype(np.float32), cmap='gray', vmin=0.0, vmax=1.0)
      _outline(ax[c + 2], top, 'cyan')
      ax[c + 2].set_title('mask + map top 5%')

    for a in ax:
      a.set_xticks([])
      a.set_yticks([])
      a.title.set_fontsize(9)

  return save_figure(fig, path)


def _map_over(ax, image, saliency, value_range=(-1.0, 1.0)) -> None:
  """The map, normalised per image, over a faded grey copy of the input."""
  img, _ = _to_display(image, value_range)
  grey = img if img.ndim == 2 else img.mean(axis=-1)
  ax.imshow(grey, cmap='gray', vmin=0.0, vmax=1.0)
  m = np.asarray(saliency, np.float32)
  span = float(m.max() - m.min())
  ax.imshow((m - m.min()) / span if span > 0 else np.zeros_like(m), cmap='inferno',
            vmin=0.0, vmax=1.0, alpha=0.6)
  _outline(ax, _top_region(m), 'cyan')


def plot_explanation(images, explanation, path_or_ax, *, num_rows: int = 8,
                     class_names: Sequence[str] | None = None, value_range=None):
  """input | counterfactual (when there is one) | map over the input, for the first
  images (`Explanation.plot` documents `path_or_ax` and `value_range`)."""
  from cfx_jax.image_space import value_range_of

  images = np.asarray(images)
  maps = np.asarray(explanation.maps, np.float32)
  if images.ndim != 4 or images.shape[:3] != maps.shape:
    raise ValueError(f"images {images.shape} are not the (N, H, W, C) images of maps "
                     f"{maps.shape}")
  value_range = value_range_of(images, value_range)
  has_cf = explanation.counterfactual is not None
  columns = ['input'] + (['counterfactual'] if has_cf else []) + ['map over input']
  if isinstance(path_or_ax, (str, os.PathLike)):
    n = min(num_rows, len(images))
    fig, axes = plt.subplots(n, len(columns), squeeze=False,
                             figsize=(_PANEL_IN * len(columns), (_PANEL_IN + 0.3) * n))
  else:
    axes = np.asarray(path_or_ax, dtype=object)
    if axes.ndim == 0:
      axes, columns = axes.reshape(1, 1), columns[-1:]
    elif axes.ndim == 1:
      axes = axes.reshape(1, -1)
    if axes.ndim != 2 or axes.shape[1] != len(columns):
      raise ValueError(f"axes must be one Axes or an array of shape (rows, {len(columns)}) "
                       f"for the panels {columns}, got shape {axes.shape}")
    n = min(num_rows, len(images), axes.shape[0])
  probs = np.asarray(explanation.probs)
  target = np.asarray(explanation.target)
  for i in range(n):
    for ax, column in zip(axes[i], columns):
      if column == 'input':
        p = int(np.argmax(probs[i]))
        img, cmap = _to_display(images[i], value_range)
        ax.imshow(img, cmap=cmap, vmin=0.0, vmax=1.0)
        ax.set_title(f'input: {_class_name(p, class_names)} ({probs[i, p]:.2f})')
        ax.set_ylabel(f'#{i}', fontsize=9)
      elif column == 'counterfactual':
        img, cmap = _to_display(explanation.counterfactual[i], value_range)
        ax.imshow(img, cmap=cmap, vmin=0.0, vmax=1.0)
        t = int(target[i])
        title = f'cf → {_class_name(t, class_names)}'
        if explanation.cf_probs is not None:
          cf_probs = np.asarray(explanation.cf_probs)
          mark = '' if int(np.argmax(cf_probs[i])) == t else ' ✗'
          title += f' ({cf_probs[i, t]:.2f}){mark}'
        ax.set_title(title)
      else:
        _map_over(ax, images[i], maps[i], value_range)
        ax.set_title(f'map (max {maps[i].max():.2g})')
      ax.set_xticks([])
      ax.set_yticks([])
      ax.title.set_fontsize(9)
  if isinstance(path_or_ax, (str, os.PathLike)):
    return save_figure(fig, path_or_ax)
  return path_or_ax


def save_method_grid(path, images, maps: Mapping[str, np.ndarray], masks=None, *,
                     num_rows: int = 6, panels: str = 'maps',
                     row_labels: Sequence[str] | None = None) -> str:
  """input | one panel per method | ground truth, for the same images.

  Rows are images with evidence where masks exist. panels="maps": each map normalised per
  image and outlined at its top 5%, the region IoU@95 scores, so methods compare at a
  glance; panels="images": `maps` holds each method's counterfactual images instead.
  `row_labels`, one per row shown, name the rows at the left.
  """
  if panels not in ('maps', 'images'):
    raise ValueError(f"panels must be 'maps' or 'images', got {panels!r}")
  images = np.asarray(images)
  if masks is not None:
    masks = np.asarray(masks)
    rows = np.flatnonzero(masks.reshape(len(masks), -1).max(axis=1) > 0)[:num_rows]
  else:
    rows = np.linspace(0, len(images) - 1, min(num_rows, len(images))).astype(int)
  if len(rows) == 0:
    raise ValueError('no examples to plot')
  if row_labels is not None and len(row_labels) != len(rows):
    raise ValueError(f'{len(row_labels)} row labels for {len(rows)} rows')
  names = list(maps)
  n_cols = 1 + len(names) + (masks is not None)
  fig, axes = plt.subplots(len(rows), n_cols, squeeze=False,
                           figsize=(0.75 * _PANEL_IN * n_cols, 0.8 * _PANEL_IN * len(rows)))
  for r, i in enumerate(rows):
    ax = axes[r]
    img, cmap = _to_display(images[i])
    ax[0].imshow(img, cmap=cmap, vmin=0.0, vmax=1.0)
    for c, name in enumerate(names, start=1):
      if panels == 'images':
        img, cmap = _to_display(maps[name][i])
        ax[c].imshow(img, cmap=cmap, vmin=0.0, vmax=1.0)
        continue
      m = np.asarray(maps[name][i], np.float32)
      ax[c].imshow(m, cmap='inferno', vmin=float(m.min()),
                   vmax=float(m.max()) if m.max() > m.min() else float(m.min()) + 1)
      _outline(ax[c], _top_region(m), 'cyan')
    if masks is not None:
      ax[-1].imshow(masks[i].astype(np.float32), cmap='gray', vmin=0.0, vmax=1.0)
    for c, a in enumerate(ax):
      a.set_xticks([])
      a.set_yticks([])
      if r == 0:
        title = (['input'] + names + (['mask'] if masks is not None else []))[c]
        a.set_title(title, fontsize=8)
    if row_labels is not None:
      ax[0].set_ylabel(row_labels[r], fontsize=8)
  return save_figure(fig, path)


def save_iou_curve(path, curves: Mapping[str, np.ndarray]) -> str:
  """IoU vs. binarisation percentile, one line per method.

  Each curve is (P,) or per-image (N, P), averaged over images ignoring NaN.
  Percentiles are assumed evenly spaced over [0, 100].
  """
  fig, ax = plt.subplots(figsize=(5.5, 4.0))
  for name, curve in curves.items():
    c = np.asarray(curve, np.float64)
    if c.ndim == 2:
      with warnings.catch_warnings():
        warnings.simplefilter('ignore', category=RuntimeWarning)
        c = np.nanmean(c, axis=0)
    x = np.linspace(0.0, 100.0, c.shape[0])
    with warnings.catch_warnings():
      warnings.simplefilter('ignore', category=RuntimeWarning)
      area = np.nanmean(c)
    ax.plot(x, c, label=f'{name} (area {area:.3f})')
  ax.set_xlabel('map percentile threshold')
  ax.set_ylabel('IoU with ground-truth mask')
  ax.set_xlim(0, 100)
  ax.set_ylim(bottom=0)
  ax.grid(alpha=0.3)
  if curves:
    ax.legend(fontsize=8)
  return save_figure(fig, path)


def _flatten_metrics(metrics: Mapping, prefix: str = '') -> dict[str, object]:
  flat: dict[str, object] = {}
  for key, value in metrics.items():
    name = f'{prefix}/{key}' if prefix else str(key)
    if isinstance(value, Mapping):
      flat.update(_flatten_metrics(value, name))
    else:
      flat[name] = value
  return flat


def _format_value(value) -> str:
  value = _to_jsonable(value)
  if value is None:
    return 'nan'
  if isinstance(value, bool):
    return str(value)
  if isinstance(value, int):
    return str(value)
  if isinstance(value, float):
    return f'{value:.4g}'
  if isinstance(value, list):
    return ', '.join(_format_value(v) for v in value)
  return str(value).replace('|', '\\|')


def selection_table(record: Mapping) -> str:
  """Markdown: every candidate's scores by the selection's judge, the chosen one in bold,
  then the chosen one's scores by the second judge (cfx_jax/selection)."""
  cols = ('valid', 'flip', 'oracle', 'fid', 'change', 'reach', 'concentration')
  lines = ['Candidates trained side by side and judged on held-out images by an oracle '
           f'({record["images"]["held_out"]} images; `valid`: the smallest share of '
           'counterfactuals the classifier and the oracle both accept, over directions; '
           '`reach`: the change as a share of the distance to the nearest real image of '
           'the target class):', '',
           '| candidate | ' + ' | '.join(cols) + ' |', '|---' * (len(cols) + 1) + '|']
  for name, c in record['candidates'].items():
    label = f'**{name}** (chosen)' if name == record['chosen'] else name
    o = c['scores']['overall']
    lines.append(f'| {label} | ' + ' | '.join(_format_value(o.get(k)) for k in cols) + ' |')
  if record.get('final'):
    o = record['final']['scores']['overall']
    kept = '' if record['final'].get('kept', True) else ', less valid: not kept'
    lines.append(f'| the chosen setting, fitted again ({record["final"]["steps"]} steps{kept}) | '
                 + ' | '.join(_format_value(o.get(k)) for k in cols) + ' |')
  if not record.get('reported'):
    return '\n'.join(lines)
  lines += ['', 'The chosen setting by a second judge (another seed and widths) that the '
            'selection never saw:', '', '| direction | images | ' + ' | '.join(cols[1:]) + ' |',
            '|---' * (len(cols) + 1) + '|']
  for name, d in record['reported']['directions'].items():
    lines.append(f'| {name} | {d["images"]} | ' + ' | '.join(_format_value(d.get(k))
                                                             for k in cols[1:]) + ' |')
  return '\n'.join(lines)


def write_report(path, *, title: str, metrics: Mapping,
                 sections: Mapping[str, str] | None = None,
                 images: Sequence[str] | None = None) -> str:
  """Markdown report: title, metrics table, free-text sections, figures.

  Image links are written relative to the report's folder so the report and
  its figures can be moved together.
  """
  lines = [f'# {title}', '']
  flat = _flatten_metrics(metrics)
  if flat:
    lines += ['| metric | value |', '| --- | ---: |']
    lines += [f'| {k} | {_format_value(v)} |' for k, v in flat.items()]
    lines.append('')
  for heading, text in (sections or {}).items():
    lines += [f'## {heading}', '', str(text).rstrip(), '']
  if images:
    base = os.path.dirname(os.path.abspath(path))
    lines += ['## Figures', '']
    for img in images:
      rel = os.path.relpath(os.path.abspath(img), base).replace(os.sep, '/')
      name = os.path.splitext(os.path.basename(img))[0]
      lines += [f'![{name}]({rel})', '']
  _ensure_dir(path)
  with open(path, 'w', encoding='utf-8') as f:
    f.write('\n'.join(lines).rstrip() + '\n')
  return str(path)


def _to_jsonable(obj):
  """Numpy/JAX values to plain Python; non-finite floats become None."""
  if isinstance(obj, Mapping):
    return {str(k): _to_jsonable(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple, set)):
    return [_to_jsonable(v) for v in obj]
  if isinstance(obj, os.PathLike):
    return os.fspath(obj)
  if isinstance(obj, (bool, np.bool_)):
    return bool(obj)
  if isinstance(obj, (int, np.integer)):
    return int(obj)
  if isinstance(obj, (float, np.floating)):
    f = float(obj)
    return f if math.isfinite(f) else None
  if hasattr(obj, '__array__'):
    arr = np.asarray(obj)
    return _to_jsonable(arr.item() if arr.ndim == 0 else arr.tolist())
  return obj


def save_json(path, obj) -> str:
  """JSON dump that accepts numpy/JAX values and writes NaN/inf as null."""
  _ensure_dir(path)
  with open(path, 'w', encoding='utf-8') as f:
    json.dump(_to_jsonable(obj), f, indent=2, allow_nan=False)
    f.write('\n')
  return str(path)


def save_figure(fig, path) -> str:
  """Lay out, write (creating the folder) and close a figure; returns the path."""
  fig.tight_layout()
  _ensure_dir(path)
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return str(path)


def _ensure_dir(path) -> None:
  folder = os.path.dirname(os.fspath(path))
  if folder:
    os.makedirs(folder, exist_ok=True)
