"""Datasets (procedural lesions and attributes, digits, Fashion-MNIST, TFDS) and
deterministic pipelines.
"""

from __future__ import annotations

from cfx_jax.data.attributes import make_attribute_images
from cfx_jax.data.digits import make_digits
from cfx_jax.data.fashion_mnist import make_fashion_mnist
from cfx_jax.data.lesions import lesion_twins
from cfx_jax.data.lesions import make_lesions
from cfx_jax.data.pipeline import batches
from cfx_jax.data.pipeline import grouped_batches
from cfx_jax.data.pipeline import to_global
from cfx_jax.data.sources import ArraySource
from cfx_jax.data.sources import DatasetNotPreparedError
from cfx_jax.data.sources import load_source
from cfx_jax.data.sources import materialize
from cfx_jax.data.sources import tfds_source

__all__ = [
    "ArraySource",
    "DatasetNotPreparedError",
    "batches",
    "grouped_batches",
    "load_source",
    "make_attribute_images",
    "make_digits",
    "make_fashion_mnist",
    "lesion_twins",
    "make_lesions",
    "materialize",
    "tfds_source",
    "to_global",
]
