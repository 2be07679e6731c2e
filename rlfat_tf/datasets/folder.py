"""The folder source: PNG and JPEG images in one folder per class.

The layout is ``PATH/train/<class>/*`` and ``PATH/test/<class>/*``, as
``keras.utils.image_dataset_from_directory`` reads it: the classes are the
subfolders of train/ sorted by name (label id = index), test/ has the same
ones, and each class folder's images are taken in sorted path order, nested
folders included. Files that are not ``.png``, ``.jpg`` or ``.jpeg`` are
ignored, as that function ignores them.

Every image decodes to 3 channels: grayscale ones are replicated to RGB and
an alpha channel is dropped, so one folder may mix them and models see RGB.
All images must share a size unless ``image_size`` is given, which resizes
each one (`streamed.resize`). Sizes are read from the file headers when the
folder is scanned, so `scan` also names a file that is not an image at all;
a file corrupt past its header fails when it is decoded.
"""

import dataclasses
import os

import numpy as np
from PIL import Image
import tensorflow as tf

from rlfat_tf import errors
from rlfat_tf.datasets import streamed

EXTENSIONS = (".png", ".jpg", ".jpeg")
CHANNELS = 3
_LAYOUT = "PATH/train/<class>/ and PATH/test/<class>/ image folders"


@dataclasses.dataclass(frozen=True)
class Listing:
  """What a scan of a folder dataset found.

  Attributes:
    root: the dataset folder.
    class_names: the class folders, sorted; label id = index.
    image_shape: (H, W, 3) of the decoded (and resized) images.
    files: per split ("train", "test"), (paths [N] str, labels [N] int32).
    image_size: the side length images are resized to, or None.
  """
  root: str
  class_names: tuple[str, ...]
  image_shape: tuple[int, int, int]
  files: dict[str, tuple[np.ndarray, np.ndarray]]
  image_size: int | None


def scan(data_dir: str | None, image_size: int | None) -> Listing:
  """Lists the images and classes of a folder dataset and checks them.

  Args:
    data_dir: the folder that holds train/ and test/.
    image_size: side length to resize every image to, or None to require
      that all images share one size.

  Returns:
    The `Listing`.

  Raises:
    errors.UserError: no data_dir, a missing train/ or test/, no class
      folders, test/ classes that differ from train/'s, a class folder
      without images, a file that is not a readable image, or images of
      different sizes without ``image_size``.
  """
  if not data_dir:
    raise errors.UserError(
        f"--dataset=folder needs --data_dir=PATH holding {_LAYOUT}")
  root = os.path.expanduser(data_dir)
  class_names = _class_folders(root, "train")
  test_classes = _class_folders(root, "test")
  if test_classes != class_names:
    missing = sorted(set(class_names) - set(test_classes))
    extra = sorted(set(test_classes) - set(class_names))
    raise errors.UserError(
        f"{os.path.join(root, 'test')} has other class folders than "
        f"{os.path.join(root, 'train')} (missing: {', '.join(missing) or '-'};"
        f" extra: {', '.join(extra) or '-'}): give both the same class "
        f"folders")
  files = {}
  sizes = {}
  for split in ("train", "test"):
    paths, labels = [], []
    for label, name in enumerate(class_names):
      found = _images_under(os.path.join(root, split, name))
      paths += found
      labels += [label] * len(found)
    files[split] = (np.array(paths), np.array(labels, np.int32))
    for path in paths:
      # The first path of each size, to name two in a mismatch.
      sizes.setdefault(_size(path), path)
  if image_size is None:
    if len(sizes) > 1:
      (size_a, path_a), (size_b, path_b) = list(sizes.items())[:2]
      raise errors.UserError(
          f"images of {root} differ in size ({path_a} is "
          f"{size_a[0]}x{size_a[1]}, {path_b} is {size_b[0]}x{size_b[1]}, "
          f"height x width): pass --image_size=N to resize all to NxN")
    height, width = next(iter(sizes))
  else:
    height = width = image_size
  return Listing(root=root, class_names=class_names,
                 image_shape=(height, width, CHANNELS), files=files,
                 image_size=image_size)


def streamed_split(listing: Listing, split: str) -> tuple[
    streamed.StreamedImages, np.ndarray]:
  """A split of the listing as (`streamed.StreamedImages`, labels int32)."""
  paths, labels = listing.files[split]
  return streamed.StreamedImages(
      keys=paths, image_shape=listing.image_shape,
      decode=_decoder(listing.image_shape, listing.image_size)), labels


def load(listing: Listing, split: str) -> tuple[np.ndarray, np.ndarray]:
  """Decodes a split into memory as (images uint8 [N, H, W, 3], labels).

  It decodes exactly as the streamed split does, so either gives the same
  pixels.

  Raises:
    errors.UserError: a file does not decode as an image.
  """
  images, labels = streamed_split(listing, split)
  try:
    return images.load(), labels
  except tf.errors.OpError:
    # tf.data's error does not say which file failed: find the first one.
    for path in images.keys:
      try:
        images.decode(tf.constant(path))
      except tf.errors.OpError as e:
        raise _unreadable(path, errors.first_line(e)) from e
    raise


def _decoder(image_shape, image_size):
  """The path -> uint8 [H, W, 3] function of a folder dataset's images."""

  def decode(path):
    image = tf.io.decode_image(tf.io.read_file(path), channels=CHANNELS,
                               expand_animations=False)
    if image_size is not None:
      image = streamed.resize(image, image_size)
    return tf.ensure_shape(image, image_shape)

  return decode


def _class_folders(root: str, split: str) -> tuple[str, ...]:
  """The sorted class folder names of root/split."""
  folder = os.path.join(root, split)
  if not os.path.isdir(folder):
    raise errors.UserError(
        f"{folder} does not exist or is not a folder: point --data_dir at "
        f"the folder holding {_LAYOUT}")
  names = tuple(sorted(
      n for n in os.listdir(folder) if os.path.isdir(os.path.join(folder, n))))
  if not names:
    raise errors.UserError(
        f"{folder} holds no class folders: put each class's images in "
        f"{folder}/<class>/")
  return names


def _images_under(folder: str) -> list[str]:
  """The image files under a class folder, nested ones too, sorted."""
  found = []
  for parent, subfolders, file_names in os.walk(folder):
    subfolders.sort()
    found += [os.path.join(parent, f) for f in sorted(file_names)
              if f.lower().endswith(EXTENSIONS)]
  if not found:
    raise errors.UserError(
        f"{folder} holds no PNG or JPEG images ({', '.join(EXTENSIONS)}): "
        f"add images or remove the folder")
  return found


def _size(path: str) -> tuple[int, int]:
  """(height, width) of an image, read from its header."""
  try:
    with Image.open(path) as image:
      width, height = image.size
  except (OSError, ValueError) as e:
    raise _unreadable(path, errors.first_line(e)) from e
  return height, width


def _unreadable(path: str, reason: str) -> errors.UserError:
  return errors.UserError(
      f"could not read {path} as an image ({reason}): "
      f"replace or remove the file")
