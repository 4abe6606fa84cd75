"""Layers that XLA:CPU differentiates quickly: a stride-2 convolution, a 2x2 max-pool and
a 2x nearest-neighbour upsampling.

The input gradient of a strided conv is a conv with a dilated input, which XLA:CPU runs
through a slow generic path: the gradient penalty of the discriminator (a second
derivative through its stride-2 convs) took ~9x longer than the same computation
written as below. A 3x3, stride-2, 'SAME' conv on an even-sized input equals a 2x2,
stride-1 conv on the space-to-depth input (2x2 pixel blocks stacked as channels), with
the 3x3 kernel zero-padded to 4x4 and regrouped the same way. Every derivative of that
form is an ordinary stride-1 conv. The parameters stay the 3x3 kernel of `nnx.Conv`.

The regrouped kernel has 16 taps per input channel where the 3x3 one has 9: the extra
seven are zeros, but XLA multiplies them. A model's FLOPs are those of the plain strided
conv, so FLOP counts trace it under `textbook_forms("strided_conv")`, which turns the
rewrite off. `textbook_forms` turns off any rewrite of FORMS; `benchmarks/layer_forms.py`
times the step with each one off.

The gradient of `nnx.max_pool` (a reduce-window) is a select-and-scatter, which XLA:CPU
also runs slowly: `max_pool2`, the same pooling over a reshape, took a classifier's
input gradient from 5.5 to 3.3 ms on the 2-core CPU (`benchmarks/step_forms.py`).
Values and gradients are the same, ties included: the procedural images have flat
regions, so windows of equal maxima are common, and a gradient shared among them instead
of sent to the first trained a different classifier (the quick start's short run then
flipped 0.39 of its images instead of over 0.6).

`jax.image.resize(..., "nearest")` is a gather, its gradient a scatter-add; `upsample2`
writes the same 2x upsampling as a broadcast and a reshape, whose gradient is a sum over
each 2x2 block: the SyCE CPU step with the resize takes 1.05-1.07x the time
(`benchmarks/layer_forms.py`, which times each rewrite undone; `benchmarks/profile_cpu.py`
found the gather among the step's costliest non-convolution thunks).
"""

from __future__ import annotations

import contextlib

import jax
import jax.numpy as jnp
from jax import lax

FORMS = ("strided_conv", "upsample2")  # the rewrites textbook_forms undoes
_textbook: frozenset = frozenset()


@contextlib.contextmanager
def textbook_forms(*names: str):
  """Within this block the named rewrites (default: all of FORMS) trace as the plain
  layers they stand for, with the same values: to count a model's FLOPs without the
  strided convolutions' zero taps, or to time a rewrite undone. It acts when a function
  is traced: one that `jax.jit` has traced before keeps its trace."""
  unknown = set(names) - set(FORMS)
  if unknown:
    raise ValueError(f"unknown layer forms {sorted(unknown)}; known: {FORMS}")
  global _textbook
  before = _textbook
  _textbook = before | frozenset(names or FORMS)
  try:
    yield
  finally:
    _textbook = before


def upsample2(x: jax.Array) -> jax.Array:
  """(N, H, W, C) -> (N, 2H, 2W, C), each pixel repeated over a 2x2 block."""
  n, h, w, c = x.shape
  if "upsample2" in _textbook:
    return jax.image.resize(x, (n, 2 * h, 2 * w, c), method="nearest")
  x = jnp.broadcast_to(x[:, :, None, :, None, :], (n, h, 2, w, 2, c))
  return x.reshape(n, 2 * h, 2 * w, c)


def _space_to_depth(x):
  n, h, w, c = x.shape
  x = x.reshape(n, h // 2, 2, w // 2, 2, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(n, h // 2, w // 2, 4 * c)


def _regroup_kernel(k):
  """(3, 3, C, O) -> (2, 2, 4C, O): tap 2a+b of each axis goes to offset a, phase b."""
  c, o = k.shape[2:]
  k = jnp.pad(k, ((0, 1), (0, 1), (0, 0), (0, 0)))
  k = k.reshape(2, 2, 2, 2, c, o).transpose(0, 2, 1, 3, 4, 5)
  return k.reshape(2, 2, 4 * c, o)


def strided_conv(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                 dimension_numbers=None, feature_group_count=1, **kwargs):
  """Drop-in for `lax.conv_general_dilated` as used by `nnx.Conv` (NHWC, HWIO)."""
  plain = ("strided_conv" not in _textbook
           and tuple(window_strides) == (2, 2) and padding == "SAME"
           and rhs.shape[:2] == (3, 3) and feature_group_count == 1
           and lhs.ndim == 4 and lhs.shape[1] % 2 == 0 and lhs.shape[2] % 2 == 0
           and tuple(lhs_dilation or (1, 1)) == (1, 1)
           and tuple(rhs_dilation or (1, 1)) == (1, 1))
  if not plain:
    return lax.conv_general_dilated(
        lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
        rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
        feature_group_count=feature_group_count, **kwargs)
  kwargs.pop("out_sharding", None)
  return lax.conv_general_dilated(
      _space_to_depth(lhs), _regroup_kernel(rhs), (1, 1), ((0, 1), (0, 1)),
      dimension_numbers=dimension_numbers, **kwargs)


@jax.custom_vjp
def _first_max(windows):
  """Max over the last axis; its gradient goes to the first maximum only."""
  return jnp.max(windows, axis=-1)


def _first_max_fwd(windows):
  return jnp.max(windows, axis=-1), windows


def _first_max_bwd(windows, g):
  first = jax.nn.one_hot(jnp.argmax(windows, axis=-1), windows.shape[-1], dtype=g.dtype)
  return (first * g[..., None],)


_first_max.defvjp(_first_max_fwd, _first_max_bwd)


def max_pool2(x):
  """`nnx.max_pool(x, (2, 2), strides=(2, 2))` of (N, H, W, C) without a reduce-window (see
  the module docstring); an odd last row or column is dropped, as there. The gradient goes
  to the first maximum of each window in row order, as the reduce-window's does."""
  n, h, w, c = x.shape
  x = x[:, :h - h % 2, :w - w % 2]
  windows = x.reshape(n, h // 2, 2, w // 2, 2, c).transpose(0, 1, 3, 5, 2, 4)
  return _first_max(windows.reshape(n, h // 2, w // 2, c, 4))
