"""The registry of datasets: every name, fact and default of each dataset.

One `DatasetSpec` per dataset says where its images come from (the official
binary release under ``--data_dir``, tensorflow-datasets, or the package
itself), their shape and classes, the official code's training defaults on it
and its display name. Every command reads datasets from here; the family
modules (``cifar``, ``stl10``, ``sample``) hold the readers.

Besides the registered `NAMES`, two forms name datasets from outside the
package (`NAME_HELP`):
- ``folder``: PNG and JPEG images under ``data_dir/train/<class>/`` and
  ``data_dir/test/<class>/`` (``folder`` module);
- ``tfds:NAME`` or ``tfds:NAME/CONFIG``: any tensorflow-datasets image
  classification dataset with a train and a test split (``tfds_source``).
Both train with the CIFAR-10 defaults (`EXTERNAL_DEFAULTS`).

`load_split` picks the source from its arguments: the embedded reader of a
dataset that has one; otherwise the official release under ``data_dir`` when
one is given, else tensorflow-datasets, which downloads and prepares on first
use. ``image_size`` resizes the images of any dataset (`streamed.resize`).
A split whose decoded images would exceed ``memory_budget`` bytes is not
decoded into memory: folder datasets and tensorflow-datasets ones prepared as
array_record come back as a `StreamedImages`, read file by file (record by
record) inside the tf.data pipelines; any other refuses. Every bad input
raises `errors.UserError` with a one-line message that names the problem and
the fix.
"""

import dataclasses
import os
from typing import Callable

import numpy as np

from rlfat_tf import errors
from rlfat_tf.datasets import binary
from rlfat_tf.datasets import cifar
from rlfat_tf.datasets import folder
from rlfat_tf.datasets import sample
from rlfat_tf.datasets import stl10
from rlfat_tf.datasets import streamed
from rlfat_tf.datasets import tfds_source

StreamedImages = streamed.StreamedImages

SPLITS = ("train", "test")
FOLDER = "folder"
TFDS_PREFIX = "tfds:"
# Decoded bytes of a split above which it is streamed instead of held in
# memory; a quarter of a 16 GiB machine, which also holds the model, the
# attack's batches and TensorFlow itself.
MEMORY_BUDGET = 4 * 2**30
# Images resized per batch when a split in memory is resized.
_RESIZE_BATCH = 1000


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
    image_shape: (height, width, channels); channels is 3, or 1 for some
      tensorflow-datasets datasets (e.g. tfds:mnist).
    num_classes: number of classes; labels are 0 .. num_classes - 1.
    class_names: class name of each label id.
    train_size: examples in the labelled train split.
    test_size: examples in the test split.
    defaults: the official code's training settings.
    release: the official binary release read under ``--data_dir``, or None.
    tfds_name: its tensorflow-datasets name ("NAME" or "NAME/CONFIG"), or
      None.
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

# The defaults of datasets from outside the package: CIFAR-10's, the
# official code's only setting for images of unknown kind.
EXTERNAL_DEFAULTS = _CIFAR_DEFAULTS

NAME_HELP = (
    f"one of: {', '.join(NAMES)}; {FOLDER} (PNG/JPEG images in "
    f"--data_dir/train/<class>/ and --data_dir/test/<class>/); or "
    f"{TFDS_PREFIX}NAME[/CONFIG], a tensorflow-datasets image classification "
    f"dataset with train and test splits (e.g. {TFDS_PREFIX}mnist)")


def check_name(name: str) -> None:
  """Raises a UserError unless ``name`` has one of the forms of `NAME_HELP`.

  It reads no data, so flag validators can call it.
  """
  if not (name in _REGISTRY or name == FOLDER or
          (name.startswith(TFDS_PREFIX) and name[len(TFDS_PREFIX):])):
    raise errors.UserError(f"unknown dataset {name!r}; use {NAME_HELP}")


def train_defaults(name: str) -> TrainDefaults:
  """The training defaults of a dataset, read from no data.

  Args:
    name: one of the forms of `NAME_HELP`.

  Raises:
    errors.UserError: an unknown name.
  """
  check_name(name)
  return _REGISTRY[name].defaults if name in _REGISTRY else EXTERNAL_DEFAULTS


def in_memory(images: np.ndarray | StreamedImages) -> np.ndarray:
  """The uint8 images of a `load_split` result, decoding streamed ones.

  Commands that need every image of a selection at once (an evaluation's
  attacks, an export's calibration and evaluation sets) call it on what
  they selected, which is all that is decoded.
  """
  if isinstance(images, StreamedImages):
    return images.load()
  return images


def get(name: str,
        *,
        data_dir: str | None = None,
        tfds_data_dir: str | None = None,
        image_size: int | None = None) -> DatasetSpec:
  """Returns the spec of a dataset.

  Args:
    name: one of the forms of `NAME_HELP`.
    data_dir: the folder of a ``folder`` dataset; unused by the others.
    tfds_data_dir: tensorflow-datasets' data folder for ``tfds:`` names;
      None means its default.
    image_size: side length the images are resized to, or None for their
      own size; ``image_shape`` reports it.

  Returns:
    The dataset's `DatasetSpec`. A ``folder`` one is scanned (every file's
    header is read) and a ``tfds:`` one is prepared if it is not yet.

  Raises:
    errors.UserError: an unknown name, a bad ``image_size``, or a dataset
      that cannot be read (see ``folder.scan``, ``tfds_source.describe``).
  """
  check_name(name)
  _check_image_size(image_size)
  if name == FOLDER:
    listing = folder.scan(data_dir, image_size)
    return DatasetSpec(
        name=name,
        display_name=os.path.basename(os.path.normpath(listing.root)),
        image_shape=listing.image_shape, num_classes=len(listing.class_names),
        class_names=listing.class_names,
        train_size=len(listing.files["train"][1]),
        test_size=len(listing.files["test"][1]), defaults=EXTERNAL_DEFAULTS)
  if name.startswith(TFDS_PREFIX):
    tfds_name = name[len(TFDS_PREFIX):]
    facts = tfds_source.describe(tfds_name, tfds_data_dir, image_size)
    return DatasetSpec(
        name=name, display_name=tfds_name, image_shape=facts.image_shape,
        num_classes=len(facts.class_names), class_names=facts.class_names,
        train_size=facts.split_sizes["train"],
        test_size=facts.split_sizes["test"], defaults=EXTERNAL_DEFAULTS,
        tfds_name=tfds_name)
  spec = _REGISTRY[name]
  if image_size is None:
    return spec
  return dataclasses.replace(
      spec, image_shape=(image_size, image_size, spec.image_shape[2]))


def load_split(name: str,
               split: str,
               data_dir: str | None = None,
               tfds_data_dir: str | None = None,
               *,
               image_size: int | None = None,
               memory_budget: int = MEMORY_BUDGET
               ) -> tuple[np.ndarray | StreamedImages, np.ndarray]:
  """Loads one split of a dataset: into memory, or streamed if it is large.

  Args:
    name: one of the forms of `NAME_HELP`.
    split: "train" (the labelled train split) or "test".
    data_dir: folder holding the official binary release (e.g. the folder that
      contains cifar-10-batches-bin/, or that folder itself), or the folder
      of a ``folder`` dataset. Empty or None means use tensorflow-datasets.
      Refused for embedded and ``tfds:`` datasets.
    tfds_data_dir: tensorflow-datasets' data folder; None means its default.
      Used only when no data_dir is given.
    image_size: side length to resize the images to, or None for their own
      size.
    memory_budget: bytes the decoded split may take in memory; above it the
      split is streamed, or refused by a source that cannot stream.

  Returns:
    (images, labels): images uint8 [N, H, W, C] in memory, or a
    `StreamedImages` of that shape when over ``memory_budget``; labels int32
    [N] in 0 .. num_classes - 1.

  Raises:
    errors.UserError: unknown name or split, a data_dir the dataset cannot
      use, missing or malformed files, a corrupt embedded sample,
      tensorflow-datasets failing, or a split over ``memory_budget`` that
      cannot be streamed.
  """
  check_name(name)
  if split not in SPLITS:
    raise errors.UserError(
        f"unknown split {split!r}; use one of: {', '.join(SPLITS)}")
  _check_image_size(image_size)
  if name == FOLDER:
    listing = folder.scan(data_dir, image_size)
    images, labels = folder.streamed_split(listing, split)
    if images.nbytes > memory_budget:
      return images, labels
    return folder.load(listing, split)
  if name.startswith(TFDS_PREFIX):
    if data_dir:
      raise errors.UserError(
          f"--data_dir={data_dir} does not apply to {name}, which "
          f"tensorflow-datasets reads: drop --data_dir (its data folder is "
          f"--tfds_data_dir)")
    return _load_tfds(name[len(TFDS_PREFIX):], split, tfds_data_dir or None,
                      image_size, memory_budget)
  spec = get(name, image_size=image_size)
  count = spec.train_size if split == "train" else spec.test_size
  decoded = count * int(np.prod(spec.image_shape))
  if decoded > memory_budget:
    raise _over_budget(name, split, decoded, memory_budget,
                       "pass a smaller --image_size or raise the memory "
                       "budget")
  images, labels = _load_registered(spec, split, data_dir, tfds_data_dir)
  if image_size is not None and images.shape[1:3] != (image_size,
                                                      image_size):
    images = np.concatenate([
        streamed.resize(images[i:i + _RESIZE_BATCH], image_size).numpy()
        for i in range(0, len(images), _RESIZE_BATCH)])
  return images, labels


def _load_tfds(tfds_name: str, split: str, tfds_data_dir: str | None,
               image_size: int | None, memory_budget: int
               ) -> tuple[np.ndarray | StreamedImages, np.ndarray]:
  """Loads a split of a ``tfds:`` dataset, streamed if over the budget."""
  facts = tfds_source.describe(tfds_name, tfds_data_dir, image_size)
  decoded = facts.split_sizes[split] * int(np.prod(facts.image_shape))
  if decoded <= memory_budget:
    return tfds_source.load(tfds_name, split, tfds_data_dir, image_size,
                            "connect to the network and retry")
  if facts.random_access:
    return tfds_source.streamed_split(tfds_name, split, tfds_data_dir,
                                      facts.image_shape, image_size)
  raise _over_budget(
      TFDS_PREFIX + tfds_name, split, decoded, memory_budget,
      f"prepare it as array_record to stream it (tfds build {tfds_name} "
      f"--file_format=array_record), pass a smaller --image_size, or raise "
      f"the memory budget")


def _load_registered(spec: DatasetSpec, split: str, data_dir: str | None,
                     tfds_data_dir: str | None) -> binary.Arrays:
  """Loads a split of a registered dataset at its own size."""
  name = spec.name
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
  release = spec.release
  # Every dataset that is not embedded has a release, a tfds name or both.
  offline_fix = (f"pass --data_dir=PATH holding {release.folder}/ (the "
                 f"official {release.title})" if release else
                 "connect to the network and retry")
  if spec.tfds_name is None:
    raise errors.UserError(
        f"{spec.name} is not in tensorflow-datasets: {offline_fix}")
  return tfds_source.load(spec.tfds_name, split, tfds_data_dir or None, None,
                          offline_fix)


def _check_image_size(image_size: int | None) -> None:
  if image_size is not None and image_size < 1:
    raise errors.UserError(
        f"--image_size={image_size} is not a side length: pass a positive "
        f"number of pixels, or none to keep the images' size")


def _over_budget(name: str, split: str, decoded: int, budget: int,
                 fix: str) -> errors.UserError:
  return errors.UserError(
      f"the {split} split of {name} decodes to {decoded / 2**30:.2f} GiB, "
      f"over the memory budget of {budget / 2**30:.2f} GiB: {fix}")
