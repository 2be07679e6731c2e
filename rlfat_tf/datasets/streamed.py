"""Splits too large for memory: images read and decoded one by one in tf.data.

`StreamedImages` stands where a uint8 [N, H, W, C] array would: it has a
length, a shape and a dtype, and indexing it with a slice or an array of
indices selects examples (``images[:n]``, ``data.validation_split``) without
reading any. ``data.train_dataset`` and ``data.eval_dataset`` read each
example inside their tf.data map from its key, so the stream stays a pure
function of the seed and the example's position.

`resize` is the one resizing rule of every source (``image_size``).
"""

import dataclasses
from typing import Callable

import numpy as np
import tensorflow as tf

# Examples decoded per tf.data batch when a streamed split is decoded whole.
_LOAD_BATCH = 256


def resize(images: tf.Tensor, size: int) -> tf.Tensor:
  """Resizes uint8 [..., H, W, C] images to size x size, as uint8.

  Bilinear with antialiasing, so that shrinking averages the pixels it drops
  instead of aliasing; the result is rounded to the nearest uint8.

  Args:
    images: a [H, W, C] image or a [B, H, W, C] batch, uint8.
    size: the side length of the result.

  Returns:
    The resized image(s), uint8.
  """
  resized = tf.image.resize(images, [size, size], method="bilinear",
                            antialias=True)
  return tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8)


@dataclasses.dataclass(frozen=True)
class StreamedImages:
  """A split's images, left where they are stored and decoded on demand.

  Attributes:
    keys: [N] what ``decode`` reads each example from: its file path (folder
      source) or its record index (tensorflow-datasets).
    image_shape: (H, W, C) of every decoded image.
    decode: a TensorFlow function from one key to its uint8 [H, W, C] image,
      traceable inside a tf.data map.
  """
  keys: np.ndarray
  image_shape: tuple[int, int, int]
  decode: Callable[[tf.Tensor], tf.Tensor]

  def __len__(self) -> int:
    return len(self.keys)

  @property
  def shape(self) -> tuple[int, int, int, int]:
    """(N, H, W, C), as the decoded array would have."""
    return (len(self.keys),) + tuple(self.image_shape)

  @property
  def dtype(self):
    return np.dtype(np.uint8)

  @property
  def nbytes(self) -> int:
    """Bytes of the decoded array."""
    return int(np.prod(self.shape, dtype=np.int64))

  def __getitem__(self, index):
    """One decoded image for an integer, else the selected examples, unread.

    Args:
      index: an int, a slice, or an int or bool array, as for numpy.

    Returns:
      uint8 [H, W, C] for an int; otherwise a `StreamedImages` of the
      selected examples in the selected order.
    """
    if isinstance(index, (int, np.integer)):
      return self.decode(tf.constant(self.keys[index])).numpy()
    return dataclasses.replace(self, keys=self.keys[index])

  def reader(self) -> Callable[[tf.Tensor], tf.Tensor]:
    """A function from an example index (int64 tensor) to its uint8 image."""
    keys = tf.constant(self.keys)
    return lambda index: self.decode(tf.gather(keys, index))

  def load(self) -> np.ndarray:
    """Decodes every example into one uint8 [N, H, W, C] array.

    For a subset small enough for memory (e.g. ``images[:1000]``); the whole
    split is streamed because it is not.

    Raises:
      tf.errors.OpError: an example cannot be read or decoded.
    """
    ds = tf.data.Dataset.from_tensor_slices(self.keys).map(
        self.decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    out = np.empty(self.shape, np.uint8)
    start = 0
    for batch in ds.batch(_LOAD_BATCH).as_numpy_iterator():
      out[start:start + len(batch)] = batch
      start += len(batch)
    return out
