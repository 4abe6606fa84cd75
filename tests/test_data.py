"""Tests for datasets, sources and the batching pipeline."""

from __future__ import annotations

import collections

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from scipy import ndimage

from cfx_jax.data import ArraySource
from cfx_jax.data import DatasetNotPreparedError
from cfx_jax.data import batches
from cfx_jax.data import grouped_batches
from cfx_jax.data import load_source
from cfx_jax.data import make_digits
from cfx_jax.data import make_lesions
from cfx_jax.data import materialize
from cfx_jax.data import tfds_source
from cfx_jax.data import to_global


@pytest.fixture(scope="module")
def lesions():
  return make_lesions(600, seed=5)


# --- lesions -----------------------------------------------------------------


@pytest.mark.parametrize("image_size,channels", [(16, 1), (32, 3), (37, 3)])
def test_lesions_shapes_dtypes_and_range(image_size, channels):
  d = make_lesions(40, image_size=image_size, channels=channels, seed=1)
  assert set(d) == {"image", "label", "mask"}
  assert d["image"].shape == (40, image_size, image_size, channels)
  assert d["label"].shape == (40,)
  assert d["mask"].shape == (40, image_size, image_size)
  assert d["image"].dtype == np.float32
  assert d["label"].dtype == np.int32
  assert d["mask"].dtype == np.float32
  assert d["image"].min() >= -1.0 and d["image"].max() <= 1.0
  assert set(np.unique(d["mask"])) <= {0.0, 1.0}
  assert set(np.unique(d["label"])) <= {0, 1}


def test_lesions_deterministic_with_prefix_property():
  small = make_lesions(10, seed=3)
  again = make_lesions(10, seed=3)
  large = make_lesions(1100, seed=3)  # Spans more than one render chunk.
  for key in small:
    np.testing.assert_array_equal(small[key], again[key])
    np.testing.assert_array_equal(small[key], large[key][:10])
  tail = make_lesions(1050, seed=3)
  np.testing.assert_array_equal(tail["image"], large["image"][:1050])
  other = make_lesions(10, seed=4)
  assert not np.array_equal(small["image"], other["image"])


def test_lesion_masks_match_labels(lesions):
  area = lesions["mask"].sum(axis=(1, 2))
  positive = lesions["label"] == 1
  assert 0.4 < positive.mean() < 0.6
  assert np.all(area[positive] > 0)
  assert np.all(area[~positive] == 0)
  # Radius is about 7-15% of the side: a small, not a dominant, region.
  assert area[positive].max() < 0.1 * 32 * 32


def test_lesion_pixels_differ_from_their_surroundings(lesions):
  gray = lesions["image"].mean(-1)
  masks = lesions["mask"].astype(bool)
  for i in np.flatnonzero(lesions["label"] == 1):
    ring = ndimage.binary_dilation(masks[i], iterations=2) & ~masks[i]
    deviation = np.abs(gray[i][masks[i]] - np.median(gray[i][ring])).mean()
    assert deviation > 0.15, i


def test_lesion_label_not_predictable_from_brightness(lesions):
  means = lesions["image"].mean(axis=(1, 2, 3))
  labels = lesions["label"]
  gap = abs(means[labels == 1].mean() - means[labels == 0].mean())
  assert gap < 0.15 * means.std()
  # No brightness threshold separates the classes much better than chance.
  best = max(
      max(np.mean((means > t) == labels), np.mean((means <= t) == labels))
      for t in means)
  assert best < 0.62


def test_lesions_positive_fraction_extremes():
  assert make_lesions(20, positive_fraction=0.0)["label"].sum() == 0
  assert make_lesions(20, positive_fraction=1.0)["label"].min() == 1


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(num=0),
        dict(num=-3),
        dict(num=4, image_size=15),
        dict(num=4, channels=2),
        dict(num=4, positive_fraction=1.5),
        dict(num=4, positive_fraction=-0.1),
        dict(num=4, seed=-1),
    ],
)
def test_lesions_bad_arguments(kwargs):
  num = kwargs.pop("num")
  with pytest.raises(ValueError):
    make_lesions(num, **kwargs)


# --- digits ------------------------------------------------------------------


def test_digits_pair_shapes_and_remapping():
  d = make_digits(classes=(3, 8), split="all")
  assert d["image"].shape == (len(d["label"]), 32, 32, 1)
  assert d["image"].dtype == np.float32 and d["label"].dtype == np.int32
  assert d["image"].min() >= -1.0 and d["image"].max() <= 1.0
  assert d["image"].min() == -1.0 and d["image"].max() > 0.9
  assert set(np.unique(d["label"])) == {0, 1}
  assert "mask" not in d
  flipped = make_digits(classes=(8, 3), split="all")
  np.testing.assert_array_equal(flipped["image"], d["image"])
  np.testing.assert_array_equal(flipped["label"], 1 - d["label"])


def test_digits_all_classes_and_channels():
  d = make_digits(classes=None, split="all", image_size=16, channels=3)
  assert d["image"].shape == (1797, 16, 16, 3)
  np.testing.assert_array_equal(d["image"][..., 0], d["image"][..., 2])
  assert set(np.unique(d["label"])) == set(range(10))
  r = make_digits(classes=range(10), split="all", image_size=16, channels=3)
  np.testing.assert_array_equal(r["label"], d["label"])


def test_digits_split_is_a_stratified_partition():
  train = make_digits(classes=None, split="train", seed=2)
  test = make_digits(classes=None, split="test", seed=2)
  everything = make_digits(classes=None, split="all", seed=2)
  assert len(test["label"]) == pytest.approx(0.25 * 1797, abs=2)

  def rows(d):
    return collections.Counter(
        (im.tobytes(), int(lab)) for im, lab in zip(d["image"], d["label"]))

  assert rows(train) + rows(test) == rows(everything)
  np.testing.assert_allclose(
      np.bincount(test["label"]) / np.bincount(everything["label"]), 0.25,
      atol=0.03)
  again = make_digits(classes=None, split="test", seed=2)
  np.testing.assert_array_equal(again["image"], test["image"])
  other = make_digits(classes=None, split="test", seed=3)
  assert rows(other) != rows(test)


@pytest.mark.parametrize(
    "kwargs",
    [dict(classes=(3, 11)), dict(classes=()), dict(classes=(3, 3)),
     dict(split="val"), dict(channels=2), dict(test_fraction=1.0)],
)
def test_digits_bad_arguments(kwargs):
  with pytest.raises(ValueError):
    make_digits(**kwargs)


# --- sources -----------------------------------------------------------------


def test_array_source_protocol():
  arrays = {"image": np.zeros((5, 4, 4, 1), np.float32),
            "label": np.arange(5, dtype=np.int32)}
  source = ArraySource(arrays)
  assert len(source) == 5
  assert source[3]["label"] == 3 and source[-1]["label"] == 4
  assert source[3]["image"].shape == (4, 4, 1)
  assert source.arrays["label"] is source.arrays["label"]
  with pytest.raises(IndexError):
    source[5]
  with pytest.raises(ValueError):
    ArraySource({"a": np.zeros(3), "b": np.zeros(4)})
  with pytest.raises(ValueError):
    ArraySource({})
  materialized = materialize(source)
  np.testing.assert_array_equal(materialized["label"], arrays["label"])


def test_materialize_generic_source():
  records = [{"image": np.full((2, 2, 1), i, np.float32), "label": np.int32(i)}
             for i in range(7)]
  out = materialize(records)
  assert out["image"].shape == (7, 2, 2, 1)
  np.testing.assert_array_equal(out["label"], np.arange(7))


def test_load_source_lesions_splits_differ():
  train = load_source("lesions", "train", num=20, image_size=16, seed=1)
  test = load_source("lesions", "test", num=20, image_size=16, seed=1)
  assert isinstance(train, ArraySource) and len(train) == 20
  assert train[0]["image"].shape == (16, 16, 3)
  assert not np.array_equal(train.arrays["image"], test.arrays["image"])
  again = load_source("lesions", "train", num=20, image_size=16, seed=1)
  np.testing.assert_array_equal(again.arrays["image"], train.arrays["image"])
  with pytest.raises(ValueError):
    load_source("lesions", "training", num=4)
  with pytest.raises(ValueError):
    load_source("lesions", "train", num=4, bogus=1)


def test_load_source_digits():
  source = load_source("digits", "test", classes=(3, 8), image_size=16)
  assert source[0]["image"].shape == (16, 16, 1)
  assert set(np.unique(source.arrays["label"])) == {0, 1}


def _prepare_tiny_tfds(data_dir):
  """Prepares a tiny array_record TFDS dataset locally (no TensorFlow)."""
  import tensorflow_datasets as tfds

  with tfds.core.registered.skip_registration():

    class CfxTinyImages(tfds.core.GeneratorBasedBuilder):
      VERSION = tfds.core.Version("1.0.0")

      def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Tensor(shape=(6, 6, 3), dtype=np.uint8),
                "label": tfds.features.ClassLabel(num_classes=3),
            }),
        )

      def _split_generators(self, dl_manager):
        del dl_manager
        return {"train": self._generate_examples(12),
                "test": self._generate_examples(4)}

      def _generate_examples(self, n):
        for i in range(n):
          image = np.full((6, 6, 3), i * 20, np.uint8)
          image[0, 0] = 255
          yield i, {"image": image, "label": i % 3}

  builder = CfxTinyImages(data_dir=str(data_dir), file_format="array_record")
  builder.download_and_prepare()
  return builder.name


def test_tfds_source_reads_prepared_array_record(tmp_path):
  name = _prepare_tiny_tfds(tmp_path)
  source = load_source(name, "train", data_dir=str(tmp_path))
  assert len(source) == 12
  record = source[0]
  assert record["image"].dtype == np.float32
  assert record["image"].shape == (6, 6, 3)
  assert record["label"].dtype == np.int32
  data = materialize(source)
  assert data["image"].shape == (12, 6, 6, 3)
  assert data["image"].max() == 1.0 and data["image"].min() >= -1.0
  # Recover each record's generator index from its pixels to check labels.
  index = np.round((data["image"][:, 1, 1, 0] + 1.0) * 127.5 / 20).astype(int)
  assert sorted(index.tolist()) == list(range(12))
  np.testing.assert_array_equal(data["label"], index % 3)
  batch = batches(source, 4, seed=0)[2]
  assert batch["image"].shape == (4, 6, 6, 3)
  np.testing.assert_array_equal(batch["label"], data["label"][batch["id"]])
  test = tfds_source(name, "test", data_dir=str(tmp_path))
  assert len(test) == 4


def test_tfds_source_with_mock_mnist():
  import tensorflow_datasets as tfds

  with tfds.testing.mock_data(num_examples=6):
    source = tfds_source("mnist", "train")
    assert len(source) == 6
    record = source[1]
  assert record["image"].shape == (28, 28, 1)
  assert record["image"].dtype == np.float32
  assert -1.0 <= record["image"].min() and record["image"].max() <= 1.0
  assert record["label"].dtype == np.int32


def test_tfds_missing_dataset_errors(tmp_path):
  with pytest.raises(DatasetNotPreparedError, match="tfds build mnist"):
    load_source("mnist", "train", data_dir=str(tmp_path))
  assert not any(tmp_path.iterdir())  # Nothing was downloaded.
  with pytest.raises(ValueError, match="unknown dataset"):
    load_source("no_such_dataset_xyz", "train", data_dir=str(tmp_path))


# --- pipeline ----------------------------------------------------------------


def _numbered_source(n):
  return ArraySource({
      "image": np.arange(n, dtype=np.float32)[:, None, None, None]
               * np.ones((1, 2, 2, 1), np.float32),
      "label": (np.arange(n) % 3).astype(np.int32),
  })


def test_batches_deterministic_and_consistent():
  source = _numbered_source(50)
  ds = batches(source, 8, seed=4)
  again = batches(source, 8, seed=4)
  for step in (0, 5, 6, 123):
    a, b = ds[step], again[step]
    assert set(a) == {"image", "label", "id"}
    assert a["id"].dtype == np.int64 and a["id"].shape == (8,)
    assert a["image"].shape == (8, 2, 2, 1)
    np.testing.assert_array_equal(a["id"], b["id"])
    np.testing.assert_array_equal(a["image"][:, 0, 0, 0], a["id"])
    np.testing.assert_array_equal(a["label"], a["id"] % 3)
  other = batches(source, 8, seed=5)
  assert not np.array_equal(ds[0]["id"], other[0]["id"])


def test_batches_epochs_are_permutations():
  source = _numbered_source(50)
  ds = batches(source, 8, seed=0)
  per_epoch = 50 // 8  # The last partial batch of each epoch is dropped.
  epochs = []
  for epoch in range(3):
    ids = np.concatenate(
        [ds[epoch * per_epoch + s]["id"] for s in range(per_epoch)])
    assert len(np.unique(ids)) == len(ids) == per_epoch * 8
    epochs.append(ids)
  assert not np.array_equal(epochs[0], epochs[1])
  exact = batches(_numbered_source(48), 8, seed=0)
  for epoch in range(2):
    ids = np.concatenate([exact[epoch * 6 + s]["id"] for s in range(6)])
    np.testing.assert_array_equal(np.sort(ids), np.arange(48))


def test_batches_without_shuffle_follow_source_order():
  ds = batches(_numbered_source(20), 6, shuffle=False)
  np.testing.assert_array_equal(ds[1]["id"], np.arange(6, 12))
  np.testing.assert_array_equal(ds[3]["id"], np.arange(6))


def test_batches_process_slices_tile_global_batch():
  source = _numbered_source(64)
  full = batches(source, 16, seed=1, process_index=0, process_count=1)
  parts = [batches(source, 16, seed=1, process_index=p, process_count=4)
           for p in range(4)]
  for step in (0, 3, 9):
    local = [part[step]["id"] for part in parts]
    assert all(x.shape == (4,) for x in local)
    np.testing.assert_array_equal(np.concatenate(local), full[step]["id"])


@pytest.mark.parametrize(
    "kwargs",
    [dict(batch_size=0), dict(batch_size=51), dict(batch_size=10, seed=-1),
     dict(batch_size=10, process_index=0, process_count=3),
     dict(batch_size=10, process_index=2, process_count=2)],
)
def test_batches_bad_arguments(kwargs):
  with pytest.raises(ValueError):
    batches(_numbered_source(50), **kwargs)


def test_grouped_batches_rows_hold_their_group():
  source = _numbered_source(40)
  groups = np.array([0] * 5 + [1] * 20 + [2] * 15)
  np.random.default_rng(0).shuffle(groups)
  ds = grouped_batches(source, groups, 3, 4, seed=2)
  first = ds[0]
  assert first["image"].shape == (3, 4, 2, 2, 1)
  assert first["id"].shape == (3, 4) and first["label"].shape == (3, 4)
  for step in range(12):
    batch = ds[step]
    np.testing.assert_array_equal(groups[batch["id"]],
                                  np.arange(3)[:, None] * np.ones((1, 4)))
    np.testing.assert_array_equal(batch["image"][..., 0, 0, 0], batch["id"])
  # Group 1 (20 members) sees every member once in 5 steps.
  ids = np.concatenate([ds[s]["id"][1] for s in range(5)])
  np.testing.assert_array_equal(np.sort(ids), np.flatnonzero(groups == 1))
  again = grouped_batches(source, groups, 3, 4, seed=2)
  np.testing.assert_array_equal(again[7]["id"], ds[7]["id"])


def test_grouped_batches_process_slices():
  source = _numbered_source(40)
  groups = np.arange(40) % 2
  full = grouped_batches(source, groups, 2, 8, seed=0, process_index=0,
                         process_count=1)
  parts = [grouped_batches(source, groups, 2, 8, seed=0, process_index=p,
                           process_count=2) for p in range(2)]
  for step in (0, 4):
    local = [part[step]["id"] for part in parts]
    assert local[0].shape == (2, 4)
    np.testing.assert_array_equal(np.concatenate(local, axis=1),
                                  full[step]["id"])


def test_grouped_batches_errors():
  source = _numbered_source(10)
  with pytest.raises(ValueError, match=r"\[2\]"):
    grouped_batches(source, np.arange(10) % 2, 3, 2)
  with pytest.raises(ValueError):
    grouped_batches(source, np.arange(10) % 4, 3, 2)  # Out of range.
  with pytest.raises(ValueError):
    grouped_batches(source, np.zeros(9, np.int64), 1, 2)  # Wrong length.
  with pytest.raises(ValueError):
    grouped_batches(source, np.zeros(10, np.int64), 1, 3, process_index=0,
                    process_count=2)


def test_to_global_shards_over_the_mesh():
  count = jax.device_count()
  mesh = jax.make_mesh((count,), ("data",),
                       axis_types=(jax.sharding.AxisType.Auto,))
  sharding = NamedSharding(mesh, P("data"))
  batch = batches(_numbered_source(4 * count), 2 * count, seed=0)[0]
  out = to_global(batch, {"image": sharding, "label": sharding,
                          "mask": sharding})
  assert isinstance(out["image"], jax.Array)
  assert out["image"].sharding == sharding
  assert out["image"].shape == (2 * count, 2, 2, 1)
  np.testing.assert_array_equal(np.asarray(out["image"]), batch["image"])
  np.testing.assert_array_equal(np.asarray(out["label"]), batch["label"])
  assert isinstance(out["id"], np.ndarray)
  assert len(out["image"].addressable_shards) == count
  everything = to_global(batch, sharding)
  assert isinstance(everything["id"], jax.Array)


def test_chunks_are_padded_to_a_power_of_two_but_never_past_chunk_size():
  """map_in_chunks pads a chunk to 8, 16, ... up to chunk_size, and a chunk_size under 8
  runs unpadded (one image at a time stays one image at a time)."""
  from cfx_jax.batching import bucket_size, map_in_chunks
  assert [bucket_size(n, 64) for n in (1, 8, 9, 40, 64)] == [8, 8, 16, 64, 64]
  assert [bucket_size(1, c) for c in (1, 2, 4)] == [1, 2, 4]
  seen = []
  out = map_in_chunks(lambda a: (seen.append(len(a)), a * 2)[1], [np.arange(5)], 1)
  np.testing.assert_array_equal(out, np.arange(5) * 2)
  assert seen == [1] * 5
