"""tf.data input pipelines for training and evaluation.

Images enter as uint8 [N, H, W, C] arrays, or as a
``datasets.StreamedImages`` for a split too large for memory (both as
``datasets.load_split`` returns them), and leave as float32 in [0, 1]; nothing
normalises them outside the model.

Training batches are dicts:
- ``image`` [B, H, W, C] float32 and ``label`` [B] int32;
- ``seed`` [B, 2] int64: a per-example stateless seed for the attack's random
  start;
- ``rbs_rows`` / ``rbs_cols``: the Random Block Shuffle drawn for this batch,
  [H] / [W] index vectors (granularity "batch") or [B, H] / [B, W] (granularity
  "example"). The train step applies them to the adversarial example.

All randomness (shuffle order, flips, crops, attack starts, RBS) comes from
stateless ops keyed by the run's seed and the example's position in the
stream: each epoch's order is a permutation drawn from (seed, epoch), and each
example's choices from (seed, position). The stream is therefore a pure
function of its start, so a resumed run (``start``) sees exactly the batches
an uninterrupted run would see, whatever the number of replicas or workers,
and no iterator state needs to be checkpointed. Flips and crops are drawn as
tf.image's stateless ops draw them and applied by keras-cv's ``RandomFlip``
and ``RandomTranslation``, which take the draws as given transformations.

Speed: the decoded uint8 images live in memory as one constant (the cache),
or, streamed, each example's file is read and decoded by its index in the
parallel map that draws the example's choices, so the stream stays a function
of position alone; a parallel map augments each batch (keras-cv's vectorized
layers) and batches are prefetched; under
a ``tf.distribute`` strategy the distributed dataset also prefetches them to
the replicas' devices.
"""

import dataclasses

import keras_cv
import numpy as np
import tensorflow as tf

from rlfat_tf import rbs
from rlfat_tf.datasets import streamed

AUTOTUNE = tf.data.AUTOTUNE


@dataclasses.dataclass(frozen=True)
class Augmentation:
  """Training augmentation.

  Attributes:
    flip: random horizontal flip (the official code's only augmentation).
    pad_crop: zero-pad by this many pixels and crop back at random (0: off).
  """
  flip: bool = True
  pad_crop: int = 0


def validation_split(images, labels, size, seed=0):
  """Carves a held-out validation set from a training split.

  The split depends only on ``seed`` (not the training seed), so every run on
  the same data validates on the same images.

  Args:
    images: [N, H, W, C] training images, an array or a
      ``streamed.StreamedImages`` (which selects without reading).
    labels: [N] training labels.
    size: number of validation examples, 0 <= size < N.
    seed: seed of the permutation that picks them.

  Returns:
    ``((train_images, train_labels), (val_images, val_labels))``, images of
    the type given.
  """
  if not 0 <= size < len(images):
    raise ValueError(f"validation size {size} must be in [0, {len(images)})")
  order = np.random.default_rng(seed).permutation(len(images))
  train, val = np.sort(order[size:]), np.sort(order[:size])
  return (images[train], labels[train]), (images[val], labels[val])


def _reader(images):
  """The example index -> uint8 [H, W, C] image function of a split.

  Args:
    images: uint8 [N, H, W, C] in memory, or a ``streamed.StreamedImages``,
      whose example is read and decoded from its file when asked for.
  """
  if isinstance(images, streamed.StreamedImages):
    return images.reader()
  images = tf.constant(images)
  return lambda index: tf.gather(images, index)


def _example_keys(seed, position):
  """Independent stateless seeds for augmentation, attack start and RBS."""
  key = tf.stack([tf.constant(seed, tf.int64), position])
  return tf.unstack(tf.random.experimental.stateless_split(key, num=3))


def _epoch_order(seed, epoch, num):
  """The example order of one epoch: a permutation drawn from (seed, epoch).

  Negative second seed words never occur as example positions, so the
  shuffle draws from streams that no example's choices use.
  """
  key = tf.stack([tf.constant(seed, tf.int64), -1 - epoch])
  return tf.argsort(tf.random.stateless_uniform([num], key))


def _positions_and_indices(seed, num, start):
  """(position, example index) pairs of the endless stream, from ``start``."""
  first_epoch = start // num
  ds = tf.data.Dataset.counter(first_epoch).flat_map(
      lambda epoch: tf.data.Dataset.from_tensor_slices(
          tf.cast(_epoch_order(seed, epoch, num), tf.int64)))
  return ds.enumerate(first_epoch * num).skip(start - first_epoch * num)


def _draw_augmentation(augmentation, seed, height, width):
  """One example's flip and crop, drawn as tf.image's stateless ops draw them.

  The draws are those of ``tf.image.stateless_random_flip_left_right`` and
  ``tf.image.stateless_random_crop`` (on the zero-padded image) for the same
  seeds, written as keras-cv transformation entries, so keras-cv's
  ``RandomFlip`` and ``RandomTranslation`` reproduce those ops exactly.

  Args:
    augmentation: an ``Augmentation``.
    seed: the example's stateless seed, shape [2].
    height: image height H.
    width: image width W.

  Returns:
    A dict of [1]-shaped float32 entries: ``flip_horizontals`` (1: flip,
    0: keep) with ``flip``, ``height_translations`` and
    ``width_translations`` (the shift as a fraction of H and W) with
    ``pad_crop``.
  """
  flip_seed, crop_seed = tf.unstack(
      tf.random.experimental.stateless_split(seed, num=2))
  out = {}
  if augmentation.flip:
    # tf.image flips when this draw is below 1/2; RandomFlip flips when its
    # entry exceeds 1 - rate = 1/2.
    draw = tf.random.stateless_uniform([], flip_seed, minval=0, maxval=1.0)
    out["flip_horizontals"] = tf.cast(draw < 0.5, tf.float32)[tf.newaxis]
  if augmentation.pad_crop:
    pad = augmentation.pad_crop
    # tf.image.stateless_random_crop's draw of a [H, W, C] window's offset in
    # the [H + 2 pad, W + 2 pad, C] padded image. The window at offset o
    # equals the image shifted by pad - o with zeros shifted in.
    offset = tf.random.stateless_uniform(
        [3], crop_seed, maxval=tf.int32.max, dtype=tf.int32) % [
            2 * pad + 1, 2 * pad + 1, 1]
    shift = tf.cast(pad - offset[:2], tf.float32) / [height, width]
    out["height_translations"] = shift[:1]
    out["width_translations"] = shift[1:]
  return out


class _Augmenter:
  """Applies batches of drawn flips and crops through keras-cv layers."""

  def __init__(self, augmentation, height, width):
    pad = augmentation.pad_crop
    if pad > min(height, width):
      raise ValueError(f"pad_crop={pad} exceeds the {height}x{width} images: "
                       f"pad by at most {min(height, width)}")
    self.flip = self.shift = None
    if augmentation.flip:
      self.flip = keras_cv.layers.RandomFlip(
          "horizontal", seed=rbs.APPLY_ONLY_SEED)
    if pad:
      # Nearest interpolation of whole-pixel shifts copies pixels exactly; the
      # constant fill is the zero padding.
      self.shift = keras_cv.layers.RandomTranslation(
          pad / height, pad / width, fill_mode="constant", fill_value=0.0,
          interpolation="nearest", seed=rbs.APPLY_ONLY_SEED)

  def __call__(self, images, drawn):
    """Flips, then crops, [B, H, W, C] images as ``drawn`` says.

    Args:
      images: the batch.
      drawn: the batch's stacked ``_draw_augmentation`` dicts.

    Returns:
      The augmented batch.
    """
    if self.flip is not None:
      flips = drawn["flip_horizontals"]
      images = self.flip.augment_images(images, {
          "flip_horizontals": flips, "flip_verticals": tf.zeros_like(flips)})
    if self.shift is not None:
      images = self.shift.augment_images(images, {
          "height_translations": drawn["height_translations"],
          "width_translations": drawn["width_translations"]})
    return images


def train_dataset(images, labels, *, batch_size, seed, augmentation,
                  rbs_blocks=None, rbs_granularity="batch",
                  input_context=None, start=0):
  """An endless, shuffled, augmented stream of training batches.

  Args:
    images: uint8 [N, H, W, C], or a ``streamed.StreamedImages``.
    labels: int [N].
    batch_size: global batch size; each input pipeline yields its per-replica
      share when ``input_context`` is given.
    seed: integer seed of every random choice in the stream.
    augmentation: an ``Augmentation``.
    rbs_blocks: blocks per axis of the RBS carried with each batch, or None to
      carry none (methods that do not use RBS).
    rbs_granularity: "batch" (one transform per batch) or "example".
    input_context: a ``tf.distribute.InputContext`` to shard by, or None.
    start: position of the first example, counted over the whole (unsharded)
      stream; a multiple of ``batch_size`` resumes the stream after
      ``start // batch_size`` global batches.

  Returns:
    A ``tf.data.Dataset`` of batch dicts (see the module docstring).

  Raises:
    ValueError: an unknown ``rbs_granularity``, or a ``pad_crop`` larger than
      the images.
  """
  if rbs_granularity not in rbs.GRANULARITIES:
    raise ValueError(f"unknown RBS granularity {rbs_granularity!r}")
  num = len(images)
  height, width = images.shape[1:3]
  read = _reader(images)
  labels = tf.constant(labels, tf.int32)
  per_example_rbs = rbs_blocks and rbs_granularity == "example"
  augment = _Augmenter(augmentation, height, width)

  def example(position, index):
    aug_seed, attack_seed, rbs_seed = _example_keys(seed, position)
    out = {"image": tf.image.convert_image_dtype(read(index), tf.float32),
           "label": tf.gather(labels, index), "seed": attack_seed,
           "augmentation": _draw_augmentation(augmentation, aug_seed, height,
                                              width)}
    if per_example_rbs:
      params = rbs.sample_params(rbs_seed, height, width, rbs_blocks)
      out["rbs_rows"], out["rbs_cols"] = params["rows"], params["cols"]
    elif rbs_blocks:
      out["position"] = position
    return out

  def finish(batch):
    batch["image"] = augment(batch["image"], batch.pop("augmentation"))
    if "position" in batch:
      # The transform is keyed by the first example of the *global* batch,
      # so every replica's share of a batch gets the same one and the stream
      # of transforms does not depend on how the batch is split.
      first = batch.pop("position")[0] // batch_size * batch_size
      params = rbs.sample_params(_example_keys(seed, first)[2], height, width,
                                 rbs_blocks)
      batch["rbs_rows"], batch["rbs_cols"] = params["rows"], params["cols"]
    return batch

  # Positions count examples across epochs, before sharding, so every example
  # drawn has its own seeds whatever the number of input pipelines.
  ds = _positions_and_indices(seed, num, start)
  per_replica = batch_size
  if input_context is not None:
    ds = ds.shard(input_context.num_input_pipelines,
                  input_context.input_pipeline_id)
    per_replica = input_context.get_per_replica_batch_size(batch_size)
  ds = ds.map(example, num_parallel_calls=AUTOTUNE, deterministic=True)
  ds = ds.batch(per_replica, drop_remainder=True)
  ds = ds.map(finish, num_parallel_calls=AUTOTUNE, deterministic=True)
  return ds.prefetch(AUTOTUNE)


def train_input_fn(images, labels, *, batch_size, seed, augmentation,
                   rbs_blocks=None, rbs_granularity="batch"):
  """The ``(input_context, step) -> dataset`` that ``trainer.Trainer`` takes.

  The stream it returns for ``step`` is ``train_dataset`` resumed after
  ``step`` global batches, so a resumed run sees the batches an uninterrupted
  one would. Arguments as for ``train_dataset``.
  """

  def input_fn(input_context, step):
    return train_dataset(
        images, labels, batch_size=batch_size, seed=seed,
        augmentation=augmentation, rbs_blocks=rbs_blocks,
        rbs_granularity=rbs_granularity, input_context=input_context,
        start=step * batch_size)

  return input_fn


def eval_dataset(images, labels, *, batch_size, seed=0, input_context=None,
                 positions=None):
  """One pass over a split in order, in batches (the last may be smaller).

  Args:
    images: uint8 [N, H, W, C], or a ``streamed.StreamedImages``.
    labels: int [N].
    batch_size: global batch size.
    seed: seed of the per-example attack seeds.
    input_context: a ``tf.distribute.InputContext`` to shard by, or None.
    positions: int [N], each example's position in its split, which keys its
      attack seed (default 0, ..., N - 1); a subset of a split passes its
      examples' positions to keep their seeds.

  Returns:
    A ``tf.data.Dataset`` of dicts with ``image``, ``label`` and ``seed``.
  """
  if positions is None:
    positions = np.arange(len(images))
  read = _reader(images)
  ds = tf.data.Dataset.from_tensor_slices(
      (np.asarray(positions, np.int64), np.arange(len(images)),
       np.asarray(labels, np.int32)))
  per_replica = batch_size
  if input_context is not None:
    ds = ds.shard(input_context.num_input_pipelines,
                  input_context.input_pipeline_id)
    per_replica = input_context.get_per_replica_batch_size(batch_size)

  def example(position, index, label):
    _, attack_seed, _ = _example_keys(seed, position)
    return {"image": tf.image.convert_image_dtype(read(index), tf.float32),
            "label": label, "seed": attack_seed}

  return ds.map(example, num_parallel_calls=AUTOTUNE).batch(
      per_replica).prefetch(AUTOTUNE)
