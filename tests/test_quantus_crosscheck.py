"""Our localisation scores against Quantus's on the same random arrays.

Quantus sorts with a non-stable argsort and finds maxima by equality, so the
rank-based scores are compared on continuous maps (no ties), where every
definition agrees; scores that do not depend on an ordering (mass, AUC) are
also compared on maps with many ties.
Quantus's normalisation and absolute value are disabled; our scores are
invariant to its max-normalisation anyway. Quantus's PointingGame keeps its
result in a bool array, so its NaN for an empty mask becomes True; only the
other metrics are compared on the empty mask.
"""

from __future__ import annotations

import numpy as np
import pytest

quantus = pytest.importorskip('quantus')

from cfx_jax import metrics

N, H, W = 6, 16, 16


pytestmark = pytest.mark.filterwarnings('ignore::UserWarning',
                                        'ignore::RuntimeWarning')


def _arrays(seed, levels=None):
  rng = np.random.default_rng(seed)
  if levels is None:
    a = rng.random((N, 1, H, W)).astype(np.float32)
  else:
    a = rng.integers(0, levels, (N, 1, H, W)).astype(np.float32)
  s = rng.random((N, 1, H, W)) < rng.uniform(0.1, 0.5, (N, 1, 1, 1))
  s = s.astype(np.float32)
  s[0] = 0.0  # an empty mask: NaN on both sides
  x = rng.uniform(-1, 1, (N, 3, H, W)).astype(np.float32)
  return x, np.zeros(N, np.int64), a, s


def _quantus(metric, seed, levels=None):
  x, y, a, s = _arrays(seed, levels)
  out = metric(model=None, x_batch=x, y_batch=y, a_batch=a, s_batch=s,
               channel_first=True)
  return np.asarray(out, np.float64), a[:, 0], s[:, 0]


KW = {'abs': False, 'normalise': False, 'disable_warnings': True}
CASES = [
    ('relevance_mass', lambda: quantus.RelevanceMassAccuracy(**KW),
     metrics.relevance_mass_accuracy, 1e-6),
    ('attribution_localisation',
     lambda: quantus.AttributionLocalisation(**KW),
     metrics.relevance_mass_accuracy, 1e-6),
    ('relevance_rank', lambda: quantus.RelevanceRankAccuracy(**KW),
     metrics.relevance_rank_accuracy, 1e-6),
    ('top_k_13', lambda: quantus.TopKIntersection(k=13, **KW),
     lambda a, s: metrics.top_k_intersection(a, s, 13), 1e-6),
    ('top_k_100', lambda: quantus.TopKIntersection(k=100, **KW),
     lambda a, s: metrics.top_k_intersection(a, s, 100), 1e-6),
    ('auc', lambda: quantus.AUC(**KW), metrics.pixel_auroc, 1e-5),
    ('pointing_game', lambda: quantus.PointingGame(**KW),
     metrics.pointing_game, 0.0),
]


@pytest.mark.parametrize('name,make,ours,atol', CASES,
                         ids=[c[0] for c in CASES])
@pytest.mark.parametrize('seed', [0, 1])
def test_matches_quantus(name, make, ours, atol, seed):
  want, a, s = _quantus(make(), seed)
  got = np.asarray(ours(a, s), np.float64)
  assert np.isnan(got[0]), name
  if name != 'pointing_game':
    assert np.isnan(want[0]), name
  np.testing.assert_allclose(got[1:], want[1:], atol=atol, rtol=0, err_msg=name)


TIE_FREE_ORDER = ('relevance_mass', 'attribution_localisation', 'auc')


@pytest.mark.parametrize('name,make,ours,atol',
                         [c for c in CASES if c[0] in TIE_FREE_ORDER],
                         ids=list(TIE_FREE_ORDER))
def test_matches_quantus_with_ties(name, make, ours, atol):
  want, a, s = _quantus(make(), seed=2, levels=4)
  got = np.asarray(ours(a, s), np.float64)
  np.testing.assert_allclose(got[1:], want[1:], atol=atol, rtol=0, err_msg=name)
