"""Tests of the tf.data pipelines."""

import numpy as np
from PIL import Image
import pytest
import tensorflow as tf

from rlfat_tf import data
from rlfat_tf import datasets

N, H, W = 20, 6, 5


@pytest.fixture(scope="module")
def arrays():
  rng = np.random.RandomState(0)
  images = rng.randint(0, 256, (N, H, W, 3)).astype(np.uint8)
  # Stamp each image with its index so a batch can be traced to its source.
  images[:, 0, 0, 0] = np.arange(N)
  labels = (np.arange(N) * 7 % 10).astype(np.int32)
  return images, labels


def _take(ds, n):
  it = iter(ds)
  return [{k: v.numpy() for k, v in next(it).items()} for _ in range(n)]


def _source_index(image):
  return int(round(image[0, 0, 0] * 255))


def test_batches_are_float_images_with_their_labels(arrays):
  images, labels = arrays
  ds = data.train_dataset(images, labels, batch_size=4, seed=1,
                          augmentation=data.Augmentation(flip=False))
  for batch in _take(ds, 10):
    assert batch["image"].dtype == np.float32
    assert batch["image"].shape == (4, H, W, 3)
    assert batch["seed"].shape == (4, 2)
    assert "rbs_rows" not in batch
    for image, label in zip(batch["image"], batch["label"]):
      index = _source_index(image)
      np.testing.assert_allclose(image, images[index] / 255.0, atol=1e-6)
      assert label == labels[index]


def test_each_epoch_visits_every_example_once_in_a_new_order(arrays):
  images, labels = arrays
  ds = data.train_dataset(images, labels, batch_size=5, seed=1,
                          augmentation=data.Augmentation(flip=False))
  batches = _take(ds, 8)
  order = [_source_index(x) for b in batches for x in b["image"]]
  assert sorted(order[:N]) == list(range(N))
  assert sorted(order[N:]) == list(range(N))
  assert order[:N] != order[N:]


def test_same_seed_same_stream_other_seed_other_stream(arrays):
  images, labels = arrays
  make = lambda s: data.train_dataset(  # pylint: disable=g-long-lambda
      images, labels, batch_size=4, seed=s, augmentation=data.Augmentation(),
      rbs_blocks=2)
  a, b, c = _take(make(3), 3), _take(make(3), 3), _take(make(4), 3)
  for x, y in zip(a, b):
    for key in x:
      np.testing.assert_array_equal(x[key], y[key])
  assert not np.array_equal(a[0]["image"], c[0]["image"])


def test_flip_mirrors_some_images_and_nothing_else(arrays):
  images, labels = arrays
  ds = data.train_dataset(images, labels, batch_size=N, seed=2,
                          augmentation=data.Augmentation(flip=True))
  flipped = 0
  for batch in _take(ds, 3):
    for image in batch["image"]:
      # The index stamp sits at column 0 unflipped and W - 1 flipped.
      as_is = [x for x in range(N)
               if np.allclose(image, images[x] / 255.0, atol=1e-6)]
      mirrored = [x for x in range(N)
                  if np.allclose(image[:, ::-1], images[x] / 255.0,
                                 atol=1e-6)]
      assert as_is or mirrored
      flipped += bool(mirrored) and not as_is
  assert 0.3 < flipped / (3 * N) < 0.7


def test_pad_crop_is_a_window_of_the_zero_padded_image(arrays):
  images, labels = arrays
  pad = 2
  ds = data.train_dataset(images, labels, batch_size=N, seed=3,
                          augmentation=data.Augmentation(flip=False,
                                                         pad_crop=pad))
  shifts = set()
  padded = np.pad(images / 255.0, [(0, 0), (pad, pad), (pad, pad), (0, 0)])
  for image in _take(ds, 1)[0]["image"]:
    found = [(i, dy, dx) for i in range(N) for dy in range(2 * pad + 1)
             for dx in range(2 * pad + 1)
             if np.allclose(image, padded[i, dy:dy + H, dx:dx + W], atol=1e-6)]
    assert found
    shifts.add(found[0][1:])
  assert len(shifts) > 3


def _tf_image_augment(image, augmentation, seed):
  """The flips and crops as tf.image's stateless ops make them."""
  flip_seed, crop_seed = tf.unstack(
      tf.random.experimental.stateless_split(seed, num=2))
  if augmentation.flip:
    image = tf.image.stateless_random_flip_left_right(image, flip_seed)
  if augmentation.pad_crop:
    pad = augmentation.pad_crop
    padded = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]])
    image = tf.image.stateless_random_crop(padded, tf.shape(image), crop_seed)
  return image


@pytest.mark.parametrize("flip, pad_crop", [(True, 0), (False, 2),
                                            (True, 2), (True, 5)])
def test_keras_cv_augmentation_equals_tf_image_stateless_ops(arrays, flip,
                                                             pad_crop):
  images, labels = arrays
  augmentation = data.Augmentation(flip=flip, pad_crop=pad_crop)
  got = np.concatenate([b["image"] for b in _take(data.train_dataset(
      images, labels, batch_size=N, seed=4, augmentation=augmentation), 3)])
  # pylint: disable=protected-access
  stream = iter(data._positions_and_indices(4, N, 0))
  for image in got:
    position, index = next(stream)
    key = data._example_keys(4, position)[0]
    expected = _tf_image_augment(
        tf.image.convert_image_dtype(images[index], tf.float32),
        augmentation, key)
    np.testing.assert_array_equal(image, expected.numpy())


def test_pad_crop_larger_than_the_image_is_refused(arrays):
  images, labels = arrays
  with pytest.raises(ValueError, match="pad_crop=6 exceeds the 6x5 images"):
    data.train_dataset(images, labels, batch_size=4, seed=0,
                       augmentation=data.Augmentation(pad_crop=6))


@pytest.mark.parametrize("granularity", ["batch", "example"])
def test_rbs_params_travel_with_the_batch(arrays, granularity):
  images, labels = arrays
  ds = data.train_dataset(images, labels, batch_size=4, seed=5,
                          augmentation=data.Augmentation(), rbs_blocks=3,
                          rbs_granularity=granularity)
  batches = _take(ds, 6)
  lead = (4,) if granularity == "example" else ()
  for batch in batches:
    assert batch["rbs_rows"].shape == lead + (H,)
    assert batch["rbs_cols"].shape == lead + (W,)
    for rows in batch["rbs_rows"].reshape(-1, H):
      assert sorted(rows) == list(range(H))
    for cols in batch["rbs_cols"].reshape(-1, W):
      assert sorted(cols) == list(range(W))
  distinct = {b["rbs_rows"].tobytes() + b["rbs_cols"].tobytes()
              for b in batches}
  assert len(distinct) > 1


def test_sharded_pipelines_split_the_same_examples(arrays):
  images, labels = arrays
  kwargs = dict(batch_size=4, seed=6, augmentation=data.Augmentation(),
                rbs_blocks=None)
  whole = _take(data.train_dataset(images, labels, **kwargs), 1)[0]
  shards = [
      _take(data.train_dataset(
          images, labels, input_context=tf.distribute.InputContext(
              num_input_pipelines=2, input_pipeline_id=i,
              num_replicas_in_sync=2), **kwargs), 1)[0]
      for i in range(2)]
  assert all(s["image"].shape[0] == 2 for s in shards)
  # Same examples, same augmentation and same attack seeds, whatever the
  # sharding: example j of the stream goes to pipeline j % 2.
  for key in ("image", "label", "seed"):
    merged = np.stack([shards[0][key], shards[1][key]], axis=1).reshape(
        whole[key].shape)
    np.testing.assert_array_equal(merged, whole[key])


def test_iterator_checkpoint_resumes_the_exact_stream(arrays, tmp_path):
  images, labels = arrays
  make = lambda: data.train_dataset(  # pylint: disable=g-long-lambda
      images, labels, batch_size=3, seed=7,
      augmentation=data.Augmentation(pad_crop=1), rbs_blocks=2,
      rbs_granularity="example")
  reference = _take(make(), 12)
  it = iter(make())
  for _ in range(5):
    next(it)
  path = tf.train.Checkpoint(it=it).save(str(tmp_path / "it"))
  resumed = iter(make())
  tf.train.Checkpoint(it=resumed).restore(path)
  for expected in reference[5:]:
    got = next(resumed)
    for key in expected:
      np.testing.assert_array_equal(got[key].numpy(), expected[key])


def test_validation_split_is_disjoint_fixed_and_complete(arrays):
  images, labels = arrays
  (tx, ty), (vx, vy) = data.validation_split(images, labels, 6)
  assert len(vx) == 6 and len(tx) == N - 6
  train_ids = {_source_index(x / 255.0) for x in tx}
  val_ids = {_source_index(x / 255.0) for x in vx}
  assert not train_ids & val_ids and len(train_ids | val_ids) == N
  np.testing.assert_array_equal(vy, labels[sorted(val_ids)])
  (_, _), (vx2, _) = data.validation_split(images, labels, 6)
  np.testing.assert_array_equal(vx, vx2)
  (_, _), (none, _) = data.validation_split(images, labels, 0)
  assert len(none) == 0
  with pytest.raises(ValueError):
    data.validation_split(images, labels, N)


def test_eval_dataset_is_one_ordered_pass(arrays):
  images, labels = arrays
  batches = list(data.eval_dataset(images, labels, batch_size=8))
  assert [len(b["label"]) for b in batches] == [8, 8, 4]
  got = np.concatenate([b["image"].numpy() for b in batches])
  np.testing.assert_allclose(got, images / 255.0, atol=1e-6)
  np.testing.assert_array_equal(
      np.concatenate([b["label"].numpy() for b in batches]), labels)
  seeds = np.concatenate([b["seed"].numpy() for b in batches])
  assert len({tuple(s) for s in seeds}) == N
  # A subset that passes its positions keeps its examples' seeds.
  subset = np.array([3, 11, 17])
  part = next(iter(data.eval_dataset(images[subset], labels[subset],
                                     batch_size=8, positions=subset)))
  np.testing.assert_array_equal(part["seed"].numpy(), seeds[subset])
  np.testing.assert_array_equal(part["label"].numpy(), labels[subset])
  unkeyed = next(iter(data.eval_dataset(images[subset], labels[subset],
                                        batch_size=8)))
  assert not np.array_equal(unkeyed["seed"].numpy(), seeds[subset])


@pytest.mark.parametrize("granularity", ["batch", "example"])
def test_start_resumes_the_stream_after_that_many_examples(arrays,
                                                           granularity):
  images, labels = arrays
  make = lambda start: data.train_dataset(  # pylint: disable=g-long-lambda
      images, labels, batch_size=4, seed=8,
      augmentation=data.Augmentation(pad_crop=1), rbs_blocks=2,
      rbs_granularity=granularity, start=start)
  reference = _take(make(0), 10)
  # Batch 4 starts at example 16 and the stream crosses into epoch 2 at 20.
  for expected, got in zip(reference[4:], _take(make(16), 6)):
    for key in expected:
      np.testing.assert_array_equal(got[key], expected[key], err_msg=key)


def test_input_fn_for_a_step_resumes_after_that_many_batches(arrays):
  images, labels = arrays
  kwargs = dict(batch_size=4, seed=9, augmentation=data.Augmentation(),
                rbs_blocks=2, rbs_granularity="example")
  reference = _take(data.train_dataset(images, labels, **kwargs), 7)
  input_fn = data.train_input_fn(images, labels, **kwargs)
  for expected, got in zip(reference[3:], _take(input_fn(None, 3), 4)):
    for key in expected:
      np.testing.assert_array_equal(got[key], expected[key], err_msg=key)


def test_a_global_batch_has_one_rbs_however_it_is_sharded(arrays):
  images, labels = arrays
  kwargs = dict(batch_size=4, seed=9, augmentation=data.Augmentation(),
                rbs_blocks=3, start=8)
  whole = _take(data.train_dataset(images, labels, **kwargs), 5)
  shards = [
      _take(data.train_dataset(
          images, labels, input_context=tf.distribute.InputContext(
              num_input_pipelines=2, input_pipeline_id=i,
              num_replicas_in_sync=2), **kwargs), 5)
      for i in range(2)]
  for step, batch in enumerate(whole):
    for shard in shards:
      assert shard[step]["image"].shape[0] == 2
      np.testing.assert_array_equal(shard[step]["rbs_rows"],
                                    batch["rbs_rows"])
      np.testing.assert_array_equal(shard[step]["rbs_cols"],
                                    batch["rbs_cols"])
  assert len({b["rbs_rows"].tobytes() + b["rbs_cols"].tobytes()
              for b in whole}) > 1


@pytest.fixture(scope="module")
def folder_splits(arrays, tmp_path_factory):
  """A folder dataset of the arrays' first 12 images (test/: 3), loaded in
  memory and streamed (a 1-byte memory budget)."""
  images, _ = arrays
  root = tmp_path_factory.mktemp("folder")
  for split, indices in (("train", range(12)), ("test", range(3))):
    for i in indices:
      path = root / split / f"class_{i % 3}"
      path.mkdir(parents=True, exist_ok=True)
      Image.fromarray(images[i]).save(path / f"{i:02d}.png")
  load = lambda budget: datasets.load_split(  # pylint: disable=g-long-lambda
      "folder", "train", data_dir=str(root), memory_budget=budget)
  return load(datasets.MEMORY_BUDGET), load(1)


def _assert_same_batches(expected, got):
  assert len(expected) == len(got)
  for a, b in zip(expected, got):
    assert a.keys() == b.keys()
    for key in a:
      np.testing.assert_array_equal(a[key], b[key], err_msg=key)


@pytest.mark.parametrize("granularity", ["batch", "example"])
def test_streamed_split_gives_the_in_memory_batches(folder_splits,
                                                    granularity):
  (images, labels), (files, file_labels) = folder_splits
  assert isinstance(images, np.ndarray)
  assert isinstance(files, datasets.StreamedImages)
  np.testing.assert_array_equal(file_labels, labels)
  kwargs = dict(batch_size=4, seed=10, rbs_blocks=2,
                augmentation=data.Augmentation(pad_crop=1),
                rbs_granularity=granularity)
  _assert_same_batches(
      _take(data.train_dataset(images, labels, **kwargs), 7),
      _take(data.train_dataset(files, file_labels, **kwargs), 7))
  # A resumed stream reads the same files for the same positions.
  _assert_same_batches(
      _take(data.train_input_fn(images, labels, **kwargs)(None, 5), 2),
      _take(data.train_input_fn(files, file_labels, **kwargs)(None, 5), 2))


def test_streamed_split_evaluates_and_validates_as_in_memory(folder_splits):
  (images, labels), (files, file_labels) = folder_splits
  (train, val) = data.validation_split(images, labels, 3, seed=1)
  (s_train, s_val) = data.validation_split(files, file_labels, 3, seed=1)
  for (x, y), (sx, sy) in ((train, s_train), (val, s_val)):
    assert isinstance(sx, datasets.StreamedImages)
    np.testing.assert_array_equal(sx.load(), x)
    np.testing.assert_array_equal(sy, y)
    _assert_same_batches(
        _take(data.eval_dataset(x, y, batch_size=2, seed=3), 1),
        _take(data.eval_dataset(sx, sy, batch_size=2, seed=3), 1))
  subset = np.array([1, 4, 7])
  _assert_same_batches(
      list(data.eval_dataset(images[subset], labels[subset], batch_size=2,
                             positions=subset).as_numpy_iterator()),
      list(data.eval_dataset(files[subset], file_labels[subset], batch_size=2,
                             positions=subset).as_numpy_iterator()))
