"""CIFAR-10 and CIFAR-100: class names and readers of the official binary files.

Each record of the binary releases holds the label byte(s), then the red,
green and blue planes of a 32x32 image, each row-major. CIFAR-100 stores the
coarse label first, then the fine one, which is the label used here.
"""

import functools

import numpy as np

from rlfat_tf.datasets import binary

IMAGE_SHAPE = (32, 32, 3)
_PIXELS = 32 * 32 * 3

# The names below equal, line for line, batches.meta.txt and
# fine_label_names.txt of the official releases; label id = index.
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


def _read_file(release: binary.Release, path: str, label_bytes: int,
               label_index: int,
               num_classes: int) -> tuple[np.ndarray, np.ndarray]:
  """Reads one binary file into (images uint8 [N, 32, 32, 3], labels int32)."""
  records = release.read_records(path, label_bytes + _PIXELS)
  labels = records[:, label_index]
  release.check_labels(path, labels, 0, num_classes - 1)
  images = records[:, label_bytes:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
  return np.ascontiguousarray(images), labels.astype(np.int32)


def _read_split(release: binary.Release, paths: list[str], *, label_bytes: int,
                label_index: int,
                num_classes: int) -> tuple[np.ndarray, np.ndarray]:
  parts = [_read_file(release, p, label_bytes, label_index, num_classes)
           for p in paths]
  return (np.concatenate([images for images, _ in parts]),
          np.concatenate([labels for _, labels in parts]))


CIFAR10 = binary.Release(
    folder="cifar-10-batches-bin", title="CIFAR-10 binary release",
    split_files={"train": tuple(f"data_batch_{i}.bin" for i in range(1, 6)),
                 "test": ("test_batch.bin",)},
    records={**{f"data_batch_{i}.bin": 10_000 for i in range(1, 6)},
             "test_batch.bin": 10_000},
    read=functools.partial(_read_split, label_bytes=1, label_index=0,
                           num_classes=10))

CIFAR100 = binary.Release(
    folder="cifar-100-binary", title="CIFAR-100 binary release",
    split_files={"train": ("train.bin",), "test": ("test.bin",)},
    records={"train.bin": 50_000, "test.bin": 10_000},
    read=functools.partial(_read_split, label_bytes=2, label_index=1,
                           num_classes=100))


def read_cifar10_file(path: str) -> tuple[np.ndarray, np.ndarray]:
  """Reads one file of the official CIFAR-10 binary release.

  Args:
    path: a data_batch_*.bin or test_batch.bin file.

  Returns:
    (images, labels): images uint8 [10000, 32, 32, 3], labels int32 [10000].

  Raises:
    errors.UserError: the file is missing, unreadable, not of the release,
      truncated or has labels out of range.
  """
  CIFAR10.require_files([path])
  return CIFAR10.read(CIFAR10, [path])
