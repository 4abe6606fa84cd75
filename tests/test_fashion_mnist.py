"""Tests for the Fashion-MNIST IDX reader, on tiny files and on Debian's copy."""

from __future__ import annotations

import gzip
import os

import numpy as np
import pytest

from cfx_jax.data import ArraySource
from cfx_jax.data import DatasetNotPreparedError
from cfx_jax.data import load_source
from cfx_jax.data import make_fashion_mnist
from cfx_jax.data import sources
from cfx_jax.data.fashion_mnist import CLASS_NAMES
from cfx_jax.data.fashion_mnist import DEFAULT_DIR
from cfx_jax.data.fashion_mnist import read_idx
from cfx_jax.data.resize import bilinear_matrix

needs_real_files = pytest.mark.skipif(
    not os.path.isdir(DEFAULT_DIR),
    reason=f"{DEFAULT_DIR} absent (apt-get install dataset-fashion-mnist)")


def idx_bytes(array: np.ndarray) -> bytes:
  codes = {np.dtype(np.uint8): 0x08, np.dtype(np.int32): 0x0C}
  header = bytes([0, 0, codes[array.dtype], array.ndim])
  header += np.asarray(array.shape, ">u4").tobytes()
  return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write_idx(path, array: np.ndarray, compress: bool = True):
  data = idx_bytes(array)
  path.write_bytes(gzip.compress(data) if compress else data)
  return path


def fake_split(n: int, seed: int):
  """Labels cycle through the ten classes; pixels are random uint8."""
  rng = np.random.default_rng(seed)
  labels = (np.arange(n) % 10).astype(np.uint8)
  images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
  return images, labels


@pytest.fixture()
def fake_dir(tmp_path):
  """Both splits as IDX files: train gzip-compressed, test plain."""
  for prefix, n, compress in (("train", 40, True), ("t10k", 20, False)):
    images, labels = fake_split(n, seed=n)
    suffix = ".gz" if compress else ""
    write_idx(tmp_path / f"{prefix}-images-idx3-ubyte{suffix}", images, compress)
    write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte{suffix}", labels, compress)
  return tmp_path


# --- IDX parser ----------------------------------------------------------------


@pytest.mark.parametrize("compress", [True, False])
def test_read_idx_round_trip(tmp_path, compress):
  images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
  labels = np.array([7, -1, 100_000], np.int32)
  got = read_idx(write_idx(tmp_path / "images", images, compress))
  np.testing.assert_array_equal(got, images)
  assert got.dtype == np.uint8
  got = read_idx(write_idx(tmp_path / "labels", labels, compress))
  np.testing.assert_array_equal(got, labels)
  assert got.dtype == np.int32 and got.dtype.isnative


@pytest.mark.parametrize("corrupt", [
    lambda b: b"\x01" + b[1:],            # bad magic
    lambda b: b[:2] + b"\x07" + b[3:],     # unknown type code
    lambda b: b[:-1],                      # truncated data
    lambda b: b + b"\x00",                 # trailing bytes
    lambda b: b[:6],                       # truncated header
    lambda b: gzip.compress(b)[:-8],       # truncated gzip stream
    lambda b: gzip.compress(b)[:10] + b"\xff" * 16,  # corrupt deflate data
])
def test_read_idx_malformed(tmp_path, corrupt):
  path = tmp_path / "broken-idx3-ubyte"
  path.write_bytes(corrupt(idx_bytes(np.zeros((2, 3, 3), np.uint8))))
  with pytest.raises(ValueError, match="broken-idx3-ubyte"):
    read_idx(path)


# --- make_fashion_mnist on tiny files ------------------------------------------


def test_all_classes_keep_original_labels(fake_dir):
  d = make_fashion_mnist("train", data_dir=fake_dir)
  images, labels = fake_split(40, seed=40)
  assert d["image"].shape == (40, 28, 28, 1) and d["image"].dtype == np.float32
  assert d["label"].shape == (40,) and d["label"].dtype == np.int32
  np.testing.assert_array_equal(d["label"], labels)
  np.testing.assert_allclose(d["image"][..., 0], images / 127.5 - 1.0, atol=1e-6)
  assert d["image"].min() >= -1.0 and d["image"].max() <= 1.0
  assert len(make_fashion_mnist("test", data_dir=fake_dir)["label"]) == 20


def test_class_selection_relabels_in_given_order(fake_dir):
  _, labels = fake_split(40, seed=40)
  by_name = make_fashion_mnist("train", classes=("Sneaker", "Ankle boot"), data_dir=fake_dir)
  by_index = make_fashion_mnist("train", classes=(7, 9), data_dir=fake_dir)
  np.testing.assert_array_equal(by_name["image"], by_index["image"])
  np.testing.assert_array_equal(by_name["label"], (labels[np.isin(labels, (7, 9))] == 9))
  flipped = make_fashion_mnist("train", classes=(9, "Sneaker"), data_dir=fake_dir)
  np.testing.assert_array_equal(flipped["label"], 1 - by_index["label"])
  first = make_fashion_mnist("train", classes=(7, 9), num=3, data_dir=fake_dir)
  np.testing.assert_array_equal(first["image"], by_index["image"][:3])
  assert CLASS_NAMES[7] == "Sneaker" and CLASS_NAMES[9] == "Ankle boot"


def test_resize_to_32_and_three_channels(fake_dir):
  d = make_fashion_mnist("test", image_size=32, channels=3, data_dir=fake_dir)
  assert d["image"].shape == (20, 32, 32, 3) and d["image"].dtype == np.float32
  assert d["image"].min() >= -1.0 and d["image"].max() <= 1.0
  np.testing.assert_array_equal(d["image"][..., 0], d["image"][..., 2])
  images, _ = fake_split(20, seed=20)
  interp = bilinear_matrix(28, 32)
  reference = np.einsum("hi,nij,wj->nhw", interp, images / 127.5 - 1.0, interp)
  np.testing.assert_allclose(d["image"][..., 1], reference, atol=1e-5)


@pytest.mark.parametrize("kwargs", [
    dict(classes=(7, 10)), dict(classes=("Boot",)), dict(classes=()),
    dict(classes=(7, "Sneaker")), dict(classes="Sneaker"), dict(split="val"),
    dict(channels=2), dict(image_size=0), dict(num=-1), dict(num=41),
])
def test_bad_arguments(fake_dir, kwargs):
  with pytest.raises(ValueError):
    make_fashion_mnist(data_dir=fake_dir, **kwargs)


def test_missing_files_name_the_apt_package(tmp_path, monkeypatch):
  with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
    make_fashion_mnist("train", data_dir=tmp_path / "absent")
  monkeypatch.setenv("CFX_FASHION_MNIST_DIR", str(tmp_path))
  with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
    make_fashion_mnist("test")


def test_data_dir_from_environment(fake_dir, monkeypatch):
  monkeypatch.setenv("CFX_FASHION_MNIST_DIR", str(fake_dir))
  assert make_fashion_mnist("test", classes=(0,))["image"].shape == (2, 28, 28, 1)


# --- load_source ---------------------------------------------------------------


def test_load_source_reads_idx_files(fake_dir, monkeypatch):
  source = load_source("fashion_mnist", "train", classes=(7, 9), image_size=32,
                       data_dir=fake_dir)
  assert isinstance(source, ArraySource) and len(source) == 8
  assert source[0]["image"].shape == (32, 32, 1)
  monkeypatch.setenv("CFX_FASHION_MNIST_DIR", str(fake_dir))
  assert len(load_source("fashion_mnist", "test")) == 20
  with pytest.raises(ValueError):
    load_source("fashion_mnist", "train", classes=(7, 9), image_key="image")


def test_load_source_falls_back_to_tfds(tmp_path, monkeypatch):
  monkeypatch.setenv("CFX_FASHION_MNIST_DIR", str(tmp_path))
  calls = []
  monkeypatch.setattr(sources, "tfds_source",
                      lambda name, split, **kw: calls.append((name, split, kw)) or "tfds")
  assert load_source("fashion_mnist", "test") == "tfds"
  assert load_source("fashion_mnist", "train", label_key="y") == "tfds"
  assert calls == [("fashion_mnist", "test", {}), ("fashion_mnist", "train", {"label_key": "y"})]
  with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
    load_source("fashion_mnist", "train", classes=(7, 9))

  def unprepared(name, split, **kw):
    raise DatasetNotPreparedError("not prepared")
  monkeypatch.setattr(sources, "tfds_source", unprepared)
  with pytest.raises(DatasetNotPreparedError, match="apt-get install dataset-fashion-mnist"):
    load_source("fashion_mnist", "test")


@pytest.mark.parametrize("module, classes", [
    ("fashion_sneaker_boot", (7, 9)), ("fashion_shirt_tshirt", (0, 6)),
    ("fashion_ten_classes", tuple(range(10))), ("fashion_leaderboard", (7, 9)),
    ("fashion_pullover_coat", (2, 4))])
def test_configs_name_the_dataset(module, classes):
  import importlib

  c = importlib.import_module(f"cfx_jax.configs.{module}").get_config()
  assert c.dataset.name == "fashion_mnist"
  assert tuple(c.dataset.kwargs.classes) == classes
  assert c.dataset.kwargs.image_size == 32 and c.dataset.kwargs.channels == 1


# --- Debian's files -------------------------------------------------------------


@needs_real_files
def test_real_splits():
  train = make_fashion_mnist("train")
  assert train["image"].shape == (60_000, 28, 28, 1)
  assert train["image"].min() == -1.0 and train["image"].max() == 1.0
  np.testing.assert_array_equal(np.bincount(train["label"]), np.full(10, 6000))
  test = make_fashion_mnist("test")
  assert test["image"].shape == (10_000, 28, 28, 1)
  np.testing.assert_array_equal(np.unique(test["label"]), np.arange(10))
  pair = make_fashion_mnist("train", classes=(7, 9))
  assert pair["label"].shape == (12_000,)
  np.testing.assert_array_equal(np.bincount(pair["label"]), [6000, 6000])
  np.testing.assert_array_equal(pair["image"], train["image"][np.isin(train["label"], (7, 9))])


@needs_real_files
def test_real_config_split():
  from cfx_jax.configs import fashion_sneaker_boot
  from cfx_jax.jobs.datasets import load_split

  c = fashion_sneaker_boot.get_config()
  c.dataset.num_test = 64
  d = load_split(c.dataset, "test")
  assert d["image"].shape == (64, 32, 32, 1) and d["image"].dtype == np.float32
  assert set(np.unique(d["label"])) == {0, 1}
