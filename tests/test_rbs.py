"""Tests of the Random Block Shuffle."""

import numpy as np
import pytest
import tensorflow as tf

from rlfat_tf import rbs

pytestmark = pytest.mark.bazel_ci


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


@pytest.mark.parametrize("granularity", ["batch", "example"])
def test_layer_own_draw_and_given_draw_agree(granularity):
  x = tf.constant(_images(batch=4, height=9, width=7))
  drawer = rbs.RandomBlockShuffle(3, granularity, seed=21)
  caller = rbs.RandomBlockShuffle(3, granularity, seed=21)
  drawn = drawer.get_random_transformation_batch(4, images=x)
  np.testing.assert_array_equal(
      caller(x).numpy(), drawer.augment_images(x, drawn).numpy())
  # The layer's draws are sample_params keyed by its generator's seeds.
  seed = tf.random.Generator.from_seed(21).make_seeds(1)[:, 0]
  if granularity == "batch":
    keys, lead = [seed], (9,)
  else:
    keys, lead = tf.unstack(
        tf.random.experimental.stateless_split(seed, num=4)), (4, 9)
  assert drawn["rows"].shape == lead
  expected = [rbs.sample_params(k, 9, 7, 3) for k in keys]
  for name in ("rows", "cols"):
    np.testing.assert_array_equal(
        np.reshape(drawn[name], (len(keys), -1)),
        np.stack([e[name].numpy() for e in expected]))


def test_layer_applies_a_given_draw_under_xla_and_in_tf_data():
  x = tf.constant(_images(batch=3, height=8, width=6))
  layer = rbs.RandomBlockShuffle(seed=rbs.APPLY_ONLY_SEED)
  per_batch = rbs.sample_params(tf.constant([1, 2]), 8, 6, 4)
  per_example = rbs.sample_params(tf.constant([3, 4]), 8, 6, 4)
  stacked = {k: tf.stack([per_batch[k], per_example[k], per_batch[k]])
             for k in per_batch}
  compiled = tf.function(layer.augment_images, jit_compile=True)
  for drawn in (per_batch, stacked):
    expected = rbs.apply(x, drawn["rows"], drawn["cols"]).numpy()
    np.testing.assert_array_equal(compiled(x, drawn).numpy(), expected)
    ds = tf.data.Dataset.from_tensors((x, drawn)).map(layer.augment_images)
    np.testing.assert_array_equal(next(iter(ds)).numpy(), expected)


def test_layer_with_two_blocks_per_batch_is_a_roll_with_official_odds():
  # Official k = 2 RBS rolls each axis by -c, c ~ U{0..size-1}, with
  # probability 1/2 and keeps it otherwise: shift 0 has probability
  # 1/2 + 1/(2 size), every other shift 1/(2 size).
  height, width, trials = 8, 4, 4000
  layer = rbs.RandomBlockShuffle(2, seed=33)
  x = tf.zeros([1, height, width, 1])

  @tf.function
  def draw():
    drawn = tf.TensorArray(tf.int32, trials)
    for i in tf.range(trials):
      t = layer.get_random_transformation_batch(1, images=x)
      drawn = drawn.write(i, tf.concat([t["rows"], t["cols"]], 0))
    return drawn.stack()

  drawn = draw().numpy()
  rows, cols = drawn[:, :height], drawn[:, height:]
  for index, size in ((rows, height), (cols, width)):
    shifts = index[:, 0]
    np.testing.assert_array_equal(
        index, (np.arange(size) + shifts[:, None]) % size)
    counts = np.bincount(shifts, minlength=size)
    odds = np.full(size, 0.5 / size)
    odds[0] += 0.5
    sd = np.sqrt(trials * odds * (1 - odds))
    assert np.all(np.abs(counts - trials * odds) < 4 * sd), counts
  # An image is left unchanged when both axes are: (1/2 + 1/(2H))(...).
  kept = np.mean((rows[:, 0] == 0) & (cols[:, 0] == 0))
  expected = (0.5 + 0.5 / height) * (0.5 + 0.5 / width)
  assert abs(kept - expected) < 4 * np.sqrt(expected * (1 - expected) / trials)


def test_layer_shuffles_masks_with_images_and_keeps_labels():
  x = _images(batch=2, height=6, width=6, channels=1)
  out = rbs.RandomBlockShuffle(3, "example", seed=5)(
      {"images": x, "segmentation_masks": x + 1.0,
       "labels": np.array([[1.0], [2.0]], np.float32)})
  np.testing.assert_array_equal(out["segmentation_masks"].numpy(),
                                out["images"].numpy() + 1.0)
  np.testing.assert_array_equal(out["labels"].numpy(), [[1.0], [2.0]])
  assert not np.array_equal(out["images"].numpy(), x)


def test_layer_config_round_trips():
  layer = rbs.RandomBlockShuffle(4, "example", seed=8, name="rbs")
  clone = rbs.RandomBlockShuffle.from_config(layer.get_config())
  assert (clone.blocks, clone.granularity, clone.seed, clone.name) == (
      4, "example", 8, "rbs")


@pytest.mark.parametrize("kwargs, needle", [
    ({"blocks": 0}, "at least one block per axis, got 0"),
    ({"granularity": "pixel"}, "unknown RBS granularity 'pixel'"),
])
def test_layer_refuses_bad_arguments(kwargs, needle):
  with pytest.raises(ValueError, match=needle):
    rbs.RandomBlockShuffle(seed=1, **kwargs)
