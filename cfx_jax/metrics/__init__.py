"""Localisation and counterfactual-quality metrics."""

from __future__ import annotations

from cfx_jax.metrics.counterfactual import counterfactual_report
from cfx_jax.metrics.counterfactual import flip_rate
from cfx_jax.metrics.counterfactual import preservation_rate
from cfx_jax.metrics.counterfactual import proximity_l1
from cfx_jax.metrics.counterfactual import proximity_l2
from cfx_jax.metrics.counterfactual import sparsity
from cfx_jax.metrics.localization import iou_at_percentile
from cfx_jax.metrics.localization import iou_curve
from cfx_jax.metrics.localization import iou_curve_area
from cfx_jax.metrics.localization import localization_report
from cfx_jax.metrics.localization import normalized_cross_correlation
from cfx_jax.metrics.localization import pixel_auroc
from cfx_jax.metrics.localization import pointing_game

__all__ = [
    'counterfactual_report',
    'flip_rate',
    'iou_at_percentile',
    'iou_curve',
    'iou_curve_area',
    'localization_report',
    'normalized_cross_correlation',
    'pixel_auroc',
    'pointing_game',
    'preservation_rate',
    'proximity_l1',
    'proximity_l2',
    'sparsity',
]
