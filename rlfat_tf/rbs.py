"""Random Block Shuffle (RBS), the transformation at the heart of RLFAT.

RBS cuts an image into ``k`` horizontal strips at random cut points and
shuffles them, then does the same with vertical strips. It breaks the global
structure of an image while keeping its local features.

A transform is represented by two index vectors, ``rows`` (length H) and
``cols`` (length W): the output is ``x[rows][:, cols]``. The tf.data pipeline
samples these vectors per batch (or per example) and carries them with the
batch, so the transform can be applied on device to the adversarial example
made inside the train step.

The official code (``utils.rbs_transformation``) draws ``k - 1`` cut points
per axis with ``randint(0, size)``, so duplicate cut points and empty blocks are
possible, and shuffles the block order with an independent permutation per
axis. The same transform is used for the whole batch there; ``granularity``
"example" draws one per image, as the paper's text describes it.

``RandomBlockShuffle`` is RBS as a keras-cv augmentation layer. Called on
images it draws from its own generator, as keras-cv layers do; the trainer
instead draws transforms statelessly in tf.data (keyed by the run's seed and
the stream position, see ``data``) and passes them to ``augment_images``,
which is two gathers and so runs inside the compiled train step, under XLA
too.
"""

import keras_cv
import tensorflow as tf

GRANULARITIES = ("batch", "example")

# keras-cv layers take TensorFlow's global generator unless their seed is
# truthy, and op determinism forbids creating that generator. A layer that
# only applies transforms drawn elsewhere never reads its own generator, so
# any nonzero seed serves.
APPLY_ONLY_SEED = 1


def sample_blocks(seed, size, blocks):
  """Samples the cut points and block order of one axis.

  Args:
    seed: int32/int64 tensor of shape [2], a stateless RNG seed.
    size: length of the axis (H or W).
    blocks: number of blocks k >= 1.

  Returns:
    ``(cuts, order)``: ``cuts`` int32 [k - 1], sorted, each in [0, size);
    ``order`` int32 [k], a permutation of ``range(k)``: output block ``i`` is
    input block ``order[i]``.
  """
  cut_seed, order_seed = tf.unstack(
      tf.random.experimental.stateless_split(seed, num=2))
  cuts = tf.sort(
      tf.random.stateless_uniform([blocks - 1], cut_seed, minval=0,
                                  maxval=size, dtype=tf.int32))
  order = tf.argsort(tf.random.stateless_uniform([blocks], order_seed))
  return cuts, tf.cast(order, tf.int32)


def block_permutation(cuts, order, size):
  """Index vector that moves the blocks given by ``cuts`` into ``order``.

  Args:
    cuts: int32 [k - 1] sorted cut points.
    order: int32 [k] permutation of the blocks.
    size: length of the axis.

  Returns:
    int32 [size]: position ``p`` of the output reads position ``index[p]`` of
    the input.
  """
  bounds = tf.concat([[0], cuts, [size]], axis=0)
  starts = tf.gather(bounds[:-1], order)
  limits = tf.gather(bounds[1:], order)
  return tf.ragged.range(starts, limits).flat_values


def sample_params(seed, height, width, blocks):
  """Samples one RBS transform as row and column index vectors.

  Args:
    seed: stateless RNG seed, shape [2].
    height: image height H.
    width: image width W.
    blocks: blocks per axis k.

  Returns:
    Dict with ``rows`` int32 [H] and ``cols`` int32 [W].
  """
  row_seed, col_seed = tf.unstack(
      tf.random.experimental.stateless_split(seed, num=2))
  # The reshape gives the vectors a static length when H and W are known,
  # which XLA and Keras shape checks need.
  rows = block_permutation(*sample_blocks(row_seed, height, blocks), height)
  cols = block_permutation(*sample_blocks(col_seed, width, blocks), width)
  return {"rows": tf.reshape(rows, [height]), "cols": tf.reshape(cols, [width])}


def apply(images, rows, cols):
  """Applies RBS transforms to a batch of images.

  Args:
    images: [B, H, W, C].
    rows: int32 [H] (one transform for the batch) or [B, H] (one per image).
    cols: int32 [W] or [B, W], with the same leading shape as ``rows``.

  Returns:
    The shuffled images, [B, H, W, C]. The op is a gather, so gradients flow
    to ``images``.
  """
  batch_dims = rows.shape.rank - 1
  images = tf.gather(images, rows, axis=1, batch_dims=batch_dims)
  return tf.gather(images, cols, axis=2, batch_dims=batch_dims)


def random_block_shuffle(images, blocks, seed):
  """RBS as a plain image-to-image map (for tf.data maps and figures).

  Args:
    images: one image [H, W, C] or a batch [B, H, W, C]; a batch receives one
      shared transform, as in the official code.
    blocks: blocks per axis k.
    seed: stateless RNG seed, shape [2].

  Returns:
    The shuffled image(s), same shape as ``images``.
  """
  images = tf.convert_to_tensor(images)
  single = images.shape.rank == 3
  batch = images[tf.newaxis] if single else images
  params = sample_params(seed, tf.shape(batch)[1], tf.shape(batch)[2], blocks)
  out = apply(batch, params["rows"], params["cols"])
  return out[0] if single else out


def _spatial_size(images):
  """(H, W) of a batch: Python ints when static, else scalar tensors."""
  dynamic = tf.shape(images)
  return tuple(images.shape[axis] if images.shape[axis] is not None
               else dynamic[axis] for axis in (1, 2))


class RandomBlockShuffle(keras_cv.layers.VectorizedBaseImageAugmentationLayer):
  """Random Block Shuffle as a keras-cv augmentation layer.

  A transformation is a dict of index vectors (see ``sample_params``):
  ``rows`` int32 [H] and ``cols`` int32 [W] for granularity "batch" (one
  transform shared by the whole batch, the official code's default), or
  [B, H] and [B, W] for "example" (one per image). Labels pass through
  unchanged; segmentation masks are shuffled with their images.

  Args:
    blocks: blocks per axis k >= 1.
    granularity: "batch" or "example", for the layer's own draws.
    seed: seed of the layer's own generator, as for every keras-cv layer:
      None or 0 take TensorFlow's global generator, which cannot be created
      under op determinism (``tf.config.experimental.enable_op_determinism``);
      pass a nonzero seed there.
    **kwargs: keras layer arguments (``name``, ``dtype``).

  Raises:
    ValueError: ``blocks`` below 1 or an unknown ``granularity``.
  """

  def __init__(self, blocks=2, granularity="batch", seed=None, **kwargs):
    if blocks < 1:
      raise ValueError(f"RBS needs at least one block per axis, got {blocks}")
    if granularity not in GRANULARITIES:
      raise ValueError(f"unknown RBS granularity {granularity!r}: use one of "
                       f"{GRANULARITIES}")
    super().__init__(seed=seed, **kwargs)
    self.blocks = blocks
    self.granularity = granularity
    self.seed = seed

  def get_random_transformation_batch(self, batch_size, images=None,
                                      **kwargs):
    """Draws transforms for a batch from the layer's own generator.

    Args:
      batch_size: number of images B.
      images: the [B, H, W, C] batch, which gives H and W.
      **kwargs: the other inputs keras-cv passes (unused).

    Returns:
      A transformation dict (see the class docstring).
    """
    height, width = _spatial_size(images)
    seed = self._random_generator.make_seeds(1)[:, 0]
    if self.granularity == "batch":
      return sample_params(seed, height, width, self.blocks)
    return tf.map_fn(
        lambda s: sample_params(s, height, width, self.blocks),
        tf.random.experimental.stateless_split(seed, num=batch_size),
        fn_output_signature={
            "rows": tf.TensorSpec([images.shape[1]], tf.int32),
            "cols": tf.TensorSpec([images.shape[2]], tf.int32)})

  def augment_images(self, images, transformations, **kwargs):
    """Applies given transforms to [B, H, W, C] images (see ``apply``)."""
    return apply(images, transformations["rows"], transformations["cols"])

  def augment_labels(self, labels, transformations, **kwargs):
    """Labels pass through unchanged: a shuffle keeps the class."""
    return labels

  def augment_segmentation_masks(self, segmentation_masks, transformations,
                                 **kwargs):
    """Masks are shuffled with the images' own blocks, pixel for pixel."""
    return self.augment_images(segmentation_masks, transformations)

  def get_config(self):
    """The layer's settings (blocks, granularity, seed), for saving."""
    return {**super().get_config(), "blocks": self.blocks,
            "granularity": self.granularity, "seed": self.seed}
