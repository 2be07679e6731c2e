"""Tests of the per-example losses against hand computations."""

import numpy as np
import tensorflow as tf

from rlfat_tf.attacks import losses


def test_margin_is_the_true_logit_against_the_best_other():
  logits = tf.constant([[5.0, -1.0, -2.0], [0.0, 2.0, 1.0], [1.0, 3.0, 3.0]])
  np.testing.assert_allclose(
      losses.margin(logits, tf.constant([0, 1, 2])).numpy(), [6.0, 1.0, 0.0])
  # A scalar label broadcasts over rows (the N attack's population).
  np.testing.assert_allclose(losses.margin(logits, 1).numpy(),
                             [-6.0, 1.0, 0.0])


def test_kl_is_zero_for_equal_logits_and_asymmetric_otherwise():
  a = tf.constant([[2.0, 0.5, -1.0], [0.1, 0.2, 3.0]])
  b = tf.constant([[0.5, 1.0, 0.0], [1.0, 0.0, 0.5]])
  np.testing.assert_allclose(losses.kl_divergence(a, a).numpy(), 0.0,
                             atol=1e-7)
  assert not np.allclose(losses.kl_divergence(a, b).numpy(),
                         losses.kl_divergence(b, a).numpy())


def test_cw_margin_masks_the_true_class():
  # Every other logit is negative: the runner-up is -1, not the masked 0 that
  # the official code's multiplication picks.
  logits = tf.constant([[5.0, -1.0, -2.0], [0.0, 2.0, 1.0]])
  labels = tf.constant([0, 1])
  np.testing.assert_allclose(
      losses.cw_margin(logits, labels).numpy(),
      [-(5.0 - (-1.0) + 50.0), -(2.0 - 1.0 + 50.0)])
  # A confident misclassification puts the margin below -confidence: relu 0.
  np.testing.assert_allclose(
      losses.cw_margin(tf.constant([[-60.0, 0.0]]), tf.constant([0])).numpy(),
      [0.0])


def test_dlr_loss_matches_a_hand_computation():
  logits = np.array([[4.0, 1.0, 3.0, -2.0],   # correct: margin 4 - 3
                     [0.5, 2.0, 1.5, 1.0],    # wrong: runner-up 2.0
                     [1.0, 1.0, 1.0, 1.0]],   # tie: zero margin, zero spread
                    np.float32)
  labels = np.array([0, 3, 2])
  expected = []
  for z, y in zip(logits, labels):
    top = np.sort(z)[::-1]
    other = np.max(np.delete(z, y))
    expected.append(-(z[y] - other) / (top[0] - top[2] + 1e-12))
  got = losses.dlr_loss(tf.constant(logits), tf.constant(labels)).numpy()
  np.testing.assert_allclose(got, expected, rtol=1e-6)
  np.testing.assert_allclose(got[:2], [-1.0 / 3.0, 1.0 / 1.0], rtol=1e-6)
  assert losses.LOSSES["dlr"](tf.constant(logits), tf.constant(labels),
                              None).shape == (3,)


def test_dlr_loss_ignores_shifts_and_scales_of_the_logits():
  logits = tf.constant([[2.0, -1.0, 0.5, 0.0]])
  labels = tf.constant([2])
  np.testing.assert_allclose(losses.dlr_loss(7.0 * logits + 3.0, labels),
                             losses.dlr_loss(logits, labels), rtol=1e-5)


def test_margins_stay_exact_when_logit_gaps_exceed_1e4():
  # A true logit 5e4 ahead: masking it with -1e4 would leave it the "best
  # other" (4e4) and shrink the margin 49999 to 1e4.
  logits = tf.constant([[5e4, 1.0, -3.0, -2e4],
                        [1.0, 3e4, 2.0, -5e4]])
  labels = tf.constant([0, 0])
  np.testing.assert_allclose(losses.margin(logits, labels).numpy(),
                             [49999.0, 1.0 - 3e4])
  np.testing.assert_allclose(losses.dlr_loss(logits, labels).numpy(),
                             [-49999.0 / 50003.0, 1.0], rtol=1e-6)
  np.testing.assert_allclose(losses.cw_margin(logits, labels).numpy(),
                             [-(49999.0 + 50.0), 0.0])


def test_targeted_dlr_matches_a_hand_computation():
  # Sorted: 4 > 3 > 1 > 0 > -2, so the denominator is 4 - (1 + 0) / 2.
  logits = tf.constant([[4.0, 1.0, 3.0, -2.0, 0.0],
                        [3e4, -2e4, 1e4, 0.0, 5.0]])
  got = losses.dlr_targeted_loss(logits, tf.constant([0, 1]),
                                 tf.constant([3, 2])).numpy()
  np.testing.assert_allclose(
      got, [-(4.0 + 2.0) / 3.5, (1e4 + 2e4) / (3e4 - 2.5)], rtol=1e-6)
  shifted = losses.dlr_targeted_loss(5.0 * logits[:1] - 7.0,
                                     tf.constant([0]), tf.constant([3]))
  np.testing.assert_allclose(shifted.numpy(), got[:1], rtol=1e-5)
