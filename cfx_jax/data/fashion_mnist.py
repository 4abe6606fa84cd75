"""Fashion-MNIST read from the IDX files of Debian's `dataset-fashion-mnist`.

The package installs the original gzip IDX files, so a real 28x28 image
dataset is available offline without TensorFlow or a TFDS preparation step.
A locally prepared TFDS copy stays readable through
`tfds_source("fashion_mnist", split)`, and `load_source("fashion_mnist", split)`
falls back to it when the IDX files are absent and no IDX-only argument is given.
"""

from __future__ import annotations

import gzip
import os
import zlib
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from cfx_jax.data.arguments import check_image_arguments
from cfx_jax.data.resize import bilinear_matrix

CLASS_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
               "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")

DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"
ENV_DIR = "CFX_FASHION_MNIST_DIR"
APT_PACKAGE = "dataset-fashion-mnist"

_SPLITS = ("train", "test")
_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
          "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
_SIZE = 28

# IDX type codes (third magic byte); all values are stored big-endian.
_IDX_DTYPES = {0x08: np.dtype(np.uint8), 0x09: np.dtype(np.int8),
               0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
               0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def read_idx(path: str | os.PathLike) -> np.ndarray:
  """Parses an IDX file (gzip-compressed or plain) into a native-endian array."""
  path = Path(path)
  raw = path.read_bytes()
  if raw[:2] == b"\x1f\x8b":
    try:
      raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:
      raise ValueError(f"{path.name}: corrupt gzip data ({e})") from e
  if len(raw) < 4 or raw[:2] != b"\x00\x00":
    raise ValueError(f"{path.name}: not an IDX file (bad magic number)")
  code, ndim = raw[2], raw[3]
  if code not in _IDX_DTYPES:
    raise ValueError(f"{path.name}: unknown IDX type code 0x{code:02x}")
  if ndim == 0:
    raise ValueError(f"{path.name}: IDX file with zero dimensions")
  header = 4 + 4 * ndim
  if len(raw) < header:
    raise ValueError(f"{path.name}: truncated IDX header")
  shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", ndim, offset=4))
  dtype = _IDX_DTYPES[code]
  expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
  if len(raw) - header != expected:
    raise ValueError(
        f"{path.name}: dimensions {shape} need {expected} data bytes, found "
        f"{len(raw) - header}")
  data = np.frombuffer(raw, dtype, offset=header).reshape(shape)
  return data.astype(dtype.newbyteorder("="))


def _data_dir(data_dir: str | os.PathLike | None) -> Path:
  if data_dir is None:
    data_dir = os.environ.get(ENV_DIR) or DEFAULT_DIR
  return Path(data_dir)


def _find(directory: Path, stem: str) -> Path | None:
  for name in (stem + ".gz", stem):
    if (directory / name).is_file():
      return directory / name
  return None


def fashion_mnist_available(data_dir: str | os.PathLike | None = None) -> bool:
  """Whether all four IDX files are in `data_dir` (default as for make_fashion_mnist)."""
  directory = _data_dir(data_dir)
  return all(_find(directory, stem) is not None
             for stems in _FILES.values() for stem in stems)


def _split_files(split: str, data_dir) -> tuple[Path, Path]:
  directory = _data_dir(data_dir)
  found = [_find(directory, stem) for stem in _FILES[split]]
  missing = [stem + ".gz" for stem, p in zip(_FILES[split], found) if p is None]
  if missing:
    raise FileNotFoundError(
        f"Fashion-MNIST {split!r} files {missing} not found in {directory}. "
        f"Run `apt-get install {APT_PACKAGE}`, or pass data_dir (or set "
        f"{ENV_DIR}) to a directory holding the IDX files.")
  return found[0], found[1]


def _resolve_classes(classes) -> tuple[int, ...]:
  if classes is None:
    return tuple(range(len(CLASS_NAMES)))
  if isinstance(classes, str):
    raise ValueError(
        f"classes must be a sequence of class indices or names, got {classes!r}")
  resolved = []
  for c in classes:
    if isinstance(c, str):
      if c not in CLASS_NAMES:
        raise ValueError(
            f"unknown Fashion-MNIST class {c!r}; valid names are {CLASS_NAMES}")
      resolved.append(CLASS_NAMES.index(c))
    elif isinstance(c, (int, np.integer)) and not isinstance(c, bool):
      if not 0 <= c < len(CLASS_NAMES):
        raise ValueError(f"unknown Fashion-MNIST class {c}; valid classes are 0..9")
      resolved.append(int(c))
    else:
      raise ValueError(f"classes must be indices 0..9 or names, got {c!r}")
  if not resolved:
    raise ValueError("classes must not be empty")
  if len(set(resolved)) != len(resolved):
    raise ValueError(f"classes must be distinct, got {tuple(resolved)}")
  return tuple(resolved)


def _resize(images: np.ndarray, size: int) -> np.ndarray:
  """Bilinear (N, 28, 28) -> (N, size, size) as two matrix products."""
  n = images.shape[0]
  interp = bilinear_matrix(_SIZE, size).astype(np.float32)
  cols = (images.reshape(n * _SIZE, _SIZE) @ interp.T).reshape(n, _SIZE, size)
  rows = cols.transpose(0, 2, 1).reshape(n * size, _SIZE) @ interp.T
  return rows.reshape(n, size, size).transpose(0, 2, 1)


def make_fashion_mnist(
    split: str = "train",
    *,
    classes: Iterable[int | str] | None = None,
    image_size: int = 28,
    channels: int = 1,
    num: int | None = None,
    data_dir: str | os.PathLike | None = None,
) -> dict[str, np.ndarray]:
  """Loads a Fashion-MNIST split in [-1, 1], optionally a subset of classes.

  `classes` (indices or names from CLASS_NAMES) selects those classes and
  relabels them 0..len(classes)-1 in the given order; None keeps all ten with
  their original labels. `num` keeps the first num images after selection.
  `data_dir` defaults to $CFX_FASHION_MNIST_DIR, else the Debian location.

  Returns:
    {"image": (N, image_size, image_size, channels) float32, "label": (N,)
    int32}.
  """
  resolved = _resolve_classes(classes)
  check_image_arguments(split, _SPLITS, image_size, channels)
  if num is not None and (isinstance(num, bool) or not isinstance(
      num, (int, np.integer)) or num < 0):
    raise ValueError(f"num must be a non-negative integer or None, got {num!r}")

  images_path, labels_path = _split_files(split, data_dir)
  targets = read_idx(labels_path)
  images = read_idx(images_path)
  if targets.ndim != 1 or images.shape != (len(targets), _SIZE, _SIZE):
    raise ValueError(
        f"{images_path.name} / {labels_path.name}: expected (N, {_SIZE}, "
        f"{_SIZE}) images and (N,) labels, got {images.shape} and "
        f"{targets.shape}")

  index = np.flatnonzero(np.isin(targets, resolved))
  if num is not None:
    if num > len(index):
      raise ValueError(
          f"num={num} exceeds the {len(index)} {split} images of classes "
          f"{resolved}")
    index = index[:num]

  remap = np.full(len(CLASS_NAMES), -1, np.int32)
  remap[list(resolved)] = np.arange(len(resolved), dtype=np.int32)
  labels = remap[targets[index]]

  scaled = images[index].astype(np.float32) / 127.5 - 1.0
  if image_size != _SIZE:
    scaled = np.clip(_resize(scaled, int(image_size)), -1.0, 1.0)
  image = np.repeat(scaled[..., None], channels, axis=-1)
  return {"image": image, "label": labels}
