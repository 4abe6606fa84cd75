"""Report figures, markdown and JSON are written and well-formed."""

from __future__ import annotations

import dataclasses
import json
import math
import struct

import numpy as np
import pytest

from cfx_jax import report
from cfx_jax.explanation import Explanation

_PNG_MAGIC = b'\x89PNG\r\n\x1a\n'


def _png_size(path):
  with open(path, 'rb') as f:
    head = f.read(24)
  assert head[:8] == _PNG_MAGIC, 'not a PNG'
  return struct.unpack('>II', head[16:24])  # width, height


def _explanation(n=5, h=16, w=16, c=3, k=3, seed=0):
  rng = np.random.default_rng(seed)
  images = rng.uniform(-1, 1, (n, h, w, c)).astype(np.float32)
  probs = rng.dirichlet(np.ones(k), n).astype(np.float32)
  e = Explanation(
      maps=rng.random((n, h, w)).astype(np.float32),
      counterfactual=np.clip(images + 0.3, -1, 1),
      stable=images * 0.9,
      target=rng.integers(0, k, n).astype(np.int32),
      probs=probs,
      cf_probs=rng.dirichlet(np.ones(k), n).astype(np.float32))
  masks = (rng.random((n, h, w)) > 0.7).astype(np.float32)
  return images, e, masks


@pytest.mark.parametrize('channels', [1, 3])
@pytest.mark.parametrize('with_masks', [False, True])
def test_explanation_grid(tmp_path, channels, with_masks):
  images, e, masks = _explanation(c=channels)
  path = tmp_path / 'sub' / 'grid.png'
  out = report.save_explanation_grid(
      path, images, e, masks if with_masks else None, num_rows=3,
      class_names=['a', 'b', 'c'])
  assert out == str(path)
  width, height = _png_size(path)
  # About 2 inches (200 px) per panel: 4 or 5 columns, 3 rows.
  n_cols = 5 if with_masks else 4
  assert 150 * n_cols <= width <= 250 * n_cols
  assert 3 * 150 <= height <= 3 * 300
  assert path.stat().st_size > 5_000


def test_grid_handles_constant_map_and_few_examples(tmp_path):
  images, e, masks = _explanation(n=2)
  e = dataclasses.replace(e, maps=np.zeros_like(e.maps))
  path = tmp_path / 'grid.png'
  report.save_explanation_grid(path, images, e, masks, num_rows=8)
  _, height = _png_size(path)
  assert height < 700  # Only the two available rows.


def test_method_grid_of_images_with_row_labels(tmp_path):
  images, e, masks = _explanation(n=4)
  masks[:] = 0
  masks[:, 4:8, 4:8] = 1  # every row has evidence
  cfs = {'one': e.counterfactual, 'two': e.stable}
  path = tmp_path / 'methods.png'
  report.save_method_grid(path, images, cfs, masks, num_rows=4, panels='images',
                          row_labels=['a', 'b', 'c', 'd'])
  width, height = _png_size(path)
  assert width > 3 * 100 and height > 4 * 100  # input, two methods, mask; four rows
  with pytest.raises(ValueError, match='3 row labels for 4 rows'):
    report.save_method_grid(path, images, cfs, masks, num_rows=4, panels='images',
                            row_labels=['a', 'b', 'c'])


def test_pick_rows_mixes_classes():
  predicted = np.array([0, 0, 0, 0, 1, 1, 2])
  assert report._pick_rows(predicted, 4) == [0, 4, 6, 1]
  assert sorted(report._pick_rows(predicted, 10)) == list(range(7))


def test_iou_curve_plot(tmp_path):
  rng = np.random.default_rng(0)
  curves = {'per_image': rng.random((4, 101)),
            'mean': np.linspace(0.5, 0.0, 101),
            'with_nan': np.where(np.arange(101) % 2, np.nan, 0.2)[None]
                        .repeat(3, 0)}
  path = tmp_path / 'iou.png'
  report.save_iou_curve(path, curves)
  width, height = _png_size(path)
  assert width > 300 and height > 200


def test_write_report(tmp_path):
  (tmp_path / 'figs').mkdir()
  fig = tmp_path / 'figs' / 'grid.png'
  fig.write_bytes(_PNG_MAGIC)
  metrics = {
      'localization': {'pixel_auroc': np.float32(0.876543), 'n_images': 12},
      'flip_rate': 0.5,
      'ncc': float('nan'),
      'nested': {'deeper': {'x': np.int64(3)}},
  }
  path = tmp_path / 'report.md'
  report.write_report(path, title='Run 1', metrics=metrics,
                      sections={'Notes': 'Looks fine.'}, images=[str(fig)])
  text = path.read_text()
  assert text.startswith('# Run 1\n')
  assert '| localization/pixel_auroc | 0.8765 |' in text
  assert '| localization/n_images | 12 |' in text
  assert '| flip_rate | 0.5 |' in text
  assert '| ncc | nan |' in text
  assert '| nested/deeper/x | 3 |' in text
  assert '## Notes\n\nLooks fine.' in text
  assert '](figs/grid.png)' in text


def test_save_json(tmp_path):
  obj = {
      'a': np.float32(1.5), 'b': np.arange(3), 'c': float('nan'),
      'd': np.array([1.0, np.nan, np.inf]), 'e': (np.int32(2), np.bool_(True)),
      'f': {'g': np.float64(2.25)}, 3: 'int key',
  }
  path = tmp_path / 'out' / 'm.json'
  report.save_json(path, obj)
  text = path.read_text()
  assert 'NaN' not in text and 'Infinity' not in text
  loaded = json.loads(text)
  assert loaded == {'a': 1.5, 'b': [0, 1, 2], 'c': None,
                    'd': [1.0, None, None], 'e': [2, True], 'f': {'g': 2.25},
                    '3': 'int key'}


def test_save_json_accepts_jax_arrays(tmp_path):
  jnp = pytest.importorskip('jax.numpy')
  path = tmp_path / 'j.json'
  report.save_json(path, {'x': jnp.array([0.5, jnp.nan]), 'y': jnp.float32(2)})
  loaded = json.loads(path.read_text())
  assert loaded['x'][0] == 0.5 and loaded['x'][1] is None
  assert math.isclose(loaded['y'], 2.0)
