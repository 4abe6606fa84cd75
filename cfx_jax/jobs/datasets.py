"""Read the dataset a config names, one split at a time, as in-memory arrays."""

from __future__ import annotations

import ml_collections
import numpy as np

from cfx_jax import data as data_lib


def dataset_config(name: str, **kwargs) -> ml_collections.ConfigDict:
  """`name`: "lesions", "digits", "fashion_mnist" or any prepared TFDS dataset; kwargs
  go to its source.

  `num_train` / `num_test` set the number of images per split (lesions: procedural
  images; fashion_mnist: the first images of the split).
  """
  c = ml_collections.ConfigDict()
  c.name = name
  c.num_train = ml_collections.FieldReference(None, field_type=int)
  c.num_test = ml_collections.FieldReference(None, field_type=int)
  c.kwargs = ml_collections.ConfigDict(kwargs)
  return c


def load_split(c: ml_collections.ConfigDict, split: str) -> dict[str, np.ndarray]:
  kwargs = dict(c.kwargs)
  num = {"train": c.num_train, "test": c.num_test}.get(split)
  if num is not None:
    kwargs["num"] = num
  return data_lib.materialize(data_lib.load_source(c.name, split, **kwargs))
