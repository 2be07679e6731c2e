"""Tests of FAB-T: the L-infinity projection against hand computations and an
independent solver, the attack on linear models whose minimal adversarial
distance is known, its target order, and its bookkeeping."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from rlfat_tf import attacks
from rlfat_tf import errors
from rlfat_tf.attacks import fab


@pytest.mark.parametrize("dim", [1, 2, 7, 3072])
def test_sorted_sums_are_tensorflows_bit_for_bit(dim):
  rng = np.random.default_rng(dim)
  # Pixel-valued rows tie often, as the clean image's rows of the projection
  # do; -0.0 ties with 0; 1 is the largest value p takes.
  p = np.concatenate([rng.integers(0, 256, (3, dim)) / 255.0,
                      rng.uniform(size=(2, dim)),
                      np.zeros((1, dim)), np.ones((1, dim))]).astype(np.float32)
  p[0, ::2] = -0.0
  w = rng.normal(size=p.shape).astype(np.float32)
  d = rng.uniform(-1, 1, p.shape).astype(np.float32)
  p, w, d = (tf.constant(x) for x in (p, w, d))
  got = [x.numpy() for x in tf.function(fab.sorted_sums)(p, w, d)]
  # The TensorFlow ops the reference's steps translate to.
  indp = tf.argsort(p, axis=1, stable=True)
  down = tf.reverse(indp, [1])
  ws = tf.gather(w, down, batch_dims=1)
  want = [indp, tf.cumsum(tf.abs(ws), axis=1),
          tf.cumsum(-ws * tf.gather(d, down, batch_dims=1), axis=1)]
  for g, x in zip(got, want):
    np.testing.assert_array_equal(g, x.numpy())


def _project(points, w, b):
  return fab.projection_linf(tf.constant(points, tf.float32),
                             tf.constant(w, tf.float32),
                             tf.constant(b, tf.float32)).numpy()


@pytest.mark.parametrize("point, w, b, step", [
    # w . d = 0.6 - 1 = -0.4 on two equal weights: -0.2 each.
    ((0.5, 0.5), (1.0, 1.0), 0.6, (-0.2, -0.2)),
    # -0.3 shared equally would take x_1 to -0.05: x_1 stops at 0 (-0.1) and
    # x_2 makes up the rest (-0.2).
    ((0.1, 0.5), (1.0, 1.0), 0.3, (-0.1, -0.2)),
    # The point lies below the plane (w . t = -0.2 < 0.5): +0.7 is needed; an
    # equal step of 0.7 / 3 would take x_2 below 0, so x_2 stops at 0
    # (+0.4) and x_1 moves by 0.3.
    ((0.2, 0.2), (1.0, -2.0), 0.5, (0.3, -0.2)),
    # A zero weight never moves: -0.3 shared by the two others.
    ((0.5, 0.9, 0.5), (1.0, 0.0, -1.0), -0.6, (-0.3, 0.0, 0.3)),
    # Unreachable inside the box (w . x <= 2): every coordinate goes to its
    # corner.
    ((0.5, 0.5), (1.0, 1.0), 3.0, (0.5, 0.5)),
    # On the plane already.
    ((0.25, 0.75), (2.0, 1.0), 1.25, (0.0, 0.0)),
])
def test_projection_matches_hand_computation(point, w, b, step):
  np.testing.assert_allclose(_project([point], [w], [b])[0], step,
                             atol=1e-6)


def _bisection_projection(t, w, b):
  """Independent solver: bisect the common step lam of the free coordinates.

  Oriented so that w . t >= b, the step that moves every coordinate by lam
  towards the corner that lowers w . x, capped at the box, changes w . x by
  -sum |w_i| min(lam, room_i), which falls monotonically in lam.
  """
  if w @ t < b:
    w, b = -w, -b
  direction = np.where(w > 0, -1.0, np.where(w < 0, 1.0, 0.0))
  room = np.where(w > 0, t, 1.0 - t)
  change = lambda lam: -np.abs(w) @ np.minimum(lam, room)
  if change(room.max()) >= b - w @ t:
    return direction * room
  lo, hi = 0.0, room.max()
  for _ in range(100):
    mid = (lo + hi) / 2
    lo, hi = (mid, hi) if change(mid) > b - w @ t else (lo, mid)
  return direction * np.minimum(hi, room)


def test_projection_matches_an_independent_solver_row_by_row():
  # One batch mixes uncapped, capped and unreachable rows, and zero weights.
  rng = np.random.default_rng(0)
  rows, dim = 64, 13
  t = rng.uniform(0, 1, (rows, dim))
  t[::3, :4] = rng.choice([0.0, 1.0], (len(t[::3]), 4))
  w = rng.standard_normal((rows, dim)) * (rng.uniform(size=(rows, dim)) > 0.2)
  b = np.sum(w * t, 1) + rng.normal(0, 1.5, rows)
  got = _project(t, w, b)
  want = np.stack([_bisection_projection(*row) for row in zip(t, w, b)])
  np.testing.assert_allclose(got, want, atol=2e-5)
  reachable = np.abs(np.sum(w * (t + want), 1) - b) < 1e-6
  assert 10 < reachable.sum() < rows


def _linear_model(kernel, bias):
  """logits = W x + b on 4x4x1 images."""
  inputs = keras.Input((4, 4, 1))
  logits = keras.layers.Dense(
      kernel.shape[1], kernel_initializer=keras.initializers.Constant(kernel),
      bias_initializer=keras.initializers.Constant(bias))(
          keras.layers.Flatten()(inputs))
  return keras.Model(inputs, logits)


def _pattern(weight, pixels):
  """+weight, -weight, ... on the given pixels of a flattened 4x4 image."""
  out = np.zeros(16)
  out[pixels] = weight * np.array([1.0, -1.0] * (len(pixels) // 2))
  return out


def _run(model, spec, images, labels, seeds=None):
  if seeds is None:
    seeds = np.stack([np.arange(len(labels)), np.ones(len(labels))], 1)
  run = tf.function(lambda x, y, s: fab.perturb(model, spec, x, y, s))
  adv = run(tf.constant(images, tf.float32), tf.constant(labels, tf.int32),
            tf.constant(seeds, tf.int64)).numpy()
  return adv, np.argmax(model(adv).numpy(), 1)


def _linf(a, b):
  return np.abs(a - b).reshape(len(a), -1).max(1)


# Class 1 differs from class 0 by +-0.5 on pixels 0..7 (||w_1 - w_0||_1 = 4);
# class 2 is out of reach.
_NEAR = _linear_model(np.stack([np.zeros(16), _pattern(0.5, range(8)),
                                np.zeros(16)], 1), [1.2, 0.0, -100.0])


def _near_images():
  """An interior point and one where the box caps half of the step."""
  interior = np.full(16, 0.5)
  capped = np.full(16, 0.5)
  capped[1:8:2] = 0.0  # the pixels where w_1 < 0 cannot move down
  return np.stack([interior, capped]).reshape(2, 4, 4, 1).astype(np.float32)


def test_reaches_the_minimal_distance_of_a_linear_model():
  # Interior point: logits (1.2, 0), margin 1.2 / ||w_1 - w_0||_1 = 0.3.
  # Capped point: logits (1.2, 1.0); only the four pixels with w_1 > 0 can
  # move (up, by up to 0.5), so 4 * 0.5 * lam = 0.2 gives 0.1, not the
  # unconstrained 0.2 / 4 = 0.05.
  images = _near_images()
  adv, pred = _run(_NEAR, fab.FABSpec(0.35, steps=20, target_classes=2),
                   images, [0, 0])
  np.testing.assert_array_equal(pred, [1, 1])
  dist = _linf(adv, images)
  np.testing.assert_allclose(dist, [0.3, 0.1], rtol=0.01)
  assert np.all(dist <= 0.35) and adv.min() >= 0 and adv.max() <= 1
  # One restart starts at the clean point: the seeds play no part.
  again, _ = _run(_NEAR, fab.FABSpec(0.35, steps=20, target_classes=2),
                  images, [0, 0], [[5, 6], [7, 8]])
  np.testing.assert_array_equal(again, adv)


def test_epsilon_below_the_minimal_distance_leaves_the_clean_image():
  images = _near_images()
  adv, pred = _run(_NEAR, fab.FABSpec(0.09, steps=20, target_classes=2),
                   images, [0, 0])
  np.testing.assert_array_equal(adv, images)
  np.testing.assert_array_equal(pred, [0, 0])


def test_misclassified_inputs_are_untouched():
  images = _near_images()
  adv, _ = _run(_NEAR, fab.FABSpec(0.35, steps=5, target_classes=2), images,
                [1, 2])
  np.testing.assert_array_equal(adv, images)


# Clean logits (0.3, 0.2, 0.1) at x = 0.5: class 1 is the 2nd most likely,
# 0.1 / 2 = 0.05 away; class 2 is the 3rd, but only 0.2 / 8 = 0.025 away.
_RANKED = _linear_model(np.stack([np.zeros(16), _pattern(0.25, range(8)),
                                  _pattern(1.0, range(8, 16))], 1),
                        [0.3, 0.2, 0.1])


def test_targets_run_in_order_and_stop_at_the_first_success():
  images = np.full((1, 4, 4, 1), 0.5, np.float32)
  # Both are within 0.1: the 2nd most likely class wins although the 3rd is
  # closer.
  adv, pred = _run(_RANKED, fab.FABSpec(0.1, steps=20, target_classes=2),
                   images, [0])
  assert pred[0] == 1
  np.testing.assert_allclose(_linf(adv, images), [0.05], rtol=0.01)
  # Within 0.04 only class 2 is reachable: the second target breaks it.
  adv, pred = _run(_RANKED, fab.FABSpec(0.04, steps=20, target_classes=2),
                   images, [0])
  assert pred[0] == 2
  np.testing.assert_allclose(_linf(adv, images), [0.025], rtol=0.01)
  # With one target class it survives.
  adv, _ = _run(_RANKED, fab.FABSpec(0.04, steps=20, target_classes=1),
                images, [0])
  np.testing.assert_array_equal(adv, images)


def test_random_start_lies_at_half_epsilon_and_follows_the_seeds():
  images = tf.fill([3, 4, 4, 1], 0.5)
  seeds = tf.constant([[0, 1], [0, 2], [0, 1]], tf.int64)
  start = fab.random_start(images, 0.2, seeds).numpy()
  np.testing.assert_allclose(_linf(start, images.numpy()), [0.1] * 3,
                             rtol=1e-6)
  np.testing.assert_array_equal(start[0], start[2])
  assert not np.array_equal(start[0], start[1])
  # Clipped to the box.
  edge = fab.random_start(tf.zeros([1, 4, 4, 1]), 0.2, seeds[:1]).numpy()
  assert edge.min() == 0.0 and 0 < edge.max() <= 0.1


def _small_cnn():
  keras.utils.set_random_seed(1)
  inputs = keras.Input((8, 8, 3))
  h = keras.layers.Conv2D(8, 3, activation="relu")(inputs)
  h = keras.layers.BatchNormalization()(h)
  logits = keras.layers.Dense(4)(keras.layers.Flatten()(h))
  return keras.Model(inputs, logits)


def test_random_restarts_are_reproducible_in_bounds_and_in_inference_mode():
  model = _small_cnn()
  rng = np.random.default_rng(2)
  images = rng.uniform(0, 1, (6, 8, 8, 3)).astype(np.float32)
  labels = np.argmax(model(images).numpy(), 1)
  labels[0] = (labels[0] + 1) % 4  # misclassified: untouched
  spec = fab.FABSpec(0.05, steps=4, target_classes=3, restarts=2)
  seeds = np.stack([np.full(6, 7), np.arange(6)], 1)
  weights = [v.numpy() for v in model.weights]
  first, pred = _run(model, spec, images, labels, seeds)
  # Inference mode: the BatchNorm statistics do not move.
  for before, after in zip(weights, model.weights):
    np.testing.assert_array_equal(before, after.numpy())
  again, _ = _run(model, spec, images, labels, seeds)
  np.testing.assert_array_equal(first, again)
  np.testing.assert_array_equal(first[0], images[0])
  changed = np.any(first != images, axis=(1, 2, 3))
  assert changed.any()
  assert np.all(pred[changed] != labels[changed])
  np.testing.assert_array_equal(first[~changed], images[~changed])
  assert np.all(_linf(first, images) <= 0.05)
  assert first.min() >= 0 and first.max() <= 1


def test_too_few_classes_for_the_targets_is_rejected():
  with pytest.raises(errors.UserError, match="needs at least 10 classes"):
    fab.perturb(_NEAR, fab.FABSpec(0.1), tf.zeros([1, 4, 4, 1]),
                tf.constant([0]), tf.zeros([1, 2], tf.int64))


@pytest.mark.parametrize("kwargs, message", [
    ({"epsilon": 0.0}, "positive epsilon"),
    ({"epsilon": 0.1, "steps": 0}, "steps >= 1"),
    ({"epsilon": 0.1, "target_classes": 0}, "target_classes >= 1"),
    ({"epsilon": 0.1, "restarts": 0}, "restarts >= 1"),
    ({"epsilon": 0.1, "alpha_max": 1.5}, "alpha_max"),
    ({"epsilon": 0.1, "beta": 1.0}, "beta"),
    ({"epsilon": 0.1, "eta": 0.9}, "eta"),
])
def test_bad_specs_are_rejected(kwargs, message):
  with pytest.raises(ValueError, match=message):
    fab.FABSpec(**kwargs)


def test_defaults_are_standard_autoattack_and_settings_are_json():
  attack = attacks.build("fab_t", {**attacks.default_values(),
                                   "epsilon": 8 / 255, "restarts": 1})
  assert isinstance(attack, fab.FAB) and attack.kind == "white_box"
  assert attack.spec == fab.FABSpec(8 / 255)
  assert attack.restarts == 1
  assert json.loads(json.dumps(attack.settings())) == {
      "steps": 100, "target_classes": 9, "restarts": 1, "alpha_max": 0.1,
      "eta": 1.05, "beta": 0.9}
  # The evaluation's restarts are FAB's own (run 0 starts at the clean
  # point), and the attack itself runs once.
  three = attacks.build("fab_t", {**attacks.default_values(),
                                  "epsilon": 8 / 255, "restarts": 3})
  assert (three.spec.restarts, three.restarts) == (3, 1)
  assert three.settings()["restarts"] == 3
