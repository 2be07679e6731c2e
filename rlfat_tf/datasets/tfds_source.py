"""tensorflow-datasets as a source: any image classification dataset in it.

`describe` reads a dataset's facts from its builder's ``DatasetInfo``: its
supervised keys name the image and the label feature, which must be an
``Image`` and a ``ClassLabel``; the label feature gives the classes and the
split infos the sizes. `load` decodes a split into memory; `streamed_split`
reads it record by record instead, which needs random access: only datasets
prepared in the ``array_record`` file format have it.

tensorflow-datasets is imported inside the functions, so that a broken
install becomes a `errors.UserError` too, and local sources never pay for
the import.
"""

import dataclasses

import numpy as np
import tensorflow as tf

from rlfat_tf import errors
from rlfat_tf.datasets import streamed

# tensorflow-datasets' batch_size=-1 batches by the split size recorded in its
# metadata and falls back to sys.maxsize when that is unknown, which aborts the
# process in C++; fixed-size batches concatenated here cannot.
BATCH = 5000


@dataclasses.dataclass(frozen=True)
class Description:
  """A tensorflow-datasets dataset's facts.

  Attributes:
    image_shape: (H, W, C) of the images as loaded (after ``image_size``).
    class_names: the label feature's names; label id = index.
    split_sizes: examples per split, for every split the dataset has.
    random_access: whether its prepared files can be read record by record
      (`streamed_split`).
  """
  image_shape: tuple[int, int, int]
  class_names: tuple[str, ...]
  split_sizes: dict[str, int]
  random_access: bool


def describe(tfds_name: str, tfds_data_dir: str | None,
             image_size: int | None) -> Description:
  """Reads a dataset's facts from its builder, preparing it if need be.

  Args:
    tfds_name: "NAME" or "NAME/CONFIG".
    tfds_data_dir: tensorflow-datasets' data folder, or None for its default.
    image_size: side length images are resized to, or None.

  Returns:
    The `Description`.

  Raises:
    errors.UserError: tensorflow-datasets cannot open or prepare it, it is
      not an image classification dataset, its images vary in size and
      ``image_size`` is None, or it lacks a train or a test split.
  """
  tfds = _import()
  try:
    builder = tfds.builder(tfds_name, data_dir=tfds_data_dir)
    info = builder.info
  except Exception as e:  # pylint: disable=broad-except
    raise errors.UserError(
        f"tensorflow-datasets has no dataset {tfds_name!r} "
        f"({errors.first_line(e)}): pass tfds:NAME or tfds:NAME/CONFIG of "
        f"one that tfds.list_builders() lists") from e
  image_key, label_key = _supervised_keys(tfds, tfds_name, info)
  height, width, channels = info.features[image_key].shape
  if channels is None:
    raise errors.UserError(
        f"tfds:{tfds_name} has images with varying channel counts: use a "
        f"dataset with a fixed number of channels")
  if image_size is None:
    if height is None or width is None:
      raise errors.UserError(
          f"tfds:{tfds_name} has images of varying size: pass "
          f"--image_size=N to resize all to NxN")
  else:
    height = width = image_size
  if not info.splits:
    # A dataset not yet prepared records no splits; tfds.load would prepare
    # it now too.
    try:
      builder.download_and_prepare()
    except Exception as e:  # pylint: disable=broad-except
      raise errors.UserError(
          f"could not prepare tfds:{tfds_name} with tensorflow-datasets "
          f"({errors.first_line(e)}); with no network, connect to the "
          f"network and retry") from e
  sizes = {name: split.num_examples for name, split in info.splits.items()}
  if not {"train", "test"} <= set(sizes):
    raise errors.UserError(
        f"tfds:{tfds_name} has no 'train' and 'test' splits (its splits: "
        f"{', '.join(sorted(sizes)) or 'none'}): use a dataset that has both, "
        f"or --dataset=folder")
  return Description(
      image_shape=(height, width, channels),
      class_names=tuple(info.features[label_key].names), split_sizes=sizes,
      random_access=info.file_format == tfds.core.FileFormat.ARRAY_RECORD)


def load(tfds_name: str, split: str, tfds_data_dir: str | None,
         image_size: int | None, offline_fix: str) -> tuple[np.ndarray,
                                                            np.ndarray]:
  """Decodes a split into memory, downloading and preparing it first if need be.

  Args:
    tfds_name: "NAME" or "NAME/CONFIG".
    split: "train" or "test".
    tfds_data_dir: tensorflow-datasets' data folder, or None for its default.
    image_size: side length to resize images to, or None.
    offline_fix: what the error message tells the user to do when loading
      fails, as it does offline.

  Returns:
    (images uint8 [N, H, W, C], labels int32 [N]).

  Raises:
    errors.UserError: tensorflow-datasets fails.
  """
  tfds = _import()
  try:
    dataset = tfds.load(tfds_name, split=split, as_supervised=True,
                        data_dir=tfds_data_dir)
    if image_size is not None:
      # Per image, before batching: images of varying size cannot batch.
      dataset = dataset.map(
          lambda image, label: (streamed.resize(image, image_size), label))
    batches = list(tfds.as_numpy(dataset.batch(BATCH)))
  # Offline, tensorflow-datasets fails in many ways (missing optional modules,
  # connection and download errors, missing files); all need the same fix.
  except Exception as e:  # pylint: disable=broad-except
    raise errors.UserError(
        f"could not load {tfds_name!r} with tensorflow-datasets "
        f"({errors.first_line(e)}); with no network, {offline_fix}") from e
  images = np.concatenate([images for images, _ in batches])
  labels = np.concatenate([labels for _, labels in batches])
  return images.astype(np.uint8, copy=False), labels.astype(np.int32)


def streamed_split(tfds_name: str, split: str, tfds_data_dir: str | None,
                   image_shape: tuple[int, int, int],
                   image_size: int | None) -> tuple[streamed.StreamedImages,
                                                    np.ndarray]:
  """A split read record by record from its array_record files.

  The labels are read in one pass that skips decoding the images; each image
  is read from ``tfds.data_source`` by its record index when tf.data asks.

  Args:
    tfds_name: "NAME" or "NAME/CONFIG" of a dataset prepared as array_record
      (``describe(...).random_access``).
    split: "train" or "test".
    tfds_data_dir: tensorflow-datasets' data folder, or None for its default.
    image_shape: (H, W, C) of the images as loaded.
    image_size: side length to resize images to, or None.

  Returns:
    (`streamed.StreamedImages` keyed by record index, labels int32 [N]).

  Raises:
    errors.UserError: tensorflow-datasets fails.
  """
  tfds = _import()
  try:
    info = tfds.builder(tfds_name, data_dir=tfds_data_dir).info
    image_key, label_key = _supervised_keys(tfds, tfds_name, info)
    source = tfds.data_source(tfds_name, split=split, data_dir=tfds_data_dir)
    labels = tfds.load(
        tfds_name, split=split, data_dir=tfds_data_dir,
        decoders={image_key: tfds.decode.SkipDecoding()}).map(
            lambda example: example[label_key]).batch(BATCH)
    labels = np.concatenate(list(tfds.as_numpy(labels))).astype(np.int32)
  except Exception as e:  # pylint: disable=broad-except
    raise errors.UserError(
        f"could not open the {split} split of tfds:{tfds_name} for streaming "
        f"({errors.first_line(e)}): check --tfds_data_dir") from e
  native_shape = info.features[image_key].shape

  def decode(index):
    image = tf.numpy_function(lambda i: source[int(i)][image_key], [index],
                              tf.uint8, stateful=False)
    image.set_shape(native_shape)
    if image_size is not None:
      image = streamed.resize(image, image_size)
    return tf.ensure_shape(image, image_shape)

  return streamed.StreamedImages(
      keys=np.arange(len(labels), dtype=np.int64), image_shape=image_shape,
      decode=decode), labels


def _import():
  """tensorflow_datasets, or a UserError saying how to install it."""
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  except Exception as e:  # pylint: disable=broad-except
    raise errors.UserError(
        f"could not import tensorflow_datasets ({errors.first_line(e)}): "
        f"python -m pip install -r requirements.txt") from e
  return tfds


def _supervised_keys(tfds, tfds_name, info) -> tuple[str, str]:
  """The (image, label) feature names, or a UserError if they are not."""
  keys = info.supervised_keys
  features = info.features
  if not (isinstance(keys, tuple) and len(keys) == 2 and
          all(isinstance(k, str) and k in features for k in keys) and
          isinstance(features[keys[0]], tfds.features.Image) and
          isinstance(features[keys[1]], tfds.features.ClassLabel)):
    raise errors.UserError(
        f"tfds:{tfds_name} is not an image classification dataset (its "
        f"supervised keys {keys!r} are not an Image and a ClassLabel "
        f"feature): use one whose supervised keys are (image, label)")
  return keys
