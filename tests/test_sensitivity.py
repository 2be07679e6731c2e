"""Tests of the brightness and gamma transformations and loss sensitivity."""

import colorsys

import keras
import numpy as np
import pytest
import tensorflow as tf

from rlfat_tf import sensitivity
from rlfat_tf.attacks import pgd

SHAPE = (4, 3, 3)
NUM_CLASSES = 5


def _pixels():
  # Grays, saturated primaries, pixels at 0 and 1, and random colours.
  fixed = [[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [0.5, 0.5, 0.5],
           [1.0, 0.0, 0.0], [0.1, 0.9, 0.3], [0.2, 0.4, 0.95],
           [0.05, 0.02, 0.01]]
  random = np.random.default_rng(0).random((20, 3))
  return np.concatenate([fixed, random]).astype(np.float32)


def _by_hand(pixel, delta):
  h, s, v = colorsys.rgb_to_hsv(*pixel)
  return np.clip(colorsys.hsv_to_rgb(h, s, min(max(v + delta, 0.0), 1.0)),
                 0.0, 1.0)


@pytest.mark.parametrize("delta", [-0.15, 0.2, -1.0])
def test_brightness_matches_colorsys(delta):
  pixels = _pixels()
  got = sensitivity.brightness(tf.constant(pixels[:, None, :]), delta).numpy()
  expected = np.array([_by_hand(p, delta) for p in pixels])
  np.testing.assert_allclose(got[:, 0, :], expected, atol=1e-6)


def test_brightness_keeps_shape_and_range():
  images = np.random.default_rng(1).random((2, 5, 4, 3)).astype(np.float32)
  out = sensitivity.brightness(images, 0.5).numpy()
  assert out.shape == images.shape
  assert out.min() >= 0.0 and out.max() <= 1.0


def test_gamma_is_a_power():
  images = np.array([0.0, 0.25, 0.5, 1.0], np.float32)
  np.testing.assert_allclose(sensitivity.gamma(images, 0.5).numpy(),
                             [0.0, 0.5, np.sqrt(0.5), 1.0], rtol=1e-6)
  np.testing.assert_allclose(sensitivity.gamma(images, 2.0).numpy(),
                             [0.0, 0.0625, 0.25, 1.0], rtol=1e-6)
  with pytest.raises(ValueError, match="positive"):
    sensitivity.gamma(images, 0.0)


@pytest.fixture(scope="module")
def linear_model():
  model = keras.Sequential([keras.Input(SHAPE), keras.layers.Flatten(),
                            keras.layers.Dense(NUM_CLASSES)])
  rng = np.random.default_rng(2)
  kernel = rng.normal(size=(np.prod(SHAPE), NUM_CLASSES)).astype(np.float32)
  bias = rng.normal(size=NUM_CLASSES).astype(np.float32)
  model.layers[-1].set_weights([kernel, bias])
  return model, kernel, bias


def _hand_sensitivity(inputs, labels, kernel, bias):
  """Mean ||W (softmax(W^T x + b) - onehot)||_2 of a linear classifier."""
  flat = inputs.reshape(len(inputs), -1).astype(np.float64)
  logits = flat @ kernel + bias
  probs = np.exp(logits - logits.max(axis=1, keepdims=True))
  probs /= probs.sum(axis=1, keepdims=True)
  grads = (probs - np.eye(NUM_CLASSES)[labels]) @ kernel.T
  return np.linalg.norm(grads, axis=1).mean()


def test_loss_sensitivity_matches_linear_model_by_hand(linear_model):
  model, kernel, bias = linear_model
  rng = np.random.default_rng(3)
  images = rng.random((7,) + SHAPE).astype(np.float32)
  labels = rng.integers(0, NUM_CLASSES, 7).astype(np.int32)
  # Seven images in batches of three: the last batch is short, and the mean
  # must still be over images, not batches.
  got = sensitivity.loss_sensitivity(model, images, labels,
                                     brightness=(-0.15, 0.1), gamma=(0.8, 2),
                                     batch_size=3, verbose=0)
  transformed = {
      "sensitivity/brightness_-0.15": np.array(
          [[[_by_hand(p, -0.15) for p in row] for row in image]
           for image in images]),
      "sensitivity/brightness_0.1": np.array(
          [[[_by_hand(p, 0.1) for p in row] for row in image]
           for image in images]),
      "sensitivity/gamma_0.8": images.astype(np.float64) ** 0.8,
      "sensitivity/gamma_2": images.astype(np.float64) ** 2,
  }
  assert set(got) == set(transformed)
  for key, inputs in transformed.items():
    assert got[key] == pytest.approx(
        _hand_sensitivity(inputs, labels, kernel, bias), rel=1e-5), key


def test_loss_sensitivity_reads_uint8_as_unit_range(linear_model):
  model, kernel, bias = linear_model
  rng = np.random.default_rng(4)
  images = rng.integers(0, 256, (4,) + SHAPE).astype(np.uint8)
  labels = rng.integers(0, NUM_CLASSES, 4).astype(np.int32)
  got = sensitivity.loss_sensitivity(model, images, labels, brightness=(),
                                     gamma=(1.0,), verbose=0)
  expected = _hand_sensitivity(images / 255.0, labels, kernel, bias)
  assert got == {"sensitivity/gamma_1": pytest.approx(expected, rel=1e-5)}


def test_loss_sensitivity_runs_batchnorm_in_eval_mode():
  model = keras.Sequential([keras.Input(SHAPE),
                            keras.layers.BatchNormalization(),
                            keras.layers.Flatten(),
                            keras.layers.Dense(NUM_CLASSES)])
  before = [w.copy() for w in model.layers[0].get_weights()]
  images = np.random.default_rng(5).random((6,) + SHAPE).astype(np.float32)
  sensitivity.loss_sensitivity(model, images, np.zeros(6, np.int32),
                               verbose=0)
  for old, new in zip(before, model.layers[0].get_weights()):
    np.testing.assert_array_equal(old, new)


def test_setting_keys_use_short_numbers():
  assert sensitivity.setting_key("brightness", -0.15) == (
      "sensitivity/brightness_-0.15")
  assert sensitivity.setting_key("gamma", 2.0) == "sensitivity/gamma_2"
  assert sensitivity.setting_key("gamma", 1.25) == "sensitivity/gamma_1.25"


def test_no_settings_give_no_metrics(linear_model):
  model, _, _ = linear_model
  images = np.zeros((2,) + SHAPE, np.float32)
  assert sensitivity.loss_sensitivity(model, images, np.zeros(2, np.int32),
                                      brightness=(), gamma=(),
                                      verbose=0) == {}


def test_attacked_inputs_attack_every_image_misclassified_or_not(
    linear_model):
  model, kernel, bias = linear_model
  rng = np.random.default_rng(6)
  images = rng.random((7,) + SHAPE).astype(np.float32)
  labels = rng.integers(0, NUM_CLASSES, 7).astype(np.int32)
  flat = images.reshape(7, -1).astype(np.float64)
  logits = flat @ kernel + bias
  correct = logits.argmax(axis=1) == labels
  assert correct.any() and not correct.all()
  # One step of size epsilon from the clean image (FGSM), by hand.
  eps = 0.05
  spec = pgd.AttackSpec(eps, eps, 1, "ce", "none", "eval")
  probs = np.exp(logits - logits.max(axis=1, keepdims=True))
  probs /= probs.sum(axis=1, keepdims=True)
  grads = (probs - np.eye(NUM_CLASSES)[labels]) @ kernel.T
  expected = np.clip(flat + eps * np.sign(grads), 0.0, 1.0).reshape(
      images.shape)
  got = sensitivity.attacked_inputs(model, images, labels, spec,
                                    batch_size=3, verbose=0)
  np.testing.assert_allclose(got, expected, atol=1e-6)
  # Misclassified images are attacked too, not kept clean.
  assert np.all(np.abs(got - images).reshape(7, -1).max(axis=1) > eps / 2)
