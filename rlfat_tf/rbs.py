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
"""

import tensorflow as tf

GRANULARITIES = ("batch", "example")


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
