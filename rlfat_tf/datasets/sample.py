"""The embedded cifar10_sample: real CIFAR-10 images shipped in the package.

``assets/cifar10_sample`` holds each split as a lossless WebP mosaic plus one
label byte per image, and a manifest with the SHA-256 of the decoded pixels
and of the labels, checked at every load; ``scripts/make_cifar10_sample.py``
builds it. A first run so needs neither network nor data on disk.
"""

import hashlib
import json
import os

import numpy as np
import tensorflow as tf

from rlfat_tf import errors
from rlfat_tf.datasets import cifar

SAMPLE_DIR = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets",
    "cifar10_sample")
MANIFEST = "manifest.json"
IMAGE_SHAPE = cifar.IMAGE_SHAPE
CLASS_NAMES = cifar.CIFAR10_CLASS_NAMES


def load(split: str) -> tuple[np.ndarray, np.ndarray]:
  """Decodes one split of the sample and checks it against its manifest.

  Args:
    split: "train" or "test".

  Returns:
    (images, labels): images uint8 [N, 32, 32, 3], labels int32 [N].

  Raises:
    errors.UserError: a file of the sample is missing, unreadable, or does
      not match the manifest.
  """
  try:
    entry = json.loads(_read(MANIFEST))["splits"][split]
    count = int(entry["count"])
    rows, cols = (int(n) for n in entry["grid"])
    image_file, labels_file = entry["image_file"], entry["labels_file"]
    pixels_sha256 = entry["pixels_sha256"]
    labels_sha256 = entry["labels_sha256"]
  except (ValueError, KeyError, TypeError) as e:
    raise _corrupt(f"bad {MANIFEST}: {errors.first_line(e)}") from e
  height, width, channels = IMAGE_SHAPE
  try:
    mosaic = tf.io.decode_webp(_read(image_file), channels=channels).numpy()
  except tf.errors.OpError as e:
    raise _corrupt(f"{image_file} does not decode as WebP") from e
  # decode_webp puts a frame axis first; a still image has exactly one frame.
  if mosaic.shape[-3:] != (rows * height, cols * width, channels) or (
      mosaic.size != rows * height * cols * width * channels):
    raise _corrupt(
        f"{image_file} decodes to shape {mosaic.shape}, not a {rows}x{cols} "
        f"grid of {height}x{width} tiles")
  if rows * cols != count:
    raise _corrupt(f"the {rows}x{cols} grid does not hold {count} images")
  images = np.ascontiguousarray(
      mosaic.reshape(rows, height, cols, width, channels)
      .transpose(0, 2, 1, 3, 4).reshape(count, height, width, channels))
  labels = np.frombuffer(_read(labels_file), dtype=np.uint8)
  if hashlib.sha256(images.tobytes()).hexdigest() != pixels_sha256:
    raise _corrupt(f"{image_file} does not match its SHA-256")
  if hashlib.sha256(labels.tobytes()).hexdigest() != labels_sha256:
    raise _corrupt(f"{labels_file} does not match its SHA-256")
  return images, labels.astype(np.int32)


def _corrupt(problem: str) -> errors.UserError:
  return errors.UserError(
      f"the embedded cifar10_sample in {SAMPLE_DIR} is corrupt ({problem}); "
      f"reinstall rlfat_tf, or regenerate it with python "
      f"scripts/make_cifar10_sample.py --cifar_dir=PATH/cifar-10-batches-bin "
      f"--out_dir={SAMPLE_DIR}")


def _read(file_name: str) -> bytes:
  try:
    with open(os.path.join(SAMPLE_DIR, file_name), "rb") as f:
      return f.read()
  except OSError as e:
    raise _corrupt(
        f"cannot read {file_name}: {e.strerror or type(e).__name__}") from e
