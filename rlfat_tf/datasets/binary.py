"""Official binary releases on disk: finding them and reading their records.

A `Release` describes one release as its authors distribute it: the folder it
unpacks to, the files of each split and the exact number of fixed-size records
in each file. Its family module (``cifar``, ``stl10``) decodes the records.
Every bad input raises `errors.UserError` with a one-line message that names
the problem and the fix.
"""

import dataclasses
import os
from typing import Callable, Mapping

import numpy as np

from rlfat_tf import errors

Arrays = tuple[np.ndarray, np.ndarray]


@dataclasses.dataclass(frozen=True)
class Release:
  """An official binary release of a dataset.

  Attributes:
    folder: the folder the release unpacks to, e.g. "cifar-10-batches-bin".
    title: how messages name it, e.g. "CIFAR-10 binary release".
    split_files: the files of each split ("train", "test"), in reading order.
    records: the exact number of records in each file; a file of any other
      size is truncated or malformed.
    read: reads a split from its files' paths, in ``split_files`` order, into
      (images uint8 [N, H, W, 3], labels int32 [N]).
  """
  folder: str
  title: str
  split_files: Mapping[str, tuple[str, ...]]
  records: Mapping[str, int]
  read: Callable[["Release", list[str]], Arrays]

  def load(self, split: str, data_dir: str) -> Arrays:
    """Reads a split from the release under ``data_dir``.

    Args:
      split: "train" or "test".
      data_dir: the folder that holds ``folder``, or ``folder`` itself.

    Returns:
      (images, labels) as ``read`` returns them.

    Raises:
      errors.UserError: the folder or a file is missing, or a file is
        unreadable, malformed or truncated.
    """
    root = self._root(data_dir)
    paths = [os.path.join(root, f) for f in self.split_files[split]]
    # All files are checked before any is read, so a missing one fails fast.
    self.require_files(paths)
    return self.read(self, paths)

  def require_files(self, paths: list[str]) -> None:
    """Raises a UserError naming the first path that is not a file."""
    for path in paths:
      if not os.path.isfile(path):
        raise errors.UserError(
            f"{path} is missing; point --data_dir at the folder that holds "
            f"{self.folder}/ from the official {self.title}")

  def read_records(self, path: str, record_size: int) -> np.ndarray:
    """Reads a file of the release as a uint8 [records, record_size] array.

    Args:
      path: one of the release's files (its name is looked up in
        ``records``).
      record_size: bytes per record.

    Returns:
      The file's records.

    Raises:
      errors.UserError: the file is not one of the release's, cannot be read,
        or does not hold exactly its number of records.
    """
    file_name = os.path.basename(path)
    if file_name not in self.records:
      raise errors.UserError(
          f"{path} is not a file of the official {self.title} (its files: "
          f"{', '.join(self.records)}); pass one of them")
    expected = self.records[file_name] * record_size
    try:
      size = os.path.getsize(path)
    except OSError as e:
      raise _unreadable(path, e) from e
    # A release cut short at a record boundary would otherwise train silently
    # on fewer images.
    if size != expected:
      raise errors.UserError(
          f"{path} is malformed or truncated ({size} bytes; the official file "
          f"has {expected} bytes, {self.records[file_name]} {record_size}-byte "
          f"records); {self.reextract()}")
    try:
      return np.fromfile(path, dtype=np.uint8).reshape(-1, record_size)
    except OSError as e:
      raise _unreadable(path, e) from e

  def check_labels(self, path: str, labels: np.ndarray, low: int,
                   high: int) -> None:
    """Raises a UserError if a label of ``path`` is outside low..high."""
    bad = labels[(labels < low) | (labels > high)]
    if bad.size:
      raise errors.UserError(
          f"{path} is malformed: {bad.size} label(s) outside {low}-{high} "
          f"(first {int(bad[0])}); {self.reextract()}")

  def reextract(self) -> str:
    return (f"re-extract the official {self.title} into the folder that "
            f"--data_dir points at")

  def _root(self, data_dir: str) -> str:
    """Returns the release folder: data_dir/<folder>, or data_dir itself."""
    data_dir = os.path.expanduser(data_dir)
    fix = (f"point --data_dir at the folder that holds {self.folder}/ from "
           f"the official {self.title}, or at {self.folder}/ itself")
    if not os.path.isdir(data_dir):
      raise errors.UserError(
          f"--data_dir={data_dir} does not exist or is not a folder; {fix}")
    nested = os.path.join(data_dir, self.folder)
    if os.path.isdir(nested):
      return nested
    if (os.path.basename(os.path.normpath(data_dir)) == self.folder or
        any(os.path.exists(os.path.join(data_dir, f)) for f in self.records)):
      return data_dir
    raise errors.UserError(
        f"--data_dir={data_dir} holds no {self.folder}/ folder; {fix}")


def _unreadable(path: str, e: OSError) -> errors.UserError:
  return errors.UserError(
      f"could not read {path} ({e.strerror or type(e).__name__}); check its "
      f"permissions or point --data_dir elsewhere")
