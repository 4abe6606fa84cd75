"""Localisation, faithfulness, realism, sanity and counterfactual metrics."""

from __future__ import annotations

from cfx_jax.metrics.realism_autoencoder import (
    AutoencoderEncoder,
    ConvAutoencoder,
    train_autoencoder,
)
from cfx_jax.metrics.counterfactual import (
    counterfactual_report,
    flip_rate,
    preservation_rate,
    proximity_l1,
    proximity_l2,
    sparsity,
)
from cfx_jax.metrics.faithfulness import (
    InsertionDeletion,
    gaussian_blur,
    insertion_deletion,
)
from cfx_jax.metrics.localization import (
    average_precision,
    iou_at_percentile,
    iou_curve,
    iou_curve_area,
    localization_report,
    normalized_cross_correlation,
    pixel_auroc,
    pointing_game,
    relevance_mass_accuracy,
    relevance_rank_accuracy,
    top_k_intersection,
)
from cfx_jax.metrics.realism import (
    frechet_distance,
    frechet_distance_from_stats,
    gaussian_stats,
    kernel_inception_distance,
)
from cfx_jax.metrics.truth import (
    change_outside,
    truth_report,
    twin_removal,
)
from cfx_jax.metrics.sanity import (
    layer_groups,
    parameter_randomisation,
    spearman_correlation,
)

__all__ = [
    'AutoencoderEncoder',
    'ConvAutoencoder',
    'InsertionDeletion',
    'average_precision',
    'counterfactual_report',
    'flip_rate',
    'frechet_distance',
    'frechet_distance_from_stats',
    'gaussian_blur',
    'gaussian_stats',
    'insertion_deletion',
    'iou_at_percentile',
    'iou_curve',
    'iou_curve_area',
    'kernel_inception_distance',
    'layer_groups',
    'localization_report',
    'normalized_cross_correlation',
    'parameter_randomisation',
    'pixel_auroc',
    'pointing_game',
    'preservation_rate',
    'proximity_l1',
    'proximity_l2',
    'relevance_mass_accuracy',
    'relevance_rank_accuracy',
    'sparsity',
    'spearman_correlation',
    'top_k_intersection',
    'change_outside',
    'truth_report',
    'twin_removal',
    'train_autoencoder',
]
