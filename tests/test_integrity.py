"""Tests of the integrity checks' verdicts and of the input-gradient probe.

The checks' attacks run in ``robustness.evaluate``; tests/test_robustness.py
breaks those attacks and sees the checks fail end to end.
"""

import numpy as np
import tensorflow as tf

from rlfat_tf import integrity
from rlfat_tf import models
from rlfat_tf.attacks import pgd

import helpers

EPS = 0.03


def test_noise_tolerance_is_half_a_percent_or_one_image():
  assert integrity.noise_tolerance(1000) == 0.005
  assert integrity.noise_tolerance(16) == 1 / 16


def test_large_epsilon_check():
  assert integrity.check_large_epsilon(0.0, 0.5)["passed"]
  assert integrity.check_large_epsilon(0.01, 0.5)["passed"]
  assert not integrity.check_large_epsilon(0.02, 0.5)["passed"]


def test_epsilon_sweep_needs_falling_accuracy_and_rising_loss():
  accuracies = [("clean", 0.80), ("eps/4", 0.70), ("eps/2", 0.60),
                ("eps", 0.45)]
  assert integrity.check_epsilon_sweep(accuracies, [0.5, 0.9, 1.4, 2.0],
                                       1000)["passed"]
  # 0.705 after 0.70 is within 0.5% of noise.
  noisy = [*accuracies[:2], ("eps/2", 0.705), ("eps", 0.45)]
  assert integrity.check_epsilon_sweep(noisy, [0.5, 0.9, 1.4, 2.0],
                                       1000)["passed"]
  rising = [*accuracies[:2], ("eps/2", 0.72), ("eps", 0.45)]
  failed = integrity.check_epsilon_sweep(rising, [0.5, 0.9, 1.4, 2.0], 1000)
  assert not failed["passed"]
  assert "eps/2 beats eps/4" in failed["detail"]
  # A loss-minimising attack: the accuracy stays at the clean one (no rise)
  # but the loss falls below the clean loss.
  flat = [("clean", 0.8), ("eps/4", 0.8), ("eps/2", 0.8), ("eps", 0.8)]
  failed = integrity.check_epsilon_sweep(flat, [0.5, 0.3, 0.2, 0.1], 1000)
  assert not failed["passed"]
  assert "did not rise from clean to eps/4" in failed["detail"]
  # An attack returning the clean images: the loss stays equal.
  failed = integrity.check_epsilon_sweep(flat, [0.5, 0.5, 0.5, 0.5], 1000)
  assert not failed["passed"]
  # A fully robust model passes: its loss still rises.
  assert integrity.check_epsilon_sweep(flat, [0.1, 0.2, 0.3, 0.4],
                                       1000)["passed"]
  # No image classified correctly: only the accuracies are compared.
  zero = [("clean", 0.0), ("eps/4", 0.0), ("eps/2", 0.0), ("eps", 0.0)]
  moot = integrity.check_epsilon_sweep(zero, None, 1000)
  assert moot["passed"] and "not measured" in moot["detail"]


def test_more_steps_check_allows_noise_only():
  ok = integrity.check_more_steps([("PGD-20", 0.40), ("PGD-40", 0.404)], 1000)
  assert ok["passed"]
  # 100 images: one image (1%) is noise.
  assert integrity.check_more_steps([("PGD-20", 0.40), ("PGD-40", 0.41)],
                                    100)["passed"]
  failed = integrity.check_more_steps([("PGD-20", 0.40), ("PGD-40", 0.42)],
                                      1000)
  assert not failed["passed"] and "PGD-40 beats PGD-20" in failed["detail"]


def test_beats_noise_check():
  assert integrity.check_beats_noise(0.45, 0.80, 500)["passed"]
  assert integrity.check_beats_noise(0.0, 0.0, 500)["passed"]
  # 500 images: PGD must be more than 0.5% (2.5 images) below the noise.
  assert integrity.check_beats_noise(0.794, 0.80, 500)["passed"]
  assert not integrity.check_beats_noise(0.796, 0.80, 500)["passed"]
  failed = integrity.check_beats_noise(0.80, 0.80, 500)
  assert not failed["passed"] and "0.8000" in failed["detail"]


def test_fresh_restarts_check_is_a_sign_test():
  base = np.zeros(400, bool)
  base[:200] = True
  # 16 images change sides each way: no gain.
  fresh = base.copy()
  fresh[:16] = False
  fresh[200:216] = True
  assert integrity.check_fresh_restarts(base, fresh, 1)["passed"]
  # 30 gained, 5 lost: 25 > 3 sqrt(35) = 17.7.
  fresh = base.copy()
  fresh[200:230] = True
  fresh[:5] = False
  failed = integrity.check_fresh_restarts(base, fresh, 1)
  assert not failed["passed"]
  assert "30 survive only the fresh run, 5 only the base run" in (
      failed["detail"])
  # 12 gained, 2 lost: 10 <= 3 sqrt(14) = 11.2.
  fresh = base.copy()
  fresh[200:212] = True
  fresh[:2] = False
  assert integrity.check_fresh_restarts(base, fresh, 1)["passed"]
  # The floor: one image on a small set.
  assert integrity.check_fresh_restarts([False, True], [True, True],
                                        1)["passed"]


def test_black_box_check_compares_each_attack_on_its_own_images():
  assert integrity.check_black_box([("N attack", 0.50, 0.45, 1500),
                                    ("Square", 0.445, 0.45, 1000)])["passed"]
  failed = integrity.check_black_box([("N attack", 0.50, 0.45, 1500),
                                      ("Square", 0.30, 0.45, 1000)])
  assert not failed["passed"]
  assert "Square (by more than 0.0100)" in failed["detail"]
  assert "N attack (" not in failed["detail"]


def test_bounds_check():
  good = {"pgd": {"linf": np.array([0.03, 0.01]), "low": np.array([0.0, .2]),
                  "high": np.array([1.0, 0.5])}}
  assert integrity.check_bounds(good, EPS)["passed"]
  far = {"cw": dict(good["pgd"], linf=np.array([0.0301, 0.0]))}
  assert not integrity.check_bounds(far, EPS)["passed"]
  low = {"cw": dict(good["pgd"], low=np.array([-0.01, 0.0]))}
  failed = integrity.check_bounds({**good, **low}, EPS)
  assert not failed["passed"] and "cw" in failed["detail"]


def test_logits_check():
  logits = np.array([[2.0, -1.0, 0.5], [0.1, 0.3, -4.0]])
  assert integrity.check_logits(logits)["passed"]
  probs = tf.nn.softmax(logits).numpy()
  assert "probabilities" in integrity.check_logits(probs)["detail"]
  assert not integrity.check_logits(probs)["passed"]
  log_probs = tf.nn.log_softmax(logits).numpy()
  assert not integrity.check_logits(log_probs)["passed"]


def test_healthy_models_have_no_zero_gradient_entries():
  images, labels = helpers.colour_data(8)
  assert integrity.zero_gradient_fraction(
      helpers.colour_model(), images, labels, batch_size=8) == 0.0
  model = models.wide_resnet(10, 1, 3, (8, 8, 3))
  images = tf.random.stateless_uniform([6, 8, 8, 3], [0, 1]).numpy()
  fraction = integrity.zero_gradient_fraction(
      model, images, np.arange(6, dtype=np.int32) % 3, batch_size=4)
  assert fraction == 0.0
  passed = integrity.check_gradients(fraction, 6)
  assert passed["passed"] and "0.0000%" in passed["detail"]


def test_masked_gradients_fail_the_check():
  images, labels = helpers.colour_data(16)
  # An 8-bit rounding stage behind stop_gradient: no gradient at all.
  rounding = helpers.colour_model(
      stage=lambda x: tf.stop_gradient(tf.round(x * 255.0) / 255.0))
  assert integrity.zero_gradient_fraction(rounding, images, labels, 16) == 1.0
  # Logits 1e4 times larger: margins of 50 .. 800 saturate the softmax. The
  # cross-entropy gradient p - onehot is exactly 0 for the true class
  # (p_y rounds to 1 in float32) and for every class once exp(-margin)
  # underflows (gaps above about 0.01): at least 1/3 of each image, all of
  # most images.
  saturated = integrity.zero_gradient_fraction(
      helpers.colour_model(scale=1e4), images, labels, 16)
  gaps = images[:, 0, 0, :].max(-1) - 0.5
  assert saturated >= np.mean(gaps > 0.011) > 0.8
  failed = integrity.check_gradients(saturated, 16)
  assert not failed["passed"] and "masked" in failed["detail"]


def test_variables_check_sees_a_moved_batchnorm_statistic():
  model = models.wide_resnet(10, 1, 3, (8, 8, 3))
  before = integrity.snapshot_variables(model)
  assert integrity.check_variables_unchanged(
      before, integrity.snapshot_variables(model))["passed"]
  # A training-mode attack moves the BatchNorm averages: the check sees it.
  images = tf.random.stateless_uniform([4, 8, 8, 3], [0, 1])
  pgd.perturb(model, pgd.pgd(EPS, 0.0075, 1, "train"), images,
              tf.zeros([4], tf.int32), tf.zeros([4, 2], tf.int64))
  failed = integrity.check_variables_unchanged(
      before, integrity.snapshot_variables(model))
  assert not failed["passed"] and "moving" in failed["detail"]
