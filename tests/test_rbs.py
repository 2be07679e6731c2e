"""Tests of the Random Block Shuffle."""

import numpy as np
import pytest
import tensorflow as tf

from rlfat_tf import rbs


def _images(batch=3, height=12, width=10, channels=2):
  return np.arange(batch * height * width * channels, dtype=np.float32).reshape(
      batch, height, width, channels)


def _by_hand(x, row_cuts, row_order, col_cuts, col_order):
  """RBS done the slow way: split into strips, reorder, concatenate."""
  strips = np.split(x, row_cuts, axis=1)
  x = np.concatenate([strips[i] for i in row_order], axis=1)
  strips = np.split(x, col_cuts, axis=2)
  return np.concatenate([strips[i] for i in col_order], axis=2)


@pytest.mark.parametrize("blocks", [2, 3, 4])
def test_matches_hand_construction(blocks):
  x = _images()
  seed = tf.constant([7, 11], tf.int64)
  params = rbs.sample_params(seed, 12, 10, blocks)
  # sample_params splits its seed into one per axis; redraw the same blocks.
  row_seed, col_seed = tf.unstack(
      tf.random.experimental.stateless_split(seed, num=2))
  row_cuts, row_order = (t.numpy() for t in rbs.sample_blocks(row_seed, 12,
                                                              blocks))
  col_cuts, col_order = (t.numpy() for t in rbs.sample_blocks(col_seed, 10,
                                                              blocks))
  expected = _by_hand(x, row_cuts, row_order, col_cuts, col_order)
  got = rbs.apply(tf.constant(x), params["rows"], params["cols"]).numpy()
  np.testing.assert_array_equal(got, expected)


def test_two_blocks_is_a_roll_by_the_cut():
  # With k = 2 the shuffle either keeps the order or swaps the two strips,
  # which is a cyclic shift by the cut point.
  x = _images(batch=1, height=8, width=8, channels=1)
  cuts = tf.constant([3])
  index = rbs.block_permutation(cuts, tf.constant([1, 0]), 8).numpy()
  np.testing.assert_array_equal(index, [3, 4, 5, 6, 7, 0, 1, 2])
  rolled = rbs.apply(tf.constant(x), tf.constant(index),
                     tf.range(8)).numpy()
  np.testing.assert_array_equal(rolled, np.roll(x, -3, axis=1))
  keep = rbs.block_permutation(cuts, tf.constant([0, 1]), 8).numpy()
  np.testing.assert_array_equal(keep, np.arange(8))


def test_output_is_a_permutation_of_the_pixels():
  x = _images(batch=2, height=9, width=7, channels=3)
  for s in range(20):
    y = rbs.random_block_shuffle(x, 3, tf.constant([s, 1])).numpy()
    for b in range(2):
      np.testing.assert_array_equal(np.sort(y[b].ravel()),
                                    np.sort(x[b].ravel()))
      # Whole pixels move: every output pixel's channel vector is an input's.
      inputs = {tuple(p) for p in x[b].reshape(-1, 3)}
      assert all(tuple(p) in inputs for p in y[b].reshape(-1, 3))


def test_one_block_is_identity():
  x = _images()
  for s in range(5):
    y = rbs.random_block_shuffle(x, 1, tf.constant([s, 2])).numpy()
    np.testing.assert_array_equal(y, x)


def test_single_image_and_batch_share_one_transform():
  x = _images(batch=4)
  seed = tf.constant([3, 9])
  batch = rbs.random_block_shuffle(x, 2, seed).numpy()
  single = rbs.random_block_shuffle(x[2], 2, seed).numpy()
  np.testing.assert_array_equal(batch[2], single)


def test_per_example_params_shuffle_each_image_its_own_way():
  x = _images(batch=2, height=16, width=16, channels=1)
  one = rbs.sample_params(tf.constant([1, 1]), 16, 16, 4)
  two = rbs.sample_params(tf.constant([2, 2]), 16, 16, 4)
  rows = tf.stack([one["rows"], two["rows"]])
  cols = tf.stack([one["cols"], two["cols"]])
  y = rbs.apply(tf.constant(x), rows, cols).numpy()
  np.testing.assert_array_equal(
      y[0], rbs.apply(tf.constant(x[:1]), one["rows"], one["cols"])[0])
  np.testing.assert_array_equal(
      y[1], rbs.apply(tf.constant(x[1:]), two["rows"], two["cols"])[0])
  assert not np.array_equal(one["rows"].numpy(), two["rows"].numpy())


def test_identity_rate_matches_official_two_block_rbs():
  # Official k = 2 RBS leaves an axis unchanged when the order is kept
  # (probability 1/2) or the cut is 0 (1/W): (1/2 + 1/(2W))^2 per transform.
  width = 8
  trials = 4000

  def is_identity(s):
    p = rbs.sample_params(tf.stack([s, 5]), width, width, 2)
    return tf.reduce_all(p["rows"] == tf.range(width)) & tf.reduce_all(
        p["cols"] == tf.range(width))

  identity = tf.function(lambda: tf.map_fn(
      is_identity, tf.range(trials, dtype=tf.int64),
      fn_output_signature=tf.bool))().numpy().sum()
  expected = (0.5 + 0.5 / width) ** 2
  assert abs(identity / trials - expected) < 4 * np.sqrt(
      expected * (1 - expected) / trials)


def test_gradients_flow_through_the_shuffle():
  x = tf.constant(_images(batch=1, height=6, width=6, channels=1))
  weights = tf.constant(np.random.RandomState(0).rand(1, 6, 6, 1), tf.float32)
  params = rbs.sample_params(tf.constant([4, 4]), 6, 6, 3)
  with tf.GradientTape() as tape:
    tape.watch(x)
    loss = tf.reduce_sum(weights * rbs.apply(x, params["rows"],
                                             params["cols"]))
  grad = tape.gradient(loss, x).numpy()
  # The gradient is the weights moved back through the inverse shuffle.
  inverse_rows = np.argsort(params["rows"].numpy())
  inverse_cols = np.argsort(params["cols"].numpy())
  np.testing.assert_array_equal(
      grad, weights.numpy()[:, inverse_rows][:, :, inverse_cols])
