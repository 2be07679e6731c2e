"""Tests of rlfat_tf.sources: binary readers, tfds path, embedded sample."""
import hashlib
import json
import os
import shutil

import numpy as np
import pytest
import tensorflow_datasets as tfds

from rlfat_tf import errors
from rlfat_tf import sources

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


def _assert_user_error(excinfo, *fragments):
  message = str(excinfo.value)
  assert "\n" not in message
  for fragment in fragments:
    assert fragment in message, message


# ---------------------------------------------------------------- CIFAR-10


def _write_cifar10(root):
  """Test split: 3 images; train: one image per data_batch file."""
  folder = root / "cifar-10-batches-bin"
  # Offsets follow the layout: plane (R, G, B) * 1024 + row * 32 + column.
  _write(folder / "test_batch.bin",
         _record([3], {0 * 1024 + 0 * 32 + 1: 10}) +
         _record([0], {1 * 1024 + 2 * 32 + 3: 20}) +
         _record([9], {2 * 1024 + 31 * 32 + 0: 30}))
  for i in range(1, 6):
    _write(folder / f"data_batch_{i}.bin", _record([i - 1], {i: 100 + i}))
  return folder


def test_cifar10_reader_places_planes_rows_and_columns(tmp_path):
  _write_cifar10(tmp_path)
  images, labels = sources.load_split("cifar10", "test", data_dir=str(tmp_path))
  assert images.shape == (3, 32, 32, 3) and images.dtype == np.uint8
  assert labels.dtype == np.int32
  assert labels.tolist() == [3, 0, 9]
  assert images[0, 0, 1, 0] == 10
  assert images[1, 2, 3, 1] == 20
  assert images[2, 31, 0, 2] == 30
  assert int(images.sum(dtype=np.int64)) == 60


def test_cifar10_train_concatenates_batches_in_order(tmp_path):
  _write_cifar10(tmp_path)
  images, labels = sources.load_split(
      "cifar10", "train", data_dir=str(tmp_path))
  assert images.shape == (5, 32, 32, 3)
  assert labels.tolist() == [0, 1, 2, 3, 4]
  # data_batch_i marks red row 0, column i with 100 + i.
  assert [int(images[i - 1, 0, i, 0]) for i in range(1, 6)] == [
      101, 102, 103, 104, 105]


def test_data_dir_may_point_at_the_layout_folder(tmp_path):
  folder = _write_cifar10(tmp_path)
  _, labels = sources.load_split("cifar10", "test", data_dir=str(folder))
  assert labels.tolist() == [3, 0, 9]


def test_renamed_layout_folder_is_recognised_by_its_files(tmp_path):
  folder = _write_cifar10(tmp_path)
  renamed = tmp_path / "my_cifar"
  folder.rename(renamed)
  _, labels = sources.load_split("cifar10", "test", data_dir=str(renamed))
  assert labels.tolist() == [3, 0, 9]


# --------------------------------------------------------------- CIFAR-100


def test_cifar100_reader_uses_fine_label(tmp_path):
  folder = tmp_path / "cifar-100-binary"
  # Records: coarse label, fine label, then pixels as in CIFAR-10.
  _write(folder / "test.bin",
         _record([19, 99], {1 * 1024 + 4 * 32 + 5: 7}) +
         _record([0, 42], {2 * 1024 + 0 * 32 + 31: 9}))
  _write(folder / "train.bin", _record([5, 17], {}))
  images, labels = sources.load_split(
      "cifar100", "test", data_dir=str(tmp_path))
  assert images.shape == (2, 32, 32, 3)
  assert labels.tolist() == [99, 42]
  assert images[0, 4, 5, 1] == 7
  assert images[1, 0, 31, 2] == 9
  assert int(images.sum(dtype=np.int64)) == 16
  _, train_labels = sources.load_split(
      "cifar100", "train", data_dir=str(folder))
  assert train_labels.tolist() == [17]


# ------------------------------------------------------------------ STL-10


def _write_stl10(root, x_images, y_bytes, split="test"):
  folder = root / "stl10_binary"
  # Offsets follow the layout: channel * 96 * 96 + column * 96 + row.
  _write(folder / f"{split}_X.bin",
         b"".join(_record([], marks, pixels=3 * 96 * 96) for marks in x_images))
  _write(folder / f"{split}_y.bin", bytes(y_bytes))
  return folder


def test_stl10_reader_is_column_major_with_one_based_labels(tmp_path):
  _write_stl10(tmp_path, [
      {0 * 9216 + 0 * 96 + 1: 10},  # row 1, column 0 of red
      {2 * 9216 + 70 * 96 + 5: 20},  # row 5, column 70 of blue
  ], [1, 10])
  images, labels = sources.load_split("stl10", "test", data_dir=str(tmp_path))
  assert images.shape == (2, 96, 96, 3) and images.dtype == np.uint8
  assert labels.dtype == np.int32
  assert labels.tolist() == [0, 9]
  assert images[0, 1, 0, 0] == 10
  assert images[1, 5, 70, 2] == 20
  assert int(images.sum(dtype=np.int64)) == 30


# ------------------------------------------------------------------ errors


def test_unknown_dataset_lists_known_ones():
  with pytest.raises(errors.UserError) as excinfo:
    sources.load_split("mnist", "train")
  _assert_user_error(excinfo, "'mnist'", "cifar10, cifar100, stl10, "
                     "cifar10_sample")
  with pytest.raises(errors.UserError) as excinfo:
    sources.dataset_info("imagenet")
  _assert_user_error(excinfo, "'imagenet'", "cifar10_sample")


def test_unknown_split():
  with pytest.raises(errors.UserError) as excinfo:
    sources.load_split("cifar10", "validation", data_dir="/nonexistent")
  _assert_user_error(excinfo, "'validation'", "train, test")


def test_missing_data_dir(tmp_path):
  missing = str(tmp_path / "nope")
  with pytest.raises(errors.UserError) as excinfo:
    sources.load_split("cifar10", "test", data_dir=missing)
  _assert_user_error(excinfo, f"--data_dir={missing} does not exist",
                     "cifar-10-batches-bin/")


def test_data_dir_without_layout_folder(tmp_path):
  with pytest.raises(errors.UserError) as excinfo:
    sources.load_split("stl10", "train", data_dir=str(tmp_path))
  _assert_user_error(excinfo, "holds no stl10_binary/ folder",
                     "point --data_dir at")


def test_missing_file_is_named(tmp_path):
  folder = _write_cifar10(tmp_path)
  (folder / "data_batch_3.bin").unlink()
  with pytest.raises(errors.UserError) as excinfo:
    sources.load_split("cifar10", "train", data_dir=str(tmp_path))
  _assert_user_error(excinfo, str(folder / "data_batch_3.bin") + " is missing",
                     "--data_dir", "CIFAR-10 binary release")
  stl = _write_stl10(tmp_path, [{}], [1])
  (stl / "test_y.bin").unlink()
  with pytest.raises(errors.UserError) as excinfo:
    sources.load_split("stl10", "test", data_dir=str(tmp_path))
  _assert_user_error(excinfo, "test_y.bin is missing", "--data_dir")


def test_truncated_file(tmp_path):
  folder = _write_cifar10(tmp_path)
  path = folder / "test_batch.bin"
  path.write_bytes(path.read_bytes()[:-5])
  with pytest.raises(errors.UserError) as excinfo:
    sources.load_split("cifar10", "test", data_dir=str(tmp_path))
  _assert_user_error(excinfo, str(path), "truncated", "9214 bytes",
                     "3073-byte records", "--data_dir")


def test_empty_file(tmp_path):
  folder = _write_cifar10(tmp_path)
  (folder / "test_batch.bin").write_bytes(b"")
  with pytest.raises(errors.UserError) as excinfo:
    sources.load_split("cifar10", "test", data_dir=str(tmp_path))
  _assert_user_error(excinfo, "truncated", "0 bytes", "--data_dir")


def test_cifar10_label_out_of_range(tmp_path):
  folder = _write_cifar10(tmp_path)
  _write(folder / "test_batch.bin", _record([2], {}) + _record([10], {}))
  with pytest.raises(errors.UserError) as excinfo:
    sources.load_split("cifar10", "test", data_dir=str(tmp_path))
  _assert_user_error(excinfo, "test_batch.bin is malformed", "outside 0-9",
                     "first 10", "--data_dir")


def test_cifar100_fine_label_out_of_range(tmp_path):
  _write(tmp_path / "cifar-100-binary" / "test.bin", _record([1, 100], {}))
  with pytest.raises(errors.UserError) as excinfo:
    sources.load_split("cifar100", "test", data_dir=str(tmp_path))
  _assert_user_error(excinfo, "outside 0-99", "--data_dir")


def test_stl10_label_zero_is_out_of_range(tmp_path):
  _write_stl10(tmp_path, [{}, {}], [1, 0])
  with pytest.raises(errors.UserError) as excinfo:
    sources.load_split("stl10", "test", data_dir=str(tmp_path))
  _assert_user_error(excinfo, "test_y.bin is malformed", "outside 1-10",
                     "--data_dir")


def test_stl10_label_and_image_counts_disagree(tmp_path):
  _write_stl10(tmp_path, [{}, {}], [1, 2, 3])
  with pytest.raises(errors.UserError) as excinfo:
    sources.load_split("stl10", "test", data_dir=str(tmp_path))
  _assert_user_error(excinfo, "test_y.bin is malformed or truncated",
                     "3 labels", "2 images", "--data_dir")


def test_stl10_truncated_images(tmp_path):
  folder = _write_stl10(tmp_path, [{}], [1])
  (folder / "test_X.bin").write_bytes(bytes(3 * 96 * 96 - 1))
  with pytest.raises(errors.UserError) as excinfo:
    sources.load_split("stl10", "test", data_dir=str(tmp_path))
  _assert_user_error(excinfo, "test_X.bin is malformed or truncated",
                     "27648-byte records", "--data_dir")


# -------------------------------------------------- tensorflow-datasets


@pytest.mark.parametrize("name, shape, num_classes", [
    ("cifar10", (32, 32, 3), 10),
    ("cifar100", (32, 32, 3), 100),
    ("stl10", (96, 96, 3), 10),
])
def test_tfds_path_with_mock_data(monkeypatch, name, shape, num_classes):
  # Batches of 2 over 5 examples make the loader join three batches.
  monkeypatch.setattr(sources, "_TFDS_BATCH", 2)
  with tfds.testing.mock_data(num_examples=5):
    for split in sources.SPLITS:
      images, labels = sources.load_split(name, split, data_dir="")
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
    sources.load_split("stl10", "train")
  _assert_user_error(excinfo, "could not load 'stl10' with tensorflow-datasets",
                     shown, "--data_dir=PATH holding stl10_binary/")


# -------------------------------------------------------- embedded sample


def _manifest():
  with open(os.path.join(sources.SAMPLE_DIR, sources.SAMPLE_MANIFEST)) as f:
    return json.load(f)


@pytest.mark.parametrize("split, count, per_class", [
    ("train", 4000, 400), ("test", 1000, 100)])
def test_sample_decodes_to_manifest(split, count, per_class):
  images, labels = sources.load_split("cifar10_sample", split,
                                      data_dir="/ignored")
  assert images.shape == (count, 32, 32, 3) and images.dtype == np.uint8
  assert labels.shape == (count,) and labels.dtype == np.int32
  assert np.bincount(labels, minlength=10).tolist() == [per_class] * 10
  entry = _manifest()["splits"][split]
  assert entry["count"] == count
  assert hashlib.sha256(images.tobytes()).hexdigest() == entry["pixels_sha256"]
  assert (hashlib.sha256(labels.astype(np.uint8).tobytes()).hexdigest() ==
          entry["labels_sha256"])
  info = sources.dataset_info("cifar10_sample")
  assert getattr(info, f"{split}_size") == count
  assert info.class_names == sources.CIFAR10_CLASS_NAMES


def _copy_sample_test_split(tmp_path, monkeypatch):
  for name in ("manifest.json", "test.webp", "test_labels.bin"):
    shutil.copy(os.path.join(sources.SAMPLE_DIR, name), tmp_path / name)
  monkeypatch.setattr(sources, "SAMPLE_DIR", str(tmp_path))


def test_sample_with_changed_label_is_reported_corrupt(tmp_path, monkeypatch):
  _copy_sample_test_split(tmp_path, monkeypatch)
  labels = bytearray((tmp_path / "test_labels.bin").read_bytes())
  labels[0] = (labels[0] + 1) % 10
  (tmp_path / "test_labels.bin").write_bytes(bytes(labels))
  with pytest.raises(errors.UserError) as excinfo:
    sources.load_split("cifar10_sample", "test")
  _assert_user_error(excinfo, "is corrupt", "test_labels.bin does not match",
                     "make_cifar10_sample.py")


def test_sample_with_truncated_image_is_reported_corrupt(tmp_path, monkeypatch):
  _copy_sample_test_split(tmp_path, monkeypatch)
  webp = (tmp_path / "test.webp").read_bytes()
  (tmp_path / "test.webp").write_bytes(webp[:len(webp) // 2])
  with pytest.raises(errors.UserError) as excinfo:
    sources.load_split("cifar10_sample", "test")
  _assert_user_error(excinfo, "is corrupt", "test.webp",
                     "make_cifar10_sample.py")


def test_sample_with_missing_file_is_reported_corrupt(tmp_path, monkeypatch):
  _copy_sample_test_split(tmp_path, monkeypatch)
  (tmp_path / "test.webp").unlink()
  with pytest.raises(errors.UserError) as excinfo:
    sources.load_split("cifar10_sample", "test")
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
  images, labels = sources.load_split("cifar10_sample", split)
  np.testing.assert_array_equal(labels, records[keep, 0])
  np.testing.assert_array_equal(images, expected_images)


# ------------------------------------------------------- real CIFAR-10


@pytest.mark.skipif(not _HAS_REAL_CIFAR10, reason="no real CIFAR-10 on disk")
def test_real_cifar10_matches_published_checks():
  parent = os.path.dirname(_REAL_CIFAR10)
  train_images, train_labels = sources.load_split(
      "cifar10", "train", data_dir=parent)
  test_images, test_labels = sources.load_split(
      "cifar10", "test", data_dir=parent)
  assert train_images.shape == (50000, 32, 32, 3)
  assert test_images.shape == (10000, 32, 32, 3)
  assert train_labels[0] == 6 and test_labels[0] == 3
  assert np.bincount(test_labels).tolist() == [1000] * 10
  mean = test_images.reshape(-1, 3).mean(axis=0) / 255.0
  np.testing.assert_allclose(mean, [0.4942, 0.4851, 0.4504], atol=1e-4)
  with open(os.path.join(_REAL_CIFAR10, "batches.meta.txt")) as f:
    names = tuple(line.strip() for line in f if line.strip())
  assert sources.dataset_info("cifar10").class_names == names
