"""STL-10: class names and the reader of its official binary files.

``*_X.bin`` stores each 96x96 image channel by channel, each channel
column-major; ``*_y.bin`` one label byte per image, 1 to 10. The unlabelled
split is not used.
"""

import numpy as np

from rlfat_tf.datasets import binary

IMAGE_SHAPE = (96, 96, 3)
_PIXELS = 96 * 96 * 3

# Equal, line for line, to class_names.txt of the release; label id = index.
CLASS_NAMES = ("airplane", "bird", "car", "cat", "deer", "dog", "horse",
               "monkey", "ship", "truck")


def _read_split(release: binary.Release,
                paths: list[str]) -> tuple[np.ndarray, np.ndarray]:
  """Reads one split from its *_X.bin and *_y.bin files."""
  x_path, y_path = paths
  # Both files hold exactly the split's number of records, so they agree.
  pixels = release.read_records(x_path, _PIXELS)
  raw_labels = release.read_records(y_path, 1)[:, 0]
  release.check_labels(y_path, raw_labels, 1, len(CLASS_NAMES))
  images = pixels.reshape(-1, 3, 96, 96).transpose(0, 3, 2, 1)
  return np.ascontiguousarray(images), raw_labels.astype(np.int32) - 1


RELEASE = binary.Release(
    folder="stl10_binary", title="STL-10 binary release",
    split_files={"train": ("train_X.bin", "train_y.bin"),
                 "test": ("test_X.bin", "test_y.bin")},
    records={"train_X.bin": 5_000, "train_y.bin": 5_000,
             "test_X.bin": 8_000, "test_y.bin": 8_000},
    read=_read_split)
