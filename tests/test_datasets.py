"""Tests of rlfat_tf.datasets: the registry, binary readers, tfds path, embedded
sample."""
import dataclasses
import hashlib
import importlib.util
import json
import os
import shutil

import keras
import numpy as np
from PIL import Image
import pytest
import tensorflow_datasets as tfds

from rlfat_tf import datasets
from rlfat_tf import errors
from rlfat_tf.datasets import cifar
from rlfat_tf.datasets import sample
from rlfat_tf.datasets import stl10
from rlfat_tf.datasets import streamed
from rlfat_tf.datasets import tfds_source

import helpers

_REAL_CIFAR10 = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..",
    "shared", "data", "cifar-10-batches-bin")
_HAS_REAL_CIFAR10 = os.path.isfile(
    os.path.join(_REAL_CIFAR10, "test_batch.bin"))


def _record(label_bytes, marks, pixels=3072):
  """One record: label bytes, then zero pixels but marks {offset: value}."""
  body = bytearray(pixels)
  for offset, value in marks.items():
    body[offset] = value
  return bytes(label_bytes) + bytes(body)


def _write(path, data):
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_bytes(data)


def _expect_records(monkeypatch, release, counts):
  """Makes the release expect {file name: records}: the fixtures hold a few
  records where the official files hold thousands."""
  for file_name, count in counts.items():
    monkeypatch.setitem(release.records, file_name, count)


def _assert_user_error(excinfo, *fragments):
  message = str(excinfo.value)
  assert "\n" not in message
  for fragment in fragments:
    assert fragment in message, message


# ---------------------------------------------------------------- registry


def test_names_are_the_registry_order_with_the_papers_first():
  assert datasets.NAMES[:4] == ("stl10", "cifar10", "cifar100",
                                "cifar10_sample")
  assert [datasets.get(n).name for n in datasets.NAMES] == list(
      datasets.NAMES)


# One row per dataset: display name, image shape, classes, split sizes and
# the official code's depth, width, attack steps and train steps.
@pytest.mark.parametrize("name, display, shape, classes, sizes, defaults", [
    ("stl10", "STL-10", (96, 96, 3), 10, (5_000, 8_000), (40, 2, 7, 29_700)),
    ("cifar10", "CIFAR-10", (32, 32, 3), 10, (50_000, 10_000),
     (34, 10, 10, 79_800)),
    ("cifar100", "CIFAR-100", (32, 32, 3), 100, (50_000, 10_000),
     (34, 10, 7, 79_800)),
    ("cifar10_sample", "CIFAR-10 sample", (32, 32, 3), 10, (4_000, 1_000),
     (34, 10, 10, 79_800)),
])
def test_registered_facts_and_official_defaults(name, display, shape, classes,
                                                sizes, defaults):
  spec = datasets.get(name)
  assert spec.display_name == display
  assert spec.image_shape == shape and spec.num_classes == classes
  assert (spec.train_size, spec.test_size) == sizes
  assert dataclasses.astuple(spec.defaults) == defaults


@pytest.mark.parametrize("name", datasets.NAMES)
def test_every_dataset_is_complete(name):
  spec = datasets.get(name)
  assert spec.display_name
  assert len(spec.class_names) == spec.num_classes
  assert len(set(spec.class_names)) == spec.num_classes
  assert all(isinstance(v, int) and v > 0
             for v in dataclasses.astuple(spec.defaults))
  # Embedded, or loadable from tensorflow-datasets or an official release.
  assert (spec.read_embedded is not None) != bool(spec.release or
                                                   spec.tfds_name)
  if spec.release:
    assert set(spec.release.split_files) == set(datasets.SPLITS)
    assert {f for files in spec.release.split_files.values()
            for f in files} == set(spec.release.records)


def test_release_records_hold_each_split():
  cifar10, stl = cifar.CIFAR10, stl10.RELEASE
  assert sum(cifar10.records[f] for f in cifar10.split_files["train"]) == (
      datasets.get("cifar10").train_size)
  assert [stl.records[f] for f in stl.split_files["test"]] == [8_000, 8_000]


def _register(monkeypatch, **readers):
  """Registers a 'toy' dataset that reads with the given readers only."""
  spec = dataclasses.replace(datasets.get("cifar10"), name="toy",
                             **{"release": None, "tfds_name": None, **readers})
  monkeypatch.setitem(datasets._REGISTRY, "toy", spec)


def test_dataset_without_a_release_refuses_data_dir(tmp_path, monkeypatch):
  _register(monkeypatch, tfds_name="cifar10")
  with pytest.raises(errors.UserError) as excinfo:
    datasets.load_split("toy", "test", data_dir=str(tmp_path))
  _assert_user_error(excinfo, "toy has no reader of an official release",
                     "drop --data_dir")


def test_dataset_outside_tfds_needs_data_dir(monkeypatch):
  _register(monkeypatch, release=cifar.CIFAR10)
  with pytest.raises(errors.UserError) as excinfo:
    datasets.load_split("toy", "test")
  _assert_user_error(excinfo, "toy is not in tensorflow-datasets: pass "
                     "--data_dir=PATH holding cifar-10-batches-bin/")


# ---------------------------------------------------------------- CIFAR-10


def _write_cifar10(root, monkeypatch):
  """Test split: 3 images; train: one image per data_batch file."""
  _expect_records(monkeypatch, cifar.CIFAR10, {
      "test_batch.bin": 3, **{f"data_batch_{i}.bin": 1 for i in range(1, 6)}})
  folder = root / "cifar-10-batches-bin"
  # Offsets follow the layout: plane (R, G, B) * 1024 + row * 32 + column.
  _write(folder / "test_batch.bin",
         _record([3], {0 * 1024 + 0 * 32 + 1: 10}) +
         _record([0], {1 * 1024 + 2 * 32 + 3: 20}) +
         _record([9], {2 * 1024 + 31 * 32 + 0: 30}))
  for i in range(1, 6):
    _write(folder / f"data_batch_{i}.bin", _record([i - 1], {i: 100 + i}))
  return folder


def test_cifar10_reader_places_planes_rows_and_columns(tmp_path, monkeypatch):
  _write_cifar10(tmp_path, monkeypatch)
  images, labels = datasets.load_split("cifar10", "test",
                                       data_dir=str(tmp_path))
  assert images.shape == (3, 32, 32, 3) and images.dtype == np.uint8
  assert labels.dtype == np.int32
  assert labels.tolist() == [3, 0, 9]
  assert images[0, 0, 1, 0] == 10
  assert images[1, 2, 3, 1] == 20
  assert images[2, 31, 0, 2] == 30
  assert int(images.sum(dtype=np.int64)) == 60


def test_cifar10_train_concatenates_batches_in_order(tmp_path, monkeypatch):
  _write_cifar10(tmp_path, monkeypatch)
  images, labels = datasets.load_split(
      "cifar10", "train", data_dir=str(tmp_path))
  assert images.shape == (5, 32, 32, 3)
  assert labels.tolist() == [0, 1, 2, 3, 4]
  # data_batch_i marks red row 0, column i with 100 + i.
  assert [int(images[i - 1, 0, i, 0]) for i in range(1, 6)] == [
      101, 102, 103, 104, 105]


def test_data_dir_may_point_at_the_layout_folder(tmp_path, monkeypatch):
  folder = _write_cifar10(tmp_path, monkeypatch)
  _, labels = datasets.load_split("cifar10", "test", data_dir=str(folder))
  assert labels.tolist() == [3, 0, 9]


def test_renamed_layout_folder_is_recognised_by_its_files(tmp_path,
                                                          monkeypatch):
  folder = _write_cifar10(tmp_path, monkeypatch)
  renamed = tmp_path / "my_cifar"
  folder.rename(renamed)
  _, labels = datasets.load_split("cifar10", "test", data_dir=str(renamed))
  assert labels.tolist() == [3, 0, 9]


# --------------------------------------------------------------- CIFAR-100


def test_cifar100_reader_uses_fine_label(tmp_path, monkeypatch):
  _expect_records(monkeypatch, cifar.CIFAR100, {"test.bin": 2, "train.bin": 1})
  folder = tmp_path / "cifar-100-binary"
  # Records: coarse label, fine label, then pixels as in CIFAR-10.
  _write(folder / "test.bin",
         _record([19, 99], {1 * 1024 + 4 * 32 + 5: 7}) +
         _record([0, 42], {2 * 1024 + 0 * 32 + 31: 9}))
  _write(folder / "train.bin", _record([5, 17], {}))
  images, labels = datasets.load_split(
      "cifar100", "test", data_dir=str(tmp_path))
  assert images.shape == (2, 32, 32, 3)
  assert labels.tolist() == [99, 42]
  assert images[0, 4, 5, 1] == 7
  assert images[1, 0, 31, 2] == 9
  assert int(images.sum(dtype=np.int64)) == 16
  _, train_labels = datasets.load_split(
      "cifar100", "train", data_dir=str(folder))
  assert train_labels.tolist() == [17]


# ------------------------------------------------------------------ STL-10


def _write_stl10(root, monkeypatch, x_images, y_bytes, split="test"):
  """Writes the split's files; the release expects len(x_images) of each."""
  _expect_records(monkeypatch, stl10.RELEASE, {
      f"{split}_X.bin": len(x_images), f"{split}_y.bin": len(x_images)})
  folder = root / "stl10_binary"
  # Offsets follow the layout: channel * 96 * 96 + column * 96 + row.
  _write(folder / f"{split}_X.bin",
         b"".join(_record([], marks, pixels=3 * 96 * 96) for marks in x_images))
  _write(folder / f"{split}_y.bin", bytes(y_bytes))
  return folder


def test_stl10_reader_is_column_major_with_one_based_labels(tmp_path,
                                                            monkeypatch):
  _write_stl10(tmp_path, monkeypatch, [
      {0 * 9216 + 0 * 96 + 1: 10},  # row 1, column 0 of red
      {2 * 9216 + 70 * 96 + 5: 20},  # row 5, column 70 of blue
  ], [1, 10])
  images, labels = datasets.load_split("stl10", "test",
                                       data_dir=str(tmp_path))
  assert images.shape == (2, 96, 96, 3) and images.dtype == np.uint8
  assert labels.dtype == np.int32
  assert labels.tolist() == [0, 9]
  assert images[0, 1, 0, 0] == 10
  assert images[1, 5, 70, 2] == 20
  assert int(images.sum(dtype=np.int64)) == 30


# ------------------------------------------------------------------ errors


def test_unknown_dataset_lists_known_ones():
  with pytest.raises(errors.UserError) as excinfo:
    datasets.load_split("mnist", "train")
  _assert_user_error(excinfo, "unknown dataset 'mnist'; use one of: stl10, "
                     "cifar10, cifar100, cifar10_sample")
  with pytest.raises(errors.UserError) as excinfo:
    datasets.get("imagenet")
  _assert_user_error(excinfo, "'imagenet'", "cifar10_sample")


def test_unknown_split():
  with pytest.raises(errors.UserError) as excinfo:
    datasets.load_split("cifar10", "validation", data_dir="/nonexistent")
  _assert_user_error(excinfo, "'validation'", "train, test")


def test_missing_data_dir(tmp_path):
  missing = str(tmp_path / "nope")
  with pytest.raises(errors.UserError) as excinfo:
    datasets.load_split("cifar10", "test", data_dir=missing)
  _assert_user_error(excinfo, f"--data_dir={missing} does not exist",
                     "cifar-10-batches-bin/")


def test_data_dir_without_layout_folder(tmp_path):
  with pytest.raises(errors.UserError) as excinfo:
    datasets.load_split("stl10", "train", data_dir=str(tmp_path))
  _assert_user_error(excinfo, "holds no stl10_binary/ folder",
                     "point --data_dir at")


def test_missing_file_is_named(tmp_path, monkeypatch):
  folder = _write_cifar10(tmp_path, monkeypatch)
  (folder / "data_batch_3.bin").unlink()
  with pytest.raises(errors.UserError) as excinfo:
    datasets.load_split("cifar10", "train", data_dir=str(tmp_path))
  _assert_user_error(excinfo, str(folder / "data_batch_3.bin") + " is missing",
                     "--data_dir", "CIFAR-10 binary release")
  stl = _write_stl10(tmp_path, monkeypatch, [{}], [1])
  (stl / "test_y.bin").unlink()
  with pytest.raises(errors.UserError) as excinfo:
    datasets.load_split("stl10", "test", data_dir=str(tmp_path))
  _assert_user_error(excinfo, "test_y.bin is missing", "--data_dir")


def test_truncated_file(tmp_path, monkeypatch):
  folder = _write_cifar10(tmp_path, monkeypatch)
  path = folder / "test_batch.bin"
  path.write_bytes(path.read_bytes()[:-5])
  with pytest.raises(errors.UserError) as excinfo:
    datasets.load_split("cifar10", "test", data_dir=str(tmp_path))
  _assert_user_error(excinfo, str(path), "truncated", "9214 bytes",
                     "has 9219 bytes, 3 3073-byte records", "--data_dir")


def test_empty_file(tmp_path, monkeypatch):
  folder = _write_cifar10(tmp_path, monkeypatch)
  (folder / "test_batch.bin").write_bytes(b"")
  with pytest.raises(errors.UserError) as excinfo:
    datasets.load_split("cifar10", "test", data_dir=str(tmp_path))
  _assert_user_error(excinfo, "truncated", "0 bytes", "--data_dir")


def test_cifar10_label_out_of_range(tmp_path, monkeypatch):
  folder = _write_cifar10(tmp_path, monkeypatch)
  _write(folder / "test_batch.bin",
         _record([2], {}) + _record([10], {}) + _record([4], {}))
  with pytest.raises(errors.UserError) as excinfo:
    datasets.load_split("cifar10", "test", data_dir=str(tmp_path))
  _assert_user_error(excinfo, "test_batch.bin is malformed", "outside 0-9",
                     "first 10", "--data_dir")


def test_cifar100_fine_label_out_of_range(tmp_path, monkeypatch):
  _expect_records(monkeypatch, cifar.CIFAR100, {"test.bin": 1})
  _write(tmp_path / "cifar-100-binary" / "test.bin", _record([1, 100], {}))
  with pytest.raises(errors.UserError) as excinfo:
    datasets.load_split("cifar100", "test", data_dir=str(tmp_path))
  _assert_user_error(excinfo, "outside 0-99", "--data_dir")


def test_stl10_label_zero_is_out_of_range(tmp_path, monkeypatch):
  _write_stl10(tmp_path, monkeypatch, [{}, {}], [1, 0])
  with pytest.raises(errors.UserError) as excinfo:
    datasets.load_split("stl10", "test", data_dir=str(tmp_path))
  _assert_user_error(excinfo, "test_y.bin is malformed", "outside 1-10",
                     "--data_dir")


def test_stl10_label_and_image_counts_disagree(tmp_path, monkeypatch):
  _write_stl10(tmp_path, monkeypatch, [{}, {}], [1, 2, 3])
  with pytest.raises(errors.UserError) as excinfo:
    datasets.load_split("stl10", "test", data_dir=str(tmp_path))
  _assert_user_error(excinfo, "test_y.bin is malformed or truncated",
                     "(3 bytes; the official file has 2 bytes", "--data_dir")


def test_stl10_truncated_images(tmp_path, monkeypatch):
  folder = _write_stl10(tmp_path, monkeypatch, [{}], [1])
  (folder / "test_X.bin").write_bytes(bytes(3 * 96 * 96 - 1))
  with pytest.raises(errors.UserError) as excinfo:
    datasets.load_split("stl10", "test", data_dir=str(tmp_path))
  _assert_user_error(excinfo, "test_X.bin is malformed or truncated",
                     "(27647 bytes", "1 27648-byte records", "--data_dir")


@pytest.mark.parametrize("name, folder, split, file_name, record_size, size", [
    ("cifar10", "cifar-10-batches-bin", "test", "test_batch.bin", 3073,
     30_730_000),
    ("cifar10", "cifar-10-batches-bin", "train", "data_batch_1.bin", 3073,
     30_730_000),
    ("cifar100", "cifar-100-binary", "train", "train.bin", 3074,
     50_000 * 3074),
    ("cifar100", "cifar-100-binary", "test", "test.bin", 3074, 10_000 * 3074),
    ("stl10", "stl10_binary", "train", "train_X.bin", 27648, 5_000 * 27648),
    ("stl10", "stl10_binary", "test", "test_X.bin", 27648, 8_000 * 27648),
])
def test_file_cut_at_a_record_boundary_is_refused(tmp_path, name, folder,
                                                  split, file_name,
                                                  record_size, size):
  # Every file of the split holds two whole records: a size that a check for
  # whole records would accept, training silently on fewer images.
  for each in datasets.get(name).release.split_files[split]:
    _write(tmp_path / folder / each,
           bytes(2 * (1 if each.endswith("_y.bin") else record_size)))
  with pytest.raises(errors.UserError) as excinfo:
    datasets.load_split(name, split, data_dir=str(tmp_path))
  _assert_user_error(excinfo, f"{tmp_path / folder / file_name} is malformed "
                     f"or truncated ({2 * record_size} bytes; the official "
                     f"file has {size} bytes", "re-extract")


@pytest.mark.parametrize("split, size", [("train", 5000), ("test", 8000)])
def test_stl10_labels_cut_short_are_refused(tmp_path, monkeypatch, split,
                                            size):
  _expect_records(monkeypatch, stl10.RELEASE, {f"{split}_X.bin": 2})
  folder = tmp_path / "stl10_binary"
  _write(folder / f"{split}_X.bin", bytes(2 * 3 * 96 * 96))
  _write(folder / f"{split}_y.bin", bytes([1, 2]))
  with pytest.raises(errors.UserError) as excinfo:
    datasets.load_split("stl10", split, data_dir=str(tmp_path))
  _assert_user_error(excinfo, f"{split}_y.bin is malformed or truncated (2 "
                     f"bytes; the official file has {size} bytes")


def test_reading_a_file_not_of_the_release_is_refused(tmp_path):
  path = tmp_path / "batch.bin"
  _write(path, _record([1], {}))
  with pytest.raises(errors.UserError) as excinfo:
    cifar.read_cifar10_file(str(path))
  _assert_user_error(excinfo, f"{path} is not a file of the official CIFAR-10 "
                     "binary release", "data_batch_1.bin", "test_batch.bin")


# -------------------------------------------------- tensorflow-datasets


@pytest.mark.parametrize("name, shape, num_classes", [
    ("cifar10", (32, 32, 3), 10),
    ("cifar100", (32, 32, 3), 100),
    ("stl10", (96, 96, 3), 10),
])
def test_tfds_path_with_mock_data(monkeypatch, name, shape, num_classes):
  # Batches of 2 over 5 examples make the loader join three batches.
  monkeypatch.setattr(tfds_source, "BATCH", 2)
  with tfds.testing.mock_data(num_examples=5):
    for split in datasets.SPLITS:
      images, labels = datasets.load_split(name, split, data_dir="")
      assert images.shape == (5,) + shape and images.dtype == np.uint8
      assert labels.shape == (5,) and labels.dtype == np.int32
      assert labels.min() >= 0 and labels.max() < num_classes


@pytest.mark.parametrize("exception, shown", [
    (ModuleNotFoundError("No module named 'importlib_resources'"),
     "ModuleNotFoundError: No module named 'importlib_resources'"),
    (ConnectionError("Max retries exceeded\nwith url: /stl10_binary.tar.gz"),
     "ConnectionError: Max retries exceeded)"),
])
def test_tfds_failure_becomes_one_line_user_error(monkeypatch, exception,
                                                  shown):
  def failing_load(*args, **kwargs):
    del args, kwargs
    raise exception

  monkeypatch.setattr(tfds, "load", failing_load)
  with pytest.raises(errors.UserError) as excinfo:
    datasets.load_split("stl10", "train")
  _assert_user_error(excinfo, "could not load 'stl10' with tensorflow-datasets",
                     shown, "--data_dir=PATH holding stl10_binary/")


def test_tfds_failure_without_a_release_asks_for_the_network(monkeypatch):
  def failing_load(*args, **kwargs):
    del args, kwargs
    raise ConnectionError("Max retries exceeded")

  _register(monkeypatch, tfds_name="cifar10")
  monkeypatch.setattr(tfds, "load", failing_load)
  with pytest.raises(errors.UserError) as excinfo:
    datasets.load_split("toy", "test")
  # The message names the tensorflow-datasets name it loaded.
  _assert_user_error(excinfo,
                     "could not load 'cifar10' with tensorflow-datasets",
                     "with no network, connect to the network and retry")


# -------------------------------------------------------- embedded sample


def test_data_dir_with_the_embedded_sample_is_refused(tmp_path):
  with pytest.raises(errors.UserError) as excinfo:
    datasets.load_split("cifar10_sample", "train", data_dir=str(tmp_path))
  _assert_user_error(excinfo, f"--data_dir={tmp_path} does not apply to "
                     "cifar10_sample", "embedded", "drop --data_dir")


def _manifest():
  with open(os.path.join(sample.SAMPLE_DIR, sample.MANIFEST)) as f:
    return json.load(f)


@pytest.mark.parametrize("split, count, per_class", [
    ("train", 4000, 400), ("test", 1000, 100)])
def test_sample_decodes_to_manifest(split, count, per_class):
  images, labels = datasets.load_split("cifar10_sample", split)
  assert images.shape == (count, 32, 32, 3) and images.dtype == np.uint8
  assert labels.shape == (count,) and labels.dtype == np.int32
  assert np.bincount(labels, minlength=10).tolist() == [per_class] * 10
  entry = _manifest()["splits"][split]
  assert entry["count"] == count
  assert hashlib.sha256(images.tobytes()).hexdigest() == entry["pixels_sha256"]
  assert (hashlib.sha256(labels.astype(np.uint8).tobytes()).hexdigest() ==
          entry["labels_sha256"])
  info = datasets.get("cifar10_sample")
  assert getattr(info, f"{split}_size") == count
  assert info.class_names == cifar.CIFAR10_CLASS_NAMES


def _copy_sample_test_split(tmp_path, monkeypatch):
  for name in ("manifest.json", "test.webp", "test_labels.bin"):
    shutil.copy(os.path.join(sample.SAMPLE_DIR, name), tmp_path / name)
  monkeypatch.setattr(sample, "SAMPLE_DIR", str(tmp_path))


def test_sample_with_changed_label_is_reported_corrupt(tmp_path, monkeypatch):
  _copy_sample_test_split(tmp_path, monkeypatch)
  labels = bytearray((tmp_path / "test_labels.bin").read_bytes())
  labels[0] = (labels[0] + 1) % 10
  (tmp_path / "test_labels.bin").write_bytes(bytes(labels))
  with pytest.raises(errors.UserError) as excinfo:
    datasets.load_split("cifar10_sample", "test")
  _assert_user_error(excinfo, "is corrupt", "test_labels.bin does not match",
                     "make_cifar10_sample.py")


def test_sample_with_truncated_image_is_reported_corrupt(tmp_path, monkeypatch):
  _copy_sample_test_split(tmp_path, monkeypatch)
  webp = (tmp_path / "test.webp").read_bytes()
  (tmp_path / "test.webp").write_bytes(webp[:len(webp) // 2])
  with pytest.raises(errors.UserError) as excinfo:
    datasets.load_split("cifar10_sample", "test")
  _assert_user_error(excinfo, "is corrupt", "test.webp",
                     "make_cifar10_sample.py")


def test_sample_with_missing_file_is_reported_corrupt(tmp_path, monkeypatch):
  _copy_sample_test_split(tmp_path, monkeypatch)
  (tmp_path / "test.webp").unlink()
  with pytest.raises(errors.UserError) as excinfo:
    datasets.load_split("cifar10_sample", "test")
  _assert_user_error(excinfo, "is corrupt", "cannot read test.webp")


@pytest.mark.skipif(not _HAS_REAL_CIFAR10, reason="no real CIFAR-10 on disk")
@pytest.mark.parametrize("split, file_name, per_class", [
    ("train", "data_batch_1.bin", 400), ("test", "test_batch.bin", 100)])
def test_sample_equals_selection_from_real_files(split, file_name, per_class):
  records = np.fromfile(os.path.join(_REAL_CIFAR10, file_name),
                        dtype=np.uint8).reshape(-1, 3073)
  seen = [0] * 10
  keep = []
  for index, label in enumerate(records[:, 0]):
    if seen[label] < per_class:
      seen[label] += 1
      keep.append(index)
  expected_images = (records[keep, 1:].reshape(-1, 3, 32, 32)
                     .transpose(0, 2, 3, 1))
  images, labels = datasets.load_split("cifar10_sample", split)
  np.testing.assert_array_equal(labels, records[keep, 0])
  np.testing.assert_array_equal(images, expected_images)


# ------------------------------------------------------- real CIFAR-10


@pytest.mark.skipif(not _HAS_REAL_CIFAR10, reason="no real CIFAR-10 on disk")
def test_real_cifar10_matches_published_checks():
  parent = os.path.dirname(_REAL_CIFAR10)
  train_images, train_labels = datasets.load_split(
      "cifar10", "train", data_dir=parent)
  test_images, test_labels = datasets.load_split(
      "cifar10", "test", data_dir=parent)
  assert train_images.shape == (50000, 32, 32, 3)
  assert test_images.shape == (10000, 32, 32, 3)
  assert train_labels[0] == 6 and test_labels[0] == 3
  assert np.bincount(test_labels).tolist() == [1000] * 10
  mean = test_images.reshape(-1, 3).mean(axis=0) / 255.0
  np.testing.assert_allclose(mean, [0.4942, 0.4851, 0.4504], atol=1e-4)
  with open(os.path.join(_REAL_CIFAR10, "batches.meta.txt")) as f:
    names = tuple(line.strip() for line in f if line.strip())
  assert datasets.get("cifar10").class_names == names


# ------------------------------------------------------- dataset names


@pytest.mark.parametrize("name", list(datasets.NAMES) + [
    "folder", "tfds:mnist", "tfds:mnist_corrupted/shot_noise"])
def test_every_form_of_name_passes_the_check(name):
  datasets.check_name(name)


@pytest.mark.parametrize("name", ["tfds:", "Folder", "imagenet"])
def test_other_names_fail_the_check_with_the_forms(name):
  with pytest.raises(errors.UserError) as excinfo:
    datasets.check_name(name)
  _assert_user_error(excinfo, f"unknown dataset {name!r}", "folder",
                     "tfds:NAME[/CONFIG]", "cifar10_sample")


# ------------------------------------------------------------ image_size


def test_image_size_resizes_a_registered_dataset():
  spec = datasets.get("cifar10_sample", image_size=16)
  assert spec.image_shape == (16, 16, 3)
  assert datasets.get("cifar10_sample", image_size=32) == datasets.get(
      "cifar10_sample")
  images, labels = datasets.load_split("cifar10_sample", "test",
                                       image_size=16)
  full, full_labels = datasets.load_split("cifar10_sample", "test")
  assert images.shape == (1000, 16, 16, 3) and images.dtype == np.uint8
  np.testing.assert_array_equal(labels, full_labels)
  np.testing.assert_array_equal(images[:3],
                                streamed.resize(full[:3], 16).numpy())


def test_image_size_must_be_positive():
  with pytest.raises(errors.UserError) as excinfo:
    datasets.get("cifar10", image_size=0)
  _assert_user_error(excinfo, "--image_size=0 is not a side length")


def test_registered_split_over_the_budget_is_refused():
  with pytest.raises(errors.UserError) as excinfo:
    datasets.load_split("cifar10_sample", "test", memory_budget=2**20)
  _assert_user_error(excinfo, "the test split of cifar10_sample decodes to "
                     "0.00 GiB, over the memory budget of 0.00 GiB",
                     "--image_size")


# ---------------------------------------------------------------- folder


def _image(path, size, seed, mode="RGB"):
  """Writes a random image of size (height, width); returns its pixels."""
  height, width = size
  shape = (height, width, 3) if mode == "RGB" else (height, width)
  pixels = np.random.RandomState(seed).randint(0, 256, shape, np.uint8)
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(pixels, mode).save(path)
  return pixels


def _write_folder(root, size=(8, 8)):
  """Train: 2 dogs (one grayscale, one nested), 1 cat, 1 JPEG bird; test: one
  of each. Returns {path: pixels} of the PNGs."""
  pixels = {}
  for i, (split, name, mode) in enumerate([
      ("train", "dog/b.png", "RGB"), ("train", "dog/a.png", "L"),
      ("train", "dog/sub/c.png", "RGB"), ("train", "cat/x.PNG", "RGB"),
      ("test", "dog/d.png", "RGB"), ("test", "cat/e.png", "RGB"),
      ("test", "bird/f.png", "RGB")]):
    path = root / split / name
    pixels[str(path)] = _image(path, size, i, mode)
  _image(root / "train" / "bird" / "g.jpg", size, 9)
  (root / "train" / "cat" / "notes.txt").write_text("not an image")
  return pixels


def test_folder_spec_follows_the_keras_layout(tmp_path):
  _write_folder(tmp_path)
  spec = datasets.get("folder", data_dir=str(tmp_path))
  assert spec.name == "folder" and spec.display_name == tmp_path.name
  assert spec.class_names == ("bird", "cat", "dog") and spec.num_classes == 3
  assert spec.image_shape == (8, 8, 3)
  assert (spec.train_size, spec.test_size) == (5, 3)
  assert spec.defaults == datasets.get("cifar10").defaults
  # keras.utils.image_dataset_from_directory's classes and file order.
  keras_ds = keras.utils.image_dataset_from_directory(
      tmp_path / "train", image_size=(8, 8), shuffle=False, batch_size=None)
  assert tuple(keras_ds.class_names) == spec.class_names
  _, labels = datasets.load_split("folder", "train", data_dir=str(tmp_path))
  assert labels.tolist() == [int(y) for _, y in keras_ds]
  assert labels.tolist() == [0, 1, 2, 2, 2]


def test_folder_images_decode_to_rgb(tmp_path):
  pixels = _write_folder(tmp_path)
  images, labels = datasets.load_split("folder", "train",
                                       data_dir=str(tmp_path))
  assert images.shape == (5, 8, 8, 3) and images.dtype == np.uint8
  assert labels.dtype == np.int32
  # Sorted within a class: dog/a.png (grayscale), dog/b.png, dog/sub/c.png.
  gray = pixels[str(tmp_path / "train" / "dog" / "a.png")]
  np.testing.assert_array_equal(images[2], np.stack([gray] * 3, axis=-1))
  np.testing.assert_array_equal(
      images[3], pixels[str(tmp_path / "train" / "dog" / "b.png")])
  np.testing.assert_array_equal(
      images[1], pixels[str(tmp_path / "train" / "cat" / "x.PNG")])


def test_folder_image_size_resizes_images_of_any_size(tmp_path):
  pixels = _write_folder(tmp_path)
  _image(tmp_path / "test" / "cat" / "big.png", (12, 10), 20)
  spec = datasets.get("folder", data_dir=str(tmp_path), image_size=4)
  assert spec.image_shape == (4, 4, 3) and spec.test_size == 4
  images, _ = datasets.load_split("folder", "test", data_dir=str(tmp_path),
                                  image_size=4)
  assert images.shape == (4, 4, 4, 3)
  np.testing.assert_array_equal(images[3], streamed.resize(
      pixels[str(tmp_path / "test" / "dog" / "d.png")], 4).numpy())


def test_folder_over_the_budget_is_streamed_as_decoded(tmp_path):
  _write_folder(tmp_path)
  in_memory, labels = datasets.load_split("folder", "train",
                                          data_dir=str(tmp_path))
  images, streamed_labels = datasets.load_split(
      "folder", "train", data_dir=str(tmp_path), memory_budget=1)
  assert isinstance(images, datasets.StreamedImages)
  assert len(images) == 5 and images.shape == (5, 8, 8, 3)
  assert images.keys[0].endswith("g.jpg")
  np.testing.assert_array_equal(streamed_labels, labels)
  np.testing.assert_array_equal(images.load(), in_memory)
  np.testing.assert_array_equal(images[3], in_memory[3])
  np.testing.assert_array_equal(images[[4, 1]].load(), in_memory[[4, 1]])
  assert images[1:].shape == (4, 8, 8, 3)


def test_folder_needs_data_dir():
  with pytest.raises(errors.UserError) as excinfo:
    datasets.get("folder")
  _assert_user_error(excinfo, "--dataset=folder needs --data_dir=PATH",
                     "train/<class>/")


@pytest.mark.parametrize("split", ["train", "test"])
def test_folder_without_a_split_folder(tmp_path, split):
  _write_folder(tmp_path)
  shutil.rmtree(tmp_path / split)
  with pytest.raises(errors.UserError) as excinfo:
    datasets.load_split("folder", "train", data_dir=str(tmp_path))
  _assert_user_error(excinfo, f"{tmp_path / split} does not exist",
                     "point --data_dir at")


def test_folder_without_class_folders(tmp_path):
  (tmp_path / "train").mkdir()
  (tmp_path / "test").mkdir()
  with pytest.raises(errors.UserError) as excinfo:
    datasets.get("folder", data_dir=str(tmp_path))
  _assert_user_error(excinfo, f"{tmp_path / 'train'} holds no class folders")


def test_folder_with_an_empty_class_folder(tmp_path):
  _write_folder(tmp_path)
  (tmp_path / "train" / "emu").mkdir()
  (tmp_path / "test" / "emu").mkdir()
  with pytest.raises(errors.UserError) as excinfo:
    datasets.get("folder", data_dir=str(tmp_path))
  _assert_user_error(excinfo, f"{tmp_path / 'train' / 'emu'} holds no PNG or "
                     "JPEG images", "add images or remove the folder")


def test_folder_test_classes_must_be_the_train_classes(tmp_path):
  _write_folder(tmp_path)
  shutil.rmtree(tmp_path / "test" / "bird")
  _image(tmp_path / "test" / "emu" / "h.png", (8, 8), 30)
  with pytest.raises(errors.UserError) as excinfo:
    datasets.get("folder", data_dir=str(tmp_path))
  _assert_user_error(excinfo, "has other class folders than",
                     "missing: bird; extra: emu", "the same class folders")


def test_folder_images_of_two_sizes_need_image_size(tmp_path):
  _write_folder(tmp_path)
  big = tmp_path / "test" / "dog" / "big.png"
  _image(big, (12, 10), 20)
  with pytest.raises(errors.UserError) as excinfo:
    datasets.get("folder", data_dir=str(tmp_path))
  _assert_user_error(excinfo, "8x8", f"{big} is 12x10", "--image_size=N")


def test_folder_file_that_is_no_image_is_named(tmp_path):
  _write_folder(tmp_path)
  bad = tmp_path / "test" / "cat" / "bad.png"
  bad.write_bytes(b"not a png")
  with pytest.raises(errors.UserError) as excinfo:
    datasets.get("folder", data_dir=str(tmp_path))
  _assert_user_error(excinfo, f"could not read {bad} as an image",
                     "replace or remove the file")


def test_folder_file_corrupt_past_its_header_is_named_when_loaded(tmp_path):
  _write_folder(tmp_path)
  bad = tmp_path / "test" / "cat" / "e.png"
  bad.write_bytes(bad.read_bytes()[:-30])
  datasets.get("folder", data_dir=str(tmp_path))
  with pytest.raises(errors.UserError) as excinfo:
    datasets.load_split("folder", "test", data_dir=str(tmp_path))
  _assert_user_error(excinfo, f"could not read {bad} as an image",
                     "replace or remove the file")


# --------------------------------------------- tensorflow-datasets by name


def test_write_image_folder_writes_a_dataset_that_reads_back(tmp_path):
  spec = importlib.util.spec_from_file_location(
      "write_image_folder",
      helpers.ROOT / "scripts" / "write_image_folder.py")
  script = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(script)
  out = tmp_path / "sample_png"
  script.write("cifar10_sample", str(out))
  assert not (tmp_path / "sample_png.partial").exists()
  assert datasets.get("folder", data_dir=str(out)).class_names == tuple(
      sorted(sample.CLASS_NAMES))
  for split in datasets.SPLITS:
    images, labels = datasets.load_split("cifar10_sample", split)
    got_images, got_labels = datasets.load_split("folder", split, str(out))
    # Grouped by class, each class in the split's order: CIFAR-10's class
    # names are in alphabetical order, so the label ids stay the same.
    order = np.argsort(labels, kind="stable")
    np.testing.assert_array_equal(got_labels, labels[order])
    np.testing.assert_array_equal(got_images, images[order])
  with pytest.raises(errors.UserError) as excinfo:
    script.write("cifar10_sample", str(out))
  _assert_user_error(excinfo, f"--out_dir={out} exists", "new folder")


@pytest.mark.parametrize("name, shape, classes", [
    ("mnist", (28, 28, 1), 10),
    ("cifar10", (32, 32, 3), 10),
    ("mnist_corrupted/shot_noise", (28, 28, 1), 10),
])
def test_any_tfds_dataset_by_name(tmp_path, monkeypatch, name, shape,
                                  classes):
  helpers.mock_tfds_metadata(tmp_path, name)
  monkeypatch.setattr(tfds_source, "BATCH", 2)
  with tfds.testing.mock_data(num_examples=5, data_dir=str(tmp_path)):
    spec = datasets.get("tfds:" + name)
    assert (spec.name, spec.display_name, spec.tfds_name) == (
        "tfds:" + name, name, name)
    assert spec.image_shape == shape and spec.num_classes == classes
    # The label feature's names: cifar10's come with its download, so the
    # mock's are the ids.
    assert spec.class_names == tuple(str(i) for i in range(classes))
    assert (spec.train_size, spec.test_size) == (5, 5)
    assert spec.defaults == datasets.get("cifar10").defaults
    images, labels = datasets.load_split("tfds:" + name, "test")
    assert images.shape == (5,) + shape and images.dtype == np.uint8
    assert labels.dtype == np.int32 and labels.max() < classes
    small, _ = datasets.load_split("tfds:" + name, "test", image_size=8)
    assert small.shape == (5, 8, 8, shape[2])
    np.testing.assert_array_equal(small, streamed.resize(images, 8).numpy())


def test_tfds_images_of_varying_size_need_image_size(tmp_path):
  helpers.mock_tfds_metadata(tmp_path, "oxford_flowers102")
  with tfds.testing.mock_data(num_examples=3, data_dir=str(tmp_path)):
    with pytest.raises(errors.UserError) as excinfo:
      datasets.get("tfds:oxford_flowers102")
    _assert_user_error(excinfo, "tfds:oxford_flowers102 has images of "
                       "varying size", "--image_size=N")
    assert datasets.get("tfds:oxford_flowers102",
                        image_size=6).image_shape == (6, 6, 3)
    images, _ = datasets.load_split("tfds:oxford_flowers102", "train",
                                    image_size=6)
    assert images.shape == (3, 6, 6, 3)


def test_tfds_dataset_without_a_test_split_names_its_splits(tmp_path):
  helpers.mock_tfds_metadata(tmp_path, "imagenet_resized/8x8",
                 splits=("train", "validation"))
  with tfds.testing.mock_data(num_examples=3, data_dir=str(tmp_path)):
    with pytest.raises(errors.UserError) as excinfo:
      datasets.get("tfds:imagenet_resized/8x8")
  _assert_user_error(excinfo, "tfds:imagenet_resized/8x8 has no 'train' and "
                     "'test' splits (its splits: train, validation)")


def test_tfds_dataset_that_is_no_image_classification(tmp_path):
  with tfds.testing.mock_data(num_examples=1, data_dir=str(tmp_path)):
    with pytest.raises(errors.UserError) as excinfo:
      datasets.get("tfds:coco/2017")
  _assert_user_error(excinfo, "tfds:coco/2017 is not an image classification "
                     "dataset", "supervised keys")


def test_unknown_tfds_dataset():
  with pytest.raises(errors.UserError) as excinfo:
    datasets.get("tfds:no_such_dataset")
  _assert_user_error(excinfo, "tensorflow-datasets has no dataset "
                     "'no_such_dataset'", "tfds.list_builders()")


def test_tfds_dataset_refuses_data_dir(tmp_path):
  with pytest.raises(errors.UserError) as excinfo:
    datasets.load_split("tfds:mnist", "train", data_dir=str(tmp_path))
  _assert_user_error(excinfo, "does not apply to tfds:mnist",
                     "--tfds_data_dir")


def test_tfds_split_over_the_budget_needs_array_record(tmp_path):
  helpers.mock_tfds_metadata(tmp_path, "mnist")
  with tfds.testing.mock_data(num_examples=5, data_dir=str(tmp_path)):
    with pytest.raises(errors.UserError) as excinfo:
      datasets.load_split("tfds:mnist", "train", memory_budget=1)
  _assert_user_error(excinfo, "the train split of tfds:mnist decodes to",
                     "over the memory budget",
                     "tfds build mnist --file_format=array_record")


def test_tfds_array_record_split_over_the_budget_is_streamed(tmp_path):
  helpers.mock_tfds_metadata(tmp_path, "mnist", file_format="array_record")
  with tfds.testing.mock_data(num_examples=5, data_dir=str(tmp_path)):
    images, labels = datasets.load_split("tfds:mnist", "train",
                                         memory_budget=1, image_size=14)
    assert isinstance(images, datasets.StreamedImages)
    assert images.shape == (5, 14, 14, 1) and labels.shape == (5,)
    decoded = images.load()
    source = tfds.data_source("mnist", split="train")
    np.testing.assert_array_equal(
        decoded[2], streamed.resize(source[2]["image"], 14).numpy())
    np.testing.assert_array_equal(images[[2]].load(), decoded[2:3])
