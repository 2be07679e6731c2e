"""Tests of SmoothGrad and the salience-map files."""

import keras
import numpy as np
import pytest

from rlfat_tf import errors
from rlfat_tf import saliency

SHAPE = (6, 5, 3)
NUM_CLASSES = 4


def _images(count, seed=0):
  return np.random.default_rng(seed).random((count,) + SHAPE).astype(
      np.float32)


@pytest.fixture(scope="module")
def linear_model():
  model = keras.Sequential([keras.Input(SHAPE), keras.layers.Flatten(),
                            keras.layers.Dense(NUM_CLASSES)])
  kernel = np.random.default_rng(1).normal(
      size=(np.prod(SHAPE), NUM_CLASSES)).astype(np.float32)
  model.layers[-1].set_weights([kernel, np.zeros(NUM_CLASSES, np.float32)])
  return model, kernel


@pytest.fixture(scope="module")
def square_model():
  """Logit k = sum_j W_jk x_j^2: its gradient 2 W_y x reveals the noise."""
  model = keras.Sequential([keras.Input(SHAPE),
                            keras.layers.Lambda(lambda x: x * x),
                            keras.layers.Flatten(),
                            keras.layers.Dense(NUM_CLASSES, use_bias=False)])
  kernel = np.zeros((np.prod(SHAPE), NUM_CLASSES), np.float32)
  kernel[:, 0] = 1.0
  model.layers[-1].set_weights([kernel])
  return model


def test_linear_model_map_is_the_weights_of_the_true_class(linear_model):
  # The gradient of a linear logit is the same at every noisy copy.
  model, kernel = linear_model
  labels = np.array([0, 3, 1], np.int32)
  maps = saliency.smoothgrad(model, _images(3), labels, samples=4,
                             verbose=0)
  assert maps.shape == (3, 6, 5) and maps.dtype == np.float32
  for i, label in enumerate(labels):
    expected = np.abs(kernel[:, label].reshape(SHAPE)).sum(axis=-1)
    np.testing.assert_allclose(maps[i], expected, rtol=1e-5)


def test_noise_has_the_requested_scale(square_model):
  # Every input has weight 1 for class 0, so the map of one noisy copy is
  # sum_c |2 (x_c + n_c)|. With x_c in [0.6, 0.8] and sigma = 0.5 * range
  # (at most 0.1), x_c + n_c > 0, so the map minus 2 sum_c x_c is twice a sum
  # of three draws of N(0, sigma^2).
  rng = np.random.default_rng(2)
  images = rng.uniform(0.6, 0.8, (40,) + SHAPE).astype(np.float32)
  maps = saliency.smoothgrad(square_model, images, np.zeros(40, np.int32),
                             noise_level=0.5, samples=1, verbose=0)
  sigma = 0.5 * (images.max(axis=(1, 2, 3)) - images.min(axis=(1, 2, 3)))
  noise_sums = (maps / 2 - images.sum(axis=-1)) / sigma[:, None, None]
  # Each value is a sum of three standard normals: variance 3.
  assert abs(noise_sums.mean()) < 0.15
  assert noise_sums.var() == pytest.approx(3.0, rel=0.1)


def test_averaging_shrinks_the_noise(square_model):
  images = np.full((30,) + SHAPE, 0.5, np.float32)
  images[:, 0, 0, 0] = 0.0  # gives each image a value range of 0.5
  labels = np.zeros(30, np.int32)
  excess = {}
  for samples in (1, 16):
    maps = saliency.smoothgrad(square_model, images, labels, noise_level=0.2,
                               samples=samples, verbose=0)
    excess[samples] = (maps / 2 - images.sum(axis=-1))[:, 1:, 1:].std()
  # The mean of n draws has 1/sqrt(n) of their spread: 1/4 for n = 16.
  assert excess[16] / excess[1] == pytest.approx(0.25, rel=0.15)


def test_deterministic_for_a_seed_whatever_the_batch_size(square_model):
  images, labels = _images(5, seed=3), np.zeros(5, np.int32)
  a = saliency.smoothgrad(square_model, images, labels, samples=3, seed=7,
                          batch_size=5, verbose=0)
  b = saliency.smoothgrad(square_model, images, labels, samples=3, seed=7,
                          batch_size=2, verbose=0)
  c = saliency.smoothgrad(square_model, images, labels, samples=3, seed=8,
                          batch_size=5, verbose=0)
  np.testing.assert_allclose(a, b, rtol=1e-6)
  assert np.abs(a - c).max() > 1e-3


def test_runs_batchnorm_in_eval_mode():
  model = keras.Sequential([keras.Input(SHAPE),
                            keras.layers.BatchNormalization(),
                            keras.layers.Flatten(),
                            keras.layers.Dense(NUM_CLASSES)])
  before = [w.copy() for w in model.layers[0].get_weights()]
  saliency.smoothgrad(model, _images(4), np.zeros(4, np.int32), samples=2,
                      verbose=0)
  for old, new in zip(before, model.layers[0].get_weights()):
    np.testing.assert_array_equal(old, new)


def test_save_and_load_round_trip(tmp_path):
  images = np.random.default_rng(4).integers(0, 256, (3,) + SHAPE).astype(
      np.uint8)
  labels = np.array([2, 0, 1])
  maps = np.random.default_rng(5).random((3, 6, 5))
  path = str(tmp_path / "salience.npz")
  saliency.save_maps(path, images, labels, maps)
  got_images, got_labels, got_maps = saliency.load_maps(path)
  assert got_images.dtype == np.float32 and got_maps.dtype == np.float32
  np.testing.assert_allclose(got_images, images / 255.0, rtol=1e-6)
  np.testing.assert_array_equal(got_labels, labels)
  np.testing.assert_allclose(got_maps, maps, rtol=1e-6)
  assert [p.name for p in tmp_path.iterdir()] == ["salience.npz"]


def test_save_rejects_mismatched_maps(tmp_path):
  path = str(tmp_path / "salience.npz")
  with pytest.raises(ValueError, match="maps"):
    saliency.save_maps(path, _images(2), [0, 1], np.zeros((2, 5, 6)))
  assert not list(tmp_path.iterdir())


def test_load_reports_bad_files_in_one_line(tmp_path):
  with pytest.raises(errors.UserError, match="missing") as missing:
    saliency.load_maps(str(tmp_path / "absent.npz"))
  bad = tmp_path / "bad.npz"
  bad.write_bytes(b"not a zip file")
  with pytest.raises(errors.UserError, match="not a readable") as garbage:
    saliency.load_maps(str(bad))
  partial = tmp_path / "partial.npz"
  np.savez(partial, images=_images(2))
  with pytest.raises(errors.UserError, match="not a readable"):
    saliency.load_maps(str(partial))
  for info in (missing, garbage):
    assert "\n" not in str(info.value)
