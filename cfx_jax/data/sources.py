"""Random-access data sources with one record convention for every dataset.

Records are dicts of numpy arrays: "image" float32 (H, W, C) in [-1, 1],
"label" int32 scalar, and optionally "mask" float32 (H, W). Everything
downstream (pipelines, training, metrics) reads datasets only through this
interface, so procedural, bundled and TFDS datasets are interchangeable.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from cfx_jax.data.attributes import make_attribute_images
from cfx_jax.data.digits import make_digits
from cfx_jax.data.fashion_mnist import APT_PACKAGE
from cfx_jax.data.fashion_mnist import fashion_mnist_available
from cfx_jax.data.fashion_mnist import make_fashion_mnist
from cfx_jax.data.lesions import make_lesions

_LESION_SPLITS = {"train": 0, "test": 1, "validation": 2}
_LESION_DEFAULT_NUM = {"train": 10_000, "test": 2_000, "validation": 2_000}


class DatasetNotPreparedError(FileNotFoundError):
  """A TFDS dataset exists but has not been prepared for random access here."""


class ArraySource:
  """Random-access source over in-memory arrays sharing a leading axis.

  Implements the `__len__`/`__getitem__` protocol grain expects, and exposes
  the arrays so batching can gather many records with one fancy index.
  """

  def __init__(self, arrays: Mapping[str, np.ndarray]):
    if not arrays:
      raise ValueError("ArraySource needs at least one array")
    self._arrays = {k: np.asarray(v) for k, v in arrays.items()}
    lengths = {k: (v.shape[0] if v.ndim else None)
               for k, v in self._arrays.items()}
    if None in lengths.values() or len(set(lengths.values())) != 1:
      raise ValueError(
          f"all arrays need the same leading length, got {lengths}")
    self._len = next(iter(lengths.values()))

  @property
  def arrays(self) -> dict[str, np.ndarray]:
    return self._arrays

  def __len__(self) -> int:
    return self._len

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    index = int(index)
    if not -self._len <= index < self._len:
      raise IndexError(f"index {index} out of range for {self._len} records")
    return {k: v[index] for k, v in self._arrays.items()}

  def __getitems__(self, indices: Sequence[int]) -> list[dict[str, np.ndarray]]:
    return [self[i] for i in indices]

  def __repr__(self) -> str:
    shapes = {k: (v.shape, str(v.dtype)) for k, v in self._arrays.items()}
    return f"ArraySource({shapes})"


class _TfdsSource:
  """Converts TFDS records (uint8 image, integer label) to our convention."""

  def __init__(self, source: Any, image_key: str, label_key: str):
    self._source = source
    self._image_key = image_key
    self._label_key = label_key

  def __len__(self) -> int:
    return len(self._source)

  def _convert(self, record: Mapping[str, Any]) -> dict[str, np.ndarray]:
    image = np.asarray(record[self._image_key])
    if image.ndim == 2:
      image = image[..., None]
    if image.dtype == np.uint8:
      image = image.astype(np.float32) / 127.5 - 1.0
    else:
      image = image.astype(np.float32)
    label = np.asarray(record[self._label_key]).astype(np.int32)
    return {"image": image, "label": label}

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    index = int(index)
    if not -len(self) <= index < len(self):
      raise IndexError(f"index {index} out of range for {len(self)} records")
    return self._convert(self._source[index])

  def __getitems__(self, indices: Sequence[int]) -> list[dict[str, np.ndarray]]:
    indices = [int(i) for i in indices]
    getitems = getattr(self._source, "__getitems__", None)
    records = (getitems(indices) if getitems is not None
               else [self._source[i] for i in indices])
    return [self._convert(r) for r in records]

  def __repr__(self) -> str:
    return f"tfds_source({self._source!r})"


def tfds_source(
    name: str,
    split: str,
    *,
    data_dir: str | None = None,
    image_key: str = "image",
    label_key: str = "label",
) -> _TfdsSource:
  """Opens a locally prepared TFDS dataset (array_record) without TensorFlow.

  Never downloads: a dataset that is not prepared raises
  `DatasetNotPreparedError` explaining how to prepare it.
  """
  import tensorflow_datasets as tfds  # Lazy: importing TFDS is slow.

  try:
    source = tfds.data_source(
        name, split=split, data_dir=data_dir, download=False)
  except tfds.core.registered.DatasetNotFoundError as e:
    raise ValueError(
        f"unknown dataset {name!r}: not 'lesions', 'digits' or a TFDS "
        "dataset name") from e
  except (NotImplementedError, FileNotFoundError) as e:
    # Without a prepared copy TFDS falls back to its default (non random
    # access) file format and raises NotImplementedError.
    where = data_dir or "the default TFDS data_dir (~/tensorflow_datasets)"
    raise DatasetNotPreparedError(
        f"TFDS dataset {name!r} (split {split!r}) is not prepared for random "
        f"access in {where}. Prepare it once, on a machine with network "
        "access and TensorFlow installed, in array_record format, e.g. "
        f"`tfds build {name} --file_format=array_record"
        + (f" --data_dir={data_dir}`" if data_dir else "`")
        + f", then copy the data_dir here. Underlying error: {e}") from e
  return _TfdsSource(source, image_key, label_key)


def _lesion_seed(seed: int, split: str, name: str = "lesions") -> int:
  """Independent procedural streams per split, so train and test never overlap."""
  if split not in _LESION_SPLITS:
    raise ValueError(
        f"unknown {name} split {split!r}; expected one of "
        f"{tuple(_LESION_SPLITS)}")
  state = np.random.SeedSequence([seed, _LESION_SPLITS[split]])
  return int(state.generate_state(1, np.uint32)[0])


# Procedural datasets: generator and the one argument beyond num/size/channels/seed.
_PROCEDURAL = {"lesions": (make_lesions, "positive_fraction"),
               "attributes": (make_attribute_images, "marker_correlation")}

_FASHION_KWARGS = {"classes", "image_size", "channels", "num", "data_dir"}


def _fashion_mnist_source(split: str, kwargs: dict[str, Any]):
  """The IDX files when installed (or asked for), else a prepared TFDS copy."""
  own = set(kwargs) & _FASHION_KWARGS
  other = set(kwargs) - _FASHION_KWARGS
  if other and own:
    raise ValueError(
        f"unexpected arguments for fashion_mnist: {sorted(other)}")
  if own or (not other and fashion_mnist_available()):
    return ArraySource(make_fashion_mnist(split, **kwargs))
  try:
    return tfds_source("fashion_mnist", split, **kwargs)
  except DatasetNotPreparedError as e:
    raise DatasetNotPreparedError(
        f"Fashion-MNIST IDX files not found: run `apt-get install "
        f"{APT_PACKAGE}` (or set CFX_FASHION_MNIST_DIR). {e}") from e


def load_source(name: str, split: str, **kwargs: Any):
  """Returns a random-access source for `name` ("lesions", "attributes",
  "digits", "fashion_mnist" or TFDS).

  kwargs go to the dataset: for "lesions" num, image_size, channels, seed,
  positive_fraction; for "attributes" num, image_size, channels, seed,
  marker_correlation; for "digits" the arguments of `make_digits`; for TFDS
  those of `tfds_source`. "fashion_mnist" takes the arguments of
  `make_fashion_mnist` and reads the IDX files; with no arguments and no IDX
  files it opens a locally prepared TFDS copy instead.
  """
  if name in _PROCEDURAL:
    make, extra = _PROCEDURAL[name]
    unknown = set(kwargs) - {"num", "image_size", "channels", "seed", extra}
    if unknown:
      raise ValueError(f"unexpected arguments for {name}: {sorted(unknown)}")
    seed = kwargs.pop("seed", 0)
    num = kwargs.pop("num", _LESION_DEFAULT_NUM.get(split, 0))
    if name == "lesions" and split != "train":
      kwargs["twins"] = True  # held-out images carry their exact counterfactuals
    return ArraySource(make(num, seed=_lesion_seed(seed, split, name), **kwargs))
  if name == "digits":
    return ArraySource(make_digits(split=split, **kwargs))
  if name == "fashion_mnist":
    return _fashion_mnist_source(split, kwargs)
  return tfds_source(name, split, **kwargs)


def materialize(source: Any) -> dict[str, np.ndarray]:
  """Stacks every record of `source` into arrays with a leading record axis."""
  if isinstance(source, ArraySource):
    return dict(source.arrays)
  n = len(source)
  if n == 0:
    raise ValueError("cannot materialize an empty source")
  getitems = getattr(source, "__getitems__", None)
  records = []
  chunk = 1024
  for start in range(0, n, chunk):
    indices = list(range(start, min(start + chunk, n)))
    if getitems is not None:
      records.extend(getitems(indices))
    else:
      records.extend(source[i] for i in indices)
  return {k: np.stack([np.asarray(r[k]) for r in records]) for k in records[0]}
