"""The registry of datasets: every name, fact and default of each dataset.

One `DatasetSpec` per dataset says where its images come from (the official
binary release under ``--data_dir``, tensorflow-datasets, or the package
itself), their shape and classes, the official code's training defaults on it
and its display name. Every command reads datasets from here; the family
modules (``cifar``, ``stl10``, ``sample``) hold the readers.

`load_split` picks the source from its arguments: the embedded reader of a
dataset that has one; otherwise the official release under ``data_dir`` when
one is given, else tensorflow-datasets, which downloads and prepares on first
use. Every bad input raises `errors.UserError` with a one-line message that
names the problem and the fix.
"""

import dataclasses
from typing import Callable

import numpy as np

from rlfat_tf import errors
from rlfat_tf.datasets import binary
from rlfat_tf.datasets import cifar
from rlfat_tf.datasets import sample
from rlfat_tf.datasets import stl10

SPLITS = ("train", "test")

# tensorflow-datasets' batch_size=-1 batches by the split size recorded in its
# metadata and falls back to sys.maxsize when that is unknown, which aborts the
# process in C++; fixed-size batches concatenated here cannot.
_TFDS_BATCH = 5000


@dataclasses.dataclass(frozen=True)
class TrainDefaults:
  """The official code's settings for a dataset (``*/config.json`` and
  ``model_bn.py`` of JHL-HUST/RLFAT).

  Attributes:
    depth: WideResNet depth.
    width: WideResNet widening factor.
    attack_steps: PGD steps of the training attack.
    train_steps: optimizer steps.
  """
  depth: int
  width: int
  attack_steps: int
  train_steps: int


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """Everything the code knows about one dataset.

  Attributes:
    name: the ``--dataset`` value.
    display_name: its name in reports and figures, e.g. "CIFAR-10".
    image_shape: (height, width, 3).
    num_classes: number of classes; labels are 0 .. num_classes - 1.
    class_names: class name of each label id.
    train_size: examples in the labelled train split.
    test_size: examples in the test split.
    defaults: the official code's training settings.
    release: the official binary release read under ``--data_dir``, or None.
    tfds_name: its tensorflow-datasets name, or None.
    read_embedded: reads a split of a dataset shipped in the package, or
      None; a dataset that has it takes no ``--data_dir``.
  """
  name: str
  display_name: str
  image_shape: tuple[int, int, int]
  num_classes: int
  class_names: tuple[str, ...]
  train_size: int
  test_size: int
  defaults: TrainDefaults
  release: binary.Release | None = None
  tfds_name: str | None = None
  read_embedded: Callable[[str], binary.Arrays] | None = None


_CIFAR_DEFAULTS = TrainDefaults(depth=34, width=10, attack_steps=10,
                                train_steps=79_800)

# One entry per dataset, in the paper's order, which reports follow.
_REGISTRY = {spec.name: spec for spec in (
    DatasetSpec(
        name="stl10", display_name="STL-10", image_shape=stl10.IMAGE_SHAPE,
        num_classes=10, class_names=stl10.CLASS_NAMES, train_size=5_000,
        test_size=8_000,
        defaults=TrainDefaults(depth=40, width=2, attack_steps=7,
                               train_steps=29_700),
        release=stl10.RELEASE, tfds_name="stl10"),
    DatasetSpec(
        name="cifar10", display_name="CIFAR-10", image_shape=cifar.IMAGE_SHAPE,
        num_classes=10, class_names=cifar.CIFAR10_CLASS_NAMES,
        train_size=50_000, test_size=10_000, defaults=_CIFAR_DEFAULTS,
        release=cifar.CIFAR10, tfds_name="cifar10"),
    DatasetSpec(
        name="cifar100", display_name="CIFAR-100",
        image_shape=cifar.IMAGE_SHAPE, num_classes=100,
        class_names=cifar.CIFAR100_CLASS_NAMES, train_size=50_000,
        test_size=10_000,
        defaults=dataclasses.replace(_CIFAR_DEFAULTS, attack_steps=7),
        release=cifar.CIFAR100, tfds_name="cifar100"),
    DatasetSpec(
        name="cifar10_sample", display_name="CIFAR-10 sample",
        image_shape=sample.IMAGE_SHAPE, num_classes=10,
        class_names=sample.CLASS_NAMES, train_size=4_000, test_size=1_000,
        defaults=_CIFAR_DEFAULTS, read_embedded=sample.load),
)}

NAMES = tuple(_REGISTRY)


def get(name: str) -> DatasetSpec:
  """Returns the spec of a registered dataset.

  Args:
    name: one of `NAMES`.

  Returns:
    The dataset's `DatasetSpec`.

  Raises:
    errors.UserError: the name is not registered.
  """
  try:
    return _REGISTRY[name]
  except KeyError:
    raise errors.UserError(
        f"unknown dataset {name!r}; use one of: {', '.join(_REGISTRY)}"
    ) from None


def load_split(name: str,
               split: str,
               data_dir: str | None = None,
               tfds_data_dir: str | None = None) -> binary.Arrays:
  """Loads one split of a dataset into memory.

  Args:
    name: one of `NAMES`.
    split: "train" (the labelled train split) or "test".
    data_dir: folder holding the official binary release (e.g. the folder that
      contains cifar-10-batches-bin/, or that folder itself). Empty or None
      means use tensorflow-datasets. Refused for embedded datasets.
    tfds_data_dir: tensorflow-datasets' data folder; None means its default.
      Used only when no data_dir is given.

  Returns:
    (images, labels): images uint8 [N, H, W, 3], labels int32 [N] in
    0 .. num_classes - 1.

  Raises:
    errors.UserError: unknown name or split, a data_dir the dataset cannot
      use, missing or malformed files, a corrupt embedded sample, or
      tensorflow-datasets failing.
  """
  spec = get(name)
  if split not in SPLITS:
    raise errors.UserError(
        f"unknown split {split!r}; use one of: {', '.join(SPLITS)}")
  if spec.read_embedded is not None:
    if data_dir:
      raise errors.UserError(
          f"--data_dir={data_dir} does not apply to {name}, which is embedded "
          f"in the package: drop --data_dir")
    return spec.read_embedded(split)
  if data_dir:
    if spec.release is None:
      raise errors.UserError(
          f"{name} has no reader of an official release, so --data_dir="
          f"{data_dir} cannot apply: drop --data_dir")
    return spec.release.load(split, data_dir)
  return _load_tfds(spec, split, tfds_data_dir or None)


def _load_tfds(spec: DatasetSpec, split: str,
               tfds_data_dir: str | None) -> binary.Arrays:
  """Loads a split with tensorflow-datasets, which may download it first."""
  release = spec.release
  # Every dataset that is not embedded has a release, a tfds name or both.
  offline_fix = (f"pass --data_dir=PATH holding {release.folder}/ (the "
                 f"official {release.title})" if release else
                 "connect to the network and retry")
  if spec.tfds_name is None:
    raise errors.UserError(
        f"{spec.name} is not in tensorflow-datasets: {offline_fix}")
  try:
    # Imported here so that a broken tensorflow-datasets install becomes a
    # UserError too, and local sources never pay for the import.
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    dataset = tfds.load(spec.tfds_name, split=split, as_supervised=True,
                        batch_size=_TFDS_BATCH, data_dir=tfds_data_dir)
    batches = list(tfds.as_numpy(dataset))
  # Offline, tensorflow-datasets fails in many ways (missing optional modules,
  # connection and download errors, missing files); all need the same fix.
  except Exception as e:  # pylint: disable=broad-except
    raise errors.UserError(
        f"could not load {spec.name!r} with tensorflow-datasets "
        f"({errors.first_line(e)}); with no network, {offline_fix}") from e
  images = np.concatenate([images for images, _ in batches])
  labels = np.concatenate([labels for _, labels in batches])
  return images.astype(np.uint8, copy=False), labels.astype(np.int32)
