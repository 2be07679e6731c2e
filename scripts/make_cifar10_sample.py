"""Builds the embedded cifar10_sample from the official CIFAR-10 binary files.

Selection: train is the first 400 images of each class of data_batch_1.bin,
test the first 100 of each class of test_batch.bin; both keep file order. Each
split is stored as a lossless WebP mosaic of 32x32 tiles plus one label byte per
image, and manifest.json records counts, grid and SHA-256 of the decoded
pixels and of the labels, which `rlfat_tf.datasets.sample` checks at load time.

Usage (from the repository root; needs Pillow for the WebP encoder):

  python scripts/make_cifar10_sample.py \
      --cifar_dir=../shared/data/cifar-10-batches-bin \
      --out_dir=rlfat_tf/assets/cifar10_sample
"""

import hashlib
import io
import json
import os
import sys

from absl import app
from absl import flags
import numpy as np
from PIL import Image
import tensorflow as tf

# Lets the script run from a checkout in which the package is not installed.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# pylint: disable=g-import-not-at-top,wrong-import-position
from rlfat_tf import datasets
from rlfat_tf import errors
from rlfat_tf import files
from rlfat_tf.datasets import cifar
from rlfat_tf.datasets import sample
# pylint: enable=g-import-not-at-top,wrong-import-position

_CIFAR_DIR = flags.DEFINE_string(
    "cifar_dir", None,
    "Folder cifar-10-batches-bin/ of the official CIFAR-10 binary release.")
_OUT_DIR = flags.DEFINE_string(
    "out_dir", sample.SAMPLE_DIR, "Folder to write the sample into.")

# split: (source file, images kept per class).
_SELECTION = {
    "train": ("data_batch_1.bin", 400),
    "test": ("test_batch.bin", 100),
}
_GRID_COLS = 100


def first_per_class(labels: np.ndarray, per_class: int,
                    num_classes: int) -> np.ndarray:
  """Returns indices of the first per_class images of each class, sorted.

  Args:
    labels: int labels in file order.
    per_class: images to keep of each class.
    num_classes: number of classes.

  Returns:
    Increasing indices into labels: file order is kept.

  Raises:
    errors.UserError: some class has fewer than per_class images.
  """
  chosen = []
  for label in range(num_classes):
    indices = np.flatnonzero(labels == label)[:per_class]
    if len(indices) < per_class:
      raise errors.UserError(
          f"class {label} has only {len(indices)} images, fewer than "
          f"{per_class}; pass --cifar_dir of the complete CIFAR-10 release")
    chosen.append(indices)
  return np.sort(np.concatenate(chosen))


def encode_mosaic(images: np.ndarray, cols: int) -> tuple[bytes, list[int]]:
  """Tiles images row-major into one lossless WebP.

  Args:
    images: uint8 [N, H, W, 3] with N a multiple of cols.
    cols: tiles per mosaic row.

  Returns:
    (the WebP bytes, [rows, cols]).
  """
  count, height, width, channels = images.shape
  rows = count // cols
  mosaic = (images.reshape(rows, cols, height, width, channels)
            .transpose(0, 2, 1, 3, 4)
            .reshape(rows * height, cols * width, channels))
  buffer = io.BytesIO()
  Image.fromarray(mosaic).save(
      buffer, format="WEBP", lossless=True, quality=100, method=6)
  data = buffer.getvalue()
  # The loader decodes with TensorFlow, not Pillow, so that is what must
  # reproduce every pixel.
  decoded = tf.io.decode_webp(data, channels=channels).numpy()
  if not np.array_equal(decoded.reshape(mosaic.shape), mosaic):
    raise errors.UserError(
        "tf.io.decode_webp does not reproduce the encoded mosaic bit for bit; "
        "use a Pillow built with a lossless-capable libwebp")
  return data, [rows, cols]


def build(cifar_dir: str, out_dir: str) -> dict[str, object]:
  """Writes the sample's files into out_dir and returns its manifest.

  Args:
    cifar_dir: folder cifar-10-batches-bin/ of the official release.
    out_dir: folder to write into; created if absent.

  Returns:
    The manifest, as also written to out_dir/manifest.json.

  Raises:
    errors.UserError: missing or malformed source files.
  """
  info = datasets.get("cifar10")
  outputs = {}
  splits = {}
  for split, (source_file, per_class) in _SELECTION.items():
    source_path = os.path.join(cifar_dir, source_file)
    if not os.path.isfile(source_path):
      raise errors.UserError(
          f"{source_path} is missing; pass --cifar_dir=the "
          f"cifar-10-batches-bin/ folder of the official CIFAR-10 binary "
          f"release")
    images, labels = cifar.read_cifar10_file(source_path)
    keep = first_per_class(labels, per_class, info.num_classes)
    images = np.ascontiguousarray(images[keep])
    label_bytes = labels[keep].astype(np.uint8).tobytes()
    webp, grid = encode_mosaic(images, _GRID_COLS)
    with open(source_path, "rb") as f:
      source_sha1 = hashlib.sha1(f.read()).hexdigest()
    outputs[f"{split}.webp"] = webp
    outputs[f"{split}_labels.bin"] = label_bytes
    splits[split] = {
        "count": len(keep),
        "per_class": per_class,
        "image_file": f"{split}.webp",
        "labels_file": f"{split}_labels.bin",
        "grid": grid,
        "pixels_sha256": hashlib.sha256(images.tobytes()).hexdigest(),
        "labels_sha256": hashlib.sha256(label_bytes).hexdigest(),
        "source_file": f"cifar-10-batches-bin/{source_file}",
        "source_sha1": source_sha1,
        "selection": (f"the first {per_class} images of each class in file "
                      f"order, kept in file order"),
    }
  manifest = {
      "dataset": "cifar10_sample",
      "image_shape": list(info.image_shape),
      "class_names": list(info.class_names),
      "format": (
          "per split: image_file is a lossless WebP mosaic of grid "
          "[rows, cols] tiles, image k at tile row k // cols, column k % cols; "
          "labels_file holds one uint8 label per image; pixels_sha256 is the "
          "SHA-256 of the decoded uint8 [count, 32, 32, 3] array in C order, "
          "labels_sha256 that of labels_file"),
      "generator": "scripts/make_cifar10_sample.py",
      "splits": splits,
  }
  os.makedirs(out_dir, exist_ok=True)
  # Each file is replaced whole; should a run stop between files, the
  # manifest's hashes no longer match and the loader reports the sample corrupt.
  for file_name, data in outputs.items():
    files.write_bytes(os.path.join(out_dir, file_name), data)
  files.write_bytes(os.path.join(out_dir, sample.MANIFEST),
                    (json.dumps(manifest, indent=2) + "\n").encode())
  return manifest


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  if not _CIFAR_DIR.value:
    raise app.UsageError("--cifar_dir is required")
  try:
    manifest = build(_CIFAR_DIR.value, _OUT_DIR.value)
  except errors.UserError as e:
    sys.exit(f"error: {e}")
  for split, entry in manifest["splits"].items():
    print(f"{split}: {entry['count']} images, pixels {entry['pixels_sha256']}")


if __name__ == "__main__":
  app.run(main)
