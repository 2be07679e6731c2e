"""Image-classification datasets as uint8 NHWC arrays.

`load_split` reads one split from one of three sources, chosen by its
arguments:

* ``cifar10_sample``: a small lossless sample of CIFAR-10 embedded in the
  package (``assets/cifar10_sample``), so a first run needs neither network nor
  data on disk.
* ``data_dir``: the official binary releases of CIFAR-10, CIFAR-100 and STL-10,
  laid out as their authors distribute them.
* otherwise tensorflow-datasets, which downloads and prepares on first use.

Every bad input raises `errors.UserError` with a one-line message that names
the problem and the fix.
"""

import dataclasses
import hashlib
import json
import os

import numpy as np
import tensorflow as tf

from rlfat_tf import errors

DATASETS = ("cifar10", "cifar100", "stl10", "cifar10_sample")
SPLITS = ("train", "test")

SAMPLE_DIR = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "assets", "cifar10_sample")
SAMPLE_MANIFEST = "manifest.json"

# The names below equal, line for line, batches.meta.txt, fine_label_names.txt
# and class_names.txt of the official releases; label id = index.
CIFAR10_CLASS_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog",
                       "frog", "horse", "ship", "truck")
CIFAR100_CLASS_NAMES = (
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle",
    "bicycle", "bottle", "bowl", "boy", "bridge", "bus", "butterfly", "camel",
    "can", "castle", "caterpillar", "cattle", "chair", "chimpanzee", "clock",
    "cloud", "cockroach", "couch", "crab", "crocodile", "cup", "dinosaur",
    "dolphin", "elephant", "flatfish", "forest", "fox", "girl", "hamster",
    "house", "kangaroo", "keyboard", "lamp", "lawn_mower", "leopard", "lion",
    "lizard", "lobster", "man", "maple_tree", "motorcycle", "mountain",
    "mouse", "mushroom", "oak_tree", "orange", "orchid", "otter", "palm_tree",
    "pear", "pickup_truck", "pine_tree", "plain", "plate", "poppy",
    "porcupine", "possum", "rabbit", "raccoon", "ray", "road", "rocket",
    "rose", "sea", "seal", "shark", "shrew", "skunk", "skyscraper", "snail",
    "snake", "spider", "squirrel", "streetcar", "sunflower", "sweet_pepper",
    "table", "tank", "telephone", "television", "tiger", "tractor", "train",
    "trout", "tulip", "turtle", "wardrobe", "whale", "willow_tree", "wolf",
    "woman", "worm")
STL10_CLASS_NAMES = ("airplane", "bird", "car", "cat", "deer", "dog", "horse",
                     "monkey", "ship", "truck")

# tensorflow-datasets' batch_size=-1 batches by the split size recorded in its
# metadata and falls back to sys.maxsize when that is unknown, which aborts the
# process in C++; fixed-size batches concatenated here cannot.
_TFDS_BATCH = 5000


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """Static facts about a dataset.

  Attributes:
    name: one of `DATASETS`.
    num_classes: number of classes; labels are 0 .. num_classes - 1.
    image_shape: (height, width, 3).
    class_names: class name of each label id.
    train_size: examples in the labelled train split.
    test_size: examples in the test split.
  """
  name: str
  num_classes: int
  image_shape: tuple[int, int, int]
  class_names: tuple[str, ...]
  train_size: int
  test_size: int


_INFOS = {
    "cifar10": DatasetInfo("cifar10", 10, (32, 32, 3), CIFAR10_CLASS_NAMES,
                           50000, 10000),
    "cifar100": DatasetInfo("cifar100", 100, (32, 32, 3),
                            CIFAR100_CLASS_NAMES, 50000, 10000),
    "stl10": DatasetInfo("stl10", 10, (96, 96, 3), STL10_CLASS_NAMES, 5000,
                         8000),
    "cifar10_sample": DatasetInfo("cifar10_sample", 10, (32, 32, 3),
                                  CIFAR10_CLASS_NAMES, 4000, 1000),
}


@dataclasses.dataclass(frozen=True)
class _Layout:
  """Where a dataset's official binary release keeps each split."""
  folder: str
  release: str
  split_files: dict[str, tuple[str, ...]]


_LAYOUTS = {
    "cifar10": _Layout(
        "cifar-10-batches-bin", "CIFAR-10 binary release",
        {"train": tuple(f"data_batch_{i}.bin" for i in range(1, 6)),
         "test": ("test_batch.bin",)}),
    "cifar100": _Layout(
        "cifar-100-binary", "CIFAR-100 binary release",
        {"train": ("train.bin",), "test": ("test.bin",)}),
    "stl10": _Layout(
        "stl10_binary", "STL-10 binary release",
        {"train": ("train_X.bin", "train_y.bin"),
         "test": ("test_X.bin", "test_y.bin")}),
}

# Label bytes at the start of each record, and which of them is the label used
# (CIFAR-100 stores the coarse label first, then the fine one).
_CIFAR_LABEL_BYTES = {"cifar10": (1, 0), "cifar100": (2, 1)}
_CIFAR_PIXELS = 32 * 32 * 3
_STL_PIXELS = 96 * 96 * 3


def dataset_info(name: str) -> DatasetInfo:
  """Returns the static facts about a dataset.

  Args:
    name: one of `DATASETS`.

  Returns:
    The dataset's `DatasetInfo`.

  Raises:
    errors.UserError: the name is not one of `DATASETS`.
  """
  _check_name(name)
  return _INFOS[name]


def load_split(name: str,
               split: str,
               data_dir: str | None = None,
               tfds_data_dir: str | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
  """Loads one split of a dataset into memory.

  Args:
    name: one of `DATASETS`.
    split: "train" (the labelled train split) or "test".
    data_dir: folder holding the official binary release (e.g. the folder that
      contains cifar-10-batches-bin/, or that folder itself). Empty or None
      means use tensorflow-datasets. Ignored for cifar10_sample.
    tfds_data_dir: tensorflow-datasets' data folder; None means its default.
      Used only when no data_dir is given.

  Returns:
    (images, labels): images uint8 [N, H, W, 3], labels int32 [N] in
    0 .. num_classes - 1.

  Raises:
    errors.UserError: unknown name or split, missing or malformed files, a
      corrupt embedded sample, or tensorflow-datasets failing.
  """
  _check_name(name)
  if split not in SPLITS:
    raise errors.UserError(
        f"unknown split {split!r}; use one of: {', '.join(SPLITS)}")
  if name == "cifar10_sample":
    return _load_sample(split)
  if data_dir:
    return _load_local(name, split, data_dir)
  return _load_tfds(name, split, tfds_data_dir or None)


def read_cifar_file(path: str,
                    name: str = "cifar10") -> tuple[np.ndarray, np.ndarray]:
  """Reads one file of the official CIFAR-10 or CIFAR-100 binary release.

  Args:
    path: a data_batch_*.bin / test_batch.bin (CIFAR-10) or train.bin /
      test.bin (CIFAR-100) file.
    name: "cifar10" or "cifar100"; CIFAR-100 yields the fine labels.

  Returns:
    (images, labels): images uint8 [N, 32, 32, 3], labels int32 [N].

  Raises:
    errors.UserError: the name is not a CIFAR dataset, or the file is missing,
      unreadable, truncated or has labels out of range.
  """
  if name not in _CIFAR_LABEL_BYTES:
    raise errors.UserError(
        f"read_cifar_file got dataset {name!r}; use one of: "
        f"{', '.join(_CIFAR_LABEL_BYTES)}")
  layout = _LAYOUTS[name]
  _require_files([path], layout)
  label_bytes, label_index = _CIFAR_LABEL_BYTES[name]
  records = _read_records(path, label_bytes + _CIFAR_PIXELS, layout)
  labels = records[:, label_index]
  _check_labels(path, labels, 0, _INFOS[name].num_classes - 1, layout)
  # Each record holds the red plane, then green, then blue, each row-major.
  images = records[:, label_bytes:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
  return np.ascontiguousarray(images), labels.astype(np.int32)


def _check_name(name: str) -> None:
  if name not in DATASETS:
    raise errors.UserError(
        f"unknown dataset {name!r}; use one of: {', '.join(DATASETS)}")


def _load_local(name: str, split: str,
                data_dir: str) -> tuple[np.ndarray, np.ndarray]:
  """Reads a split from the official binary release under data_dir."""
  layout = _LAYOUTS[name]
  root = _layout_root(data_dir, layout)
  paths = [os.path.join(root, f) for f in layout.split_files[split]]
  # All files are checked before any is read, so a missing one fails fast.
  _require_files(paths, layout)
  if name == "stl10":
    return _read_stl10(paths[0], paths[1], layout)
  parts = [read_cifar_file(p, name) for p in paths]
  return (np.concatenate([images for images, _ in parts]),
          np.concatenate([labels for _, labels in parts]))


def _layout_root(data_dir: str, layout: _Layout) -> str:
  """Returns the release folder: data_dir/<folder>, or data_dir itself."""
  data_dir = os.path.expanduser(data_dir)
  fix = (f"point --data_dir at the folder that holds {layout.folder}/ from the "
         f"official {layout.release}, or at {layout.folder}/ itself")
  if not os.path.isdir(data_dir):
    raise errors.UserError(
        f"--data_dir={data_dir} does not exist or is not a folder; {fix}")
  nested = os.path.join(data_dir, layout.folder)
  if os.path.isdir(nested):
    return nested
  known_files = {f for files in layout.split_files.values() for f in files}
  if (os.path.basename(os.path.normpath(data_dir)) == layout.folder or
      any(os.path.exists(os.path.join(data_dir, f)) for f in known_files)):
    return data_dir
  raise errors.UserError(
      f"--data_dir={data_dir} holds no {layout.folder}/ folder; {fix}")


def _require_files(paths: list[str], layout: _Layout) -> None:
  for path in paths:
    if not os.path.isfile(path):
      raise errors.UserError(
          f"{path} is missing; point --data_dir at the folder that holds "
          f"{layout.folder}/ from the official {layout.release}")


def _reextract(layout: _Layout) -> str:
  return (f"re-extract the official {layout.release} into the folder that "
          f"--data_dir points at")


def _unreadable(path: str, e: OSError) -> errors.UserError:
  return errors.UserError(
      f"could not read {path} ({e.strerror or type(e).__name__}); check its "
      f"permissions or point --data_dir elsewhere")


def _read_records(path: str, record_size: int, layout: _Layout) -> np.ndarray:
  """Reads a file of fixed-size byte records as a uint8 [N, record_size]."""
  try:
    size = os.path.getsize(path)
  except OSError as e:
    raise _unreadable(path, e) from e
  if size == 0 or size % record_size:
    raise errors.UserError(
        f"{path} is malformed or truncated ({size} bytes is not a positive "
        f"whole number of {record_size}-byte records); {_reextract(layout)}")
  try:
    return np.fromfile(path, dtype=np.uint8).reshape(-1, record_size)
  except OSError as e:
    raise _unreadable(path, e) from e


def _check_labels(path: str, labels: np.ndarray, low: int, high: int,
                  layout: _Layout) -> None:
  bad = labels[(labels < low) | (labels > high)]
  if bad.size:
    raise errors.UserError(
        f"{path} is malformed: {bad.size} label(s) outside {low}-{high} (first "
        f"{int(bad[0])}); {_reextract(layout)}")


def _read_stl10(x_path: str, y_path: str,
                layout: _Layout) -> tuple[np.ndarray, np.ndarray]:
  """Reads one STL-10 split from its *_X.bin and *_y.bin files."""
  pixels = _read_records(x_path, _STL_PIXELS, layout)
  raw_labels = _read_records(y_path, 1, layout)[:, 0]
  if len(raw_labels) != len(pixels):
    raise errors.UserError(
        f"{y_path} is malformed or truncated: it has {len(raw_labels)} labels "
        f"but {x_path} has {len(pixels)} images; {_reextract(layout)}")
  _check_labels(y_path, raw_labels, 1, 10, layout)
  # Each image is stored channel by channel, each channel column-major.
  images = pixels.reshape(-1, 3, 96, 96).transpose(0, 3, 2, 1)
  return np.ascontiguousarray(images), raw_labels.astype(np.int32) - 1


def _load_tfds(name: str, split: str,
               tfds_data_dir: str | None) -> tuple[np.ndarray, np.ndarray]:
  """Loads a split with tensorflow-datasets, which may download it first."""
  layout = _LAYOUTS[name]
  try:
    # Imported here so that a broken tensorflow-datasets install becomes a
    # UserError too, and local sources never pay for the import.
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    dataset = tfds.load(name, split=split, as_supervised=True,
                        batch_size=_TFDS_BATCH, data_dir=tfds_data_dir)
    batches = list(tfds.as_numpy(dataset))
  # Offline, tensorflow-datasets fails in many ways (missing optional modules,
  # connection and download errors, missing files); all need the same fix.
  except Exception as e:  # pylint: disable=broad-except
    raise errors.UserError(
        f"could not load {name!r} with tensorflow-datasets ({_first_line(e)}); "
        f"with no network, pass --data_dir=PATH holding {layout.folder}/ (the "
        f"official {layout.release})") from e
  images = np.concatenate([images for images, _ in batches])
  labels = np.concatenate([labels for _, labels in batches])
  return images.astype(np.uint8, copy=False), labels.astype(np.int32)


def _first_line(e: BaseException) -> str:
  """Returns 'Type: first line of the message', keeping UserErrors one line."""
  lines = str(e).strip().splitlines()
  return f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__


def _sample_corrupt(problem: str) -> errors.UserError:
  return errors.UserError(
      f"the embedded cifar10_sample in {SAMPLE_DIR} is corrupt ({problem}); "
      f"reinstall rlfat_tf, or regenerate it with python "
      f"scripts/make_cifar10_sample.py --cifar_dir=PATH/cifar-10-batches-bin "
      f"--out_dir={SAMPLE_DIR}")


def _read_sample_file(file_name: str) -> bytes:
  try:
    with open(os.path.join(SAMPLE_DIR, file_name), "rb") as f:
      return f.read()
  except OSError as e:
    raise _sample_corrupt(
        f"cannot read {file_name}: {e.strerror or type(e).__name__}") from e


def _load_sample(split: str) -> tuple[np.ndarray, np.ndarray]:
  """Decodes the embedded sample and checks it against its manifest."""
  try:
    entry = json.loads(_read_sample_file(SAMPLE_MANIFEST))["splits"][split]
    count = int(entry["count"])
    rows, cols = (int(n) for n in entry["grid"])
    image_file, labels_file = entry["image_file"], entry["labels_file"]
    pixels_sha256 = entry["pixels_sha256"]
    labels_sha256 = entry["labels_sha256"]
  except (ValueError, KeyError, TypeError) as e:
    raise _sample_corrupt(
        f"bad {SAMPLE_MANIFEST}: {_first_line(e)}") from e
  height, width, channels = _INFOS["cifar10_sample"].image_shape
  try:
    mosaic = tf.io.decode_webp(
        _read_sample_file(image_file), channels=channels).numpy()
  except tf.errors.OpError as e:
    raise _sample_corrupt(f"{image_file} does not decode as WebP") from e
  # decode_webp puts a frame axis first; a still image has exactly one frame.
  if mosaic.shape[-3:] != (rows * height, cols * width, channels) or (
      mosaic.size != rows * height * cols * width * channels):
    raise _sample_corrupt(
        f"{image_file} decodes to shape {mosaic.shape}, not a {rows}x{cols} "
        f"grid of {height}x{width} tiles")
  if rows * cols != count:
    raise _sample_corrupt(
        f"the {rows}x{cols} grid does not hold {count} images")
  images = np.ascontiguousarray(
      mosaic.reshape(rows, height, cols, width, channels)
      .transpose(0, 2, 1, 3, 4).reshape(count, height, width, channels))
  labels = np.frombuffer(_read_sample_file(labels_file), dtype=np.uint8)
  if hashlib.sha256(images.tobytes()).hexdigest() != pixels_sha256:
    raise _sample_corrupt(f"{image_file} does not match its SHA-256")
  if hashlib.sha256(labels.tobytes()).hexdigest() != labels_sha256:
    raise _sample_corrupt(f"{labels_file} does not match its SHA-256")
  return images, labels.astype(np.int32)
