"""Tests of APGD: the checkpoint schedule, the optimum of a linear model, and
its strength against PGD on a small trained model."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from rlfat_tf import attacks
from rlfat_tf import models
from rlfat_tf import robustness
from rlfat_tf.attacks import apgd

EPS = 0.03


def _pattern_data(num, seed):
  """Four classes, each a fixed +-0.05 pattern on grey, plus noise."""
  patterns = np.random.default_rng(0).choice([-1.0, 1.0], size=(4, 8, 8, 3))
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, 4, num).astype(np.int32)
  images = (0.5 + 0.05 * patterns[labels] +
            0.08 * rng.standard_normal((num, 8, 8, 3)))
  return np.clip(images, 0.0, 1.0).astype(np.float32), labels


@pytest.fixture(scope="module")
def trained():
  """A WRN-10-1 trained without attacks: accurate, and easy to attack."""
  keras.utils.set_random_seed(0)
  model = models.wide_resnet(10, 1, 4, (8, 8, 3))
  model.compile(keras.optimizers.Adam(3e-3),
                keras.losses.SparseCategoricalCrossentropy(from_logits=True))
  model.fit(*_pattern_data(2048, 1), batch_size=64, epochs=6, verbose=0)
  return model


def _float_checkpoints(steps):
  """The paper's formula in floating point, rounded before the ceiling."""
  p = [0.0, 0.22]
  while p[-1] + max(p[-1] - p[-2] - 0.03, 0.06) <= 1.0 + 1e-9:
    p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
  return tuple(sorted({math.ceil(round(x * steps, 9)) for x in p}))


def test_checkpoints_follow_the_paper():
  # p = 0, .22, .41, .57, .70, .80, .87, .93, .99 (the next, 1.05, is > 1).
  assert apgd.checkpoints(100) == (0, 22, 41, 57, 70, 80, 87, 93, 99)
  assert apgd.checkpoints(20) == (0, 5, 9, 12, 14, 16, 18, 19, 20)
  for steps in (1, 5, 10, 37, 250, 1000):
    assert apgd.checkpoints(steps) == _float_checkpoints(steps)


def test_bad_specs_are_rejected():
  with pytest.raises(ValueError, match="loss"):
    apgd.APGDSpec(EPS, 10, "cw")
  with pytest.raises(ValueError, match="step"):
    apgd.APGDSpec(EPS, 0)


def _linear_model():
  """Two classes with logits (0, w . x): CE's gradient sign is constant."""
  inputs = keras.Input((4, 4, 1))
  flat = keras.layers.Flatten()(inputs)
  w = np.random.default_rng(3).choice([-1.0, 1.0], size=(16, 1))
  logit = keras.layers.Dense(1, kernel_initializer=keras.initializers.Constant(
      w), use_bias=False)(flat)
  logits = keras.layers.Concatenate()([keras.ops.zeros_like(logit), logit])
  return keras.Model(inputs, logits), w.reshape(4, 4, 1)


def test_apgd_reaches_the_loss_maximiser_of_a_linear_model():
  model, w = _linear_model()
  images = tf.constant(np.full((3, 4, 4, 1), 0.5, np.float32))
  labels = tf.constant([0, 1, 0])
  seeds = tf.constant([[1, 0], [1, 1], [1, 2]], tf.int64)
  adv = apgd.perturb(model, apgd.APGDSpec(0.1, 10, "ce"), images, labels,
                     seeds).numpy()
  # Class 0 loses by raising w . x, class 1 by lowering it: each pixel sits
  # on the corner of the ball that the label's gradient sign points to.
  direction = np.where(labels.numpy() == 0, 1.0, -1.0)[:, None, None, None]
  np.testing.assert_allclose(adv, 0.5 + 0.1 * direction * w, atol=1e-6)


def test_graph_and_eager_runs_agree():
  keras.utils.set_random_seed(1)
  model = models.wide_resnet(10, 1, 4, (8, 8, 3))
  images, labels = _pattern_data(4, 5)
  seeds = tf.constant([[2, i] for i in range(4)], tf.int64)
  spec = apgd.APGDSpec(EPS, 6, "dlr")
  eager = apgd.perturb(model, spec, images, labels, seeds)
  graph = tf.function(lambda x, y, s: apgd.perturb(model, spec, x, y, s))(
      images, labels, seeds)
  np.testing.assert_allclose(graph.numpy(), eager.numpy(), atol=1e-6)
  delta = eager.numpy() - images
  assert np.abs(delta).max() <= EPS + 1e-6
  assert eager.numpy().min() >= 0.0 and eager.numpy().max() <= 1.0


def _accuracy(model, name, images, labels):
  attack = attacks.build(name, {"epsilon": EPS, "step_size": 0.0075,
                                "pgd_steps": 20, "apgd_steps": 20,
                                "restarts": 1})
  out = robustness.run_attack(model, attack, images, labels, batch_size=100,
                              verbose=0)
  assert out["clean_correct"].mean() > 0.95
  assert out["linf"].max() <= EPS + 1e-6
  return out["robust"].mean()


def test_apgd_is_at_least_as_strong_as_pgd_with_the_same_budget(trained):
  images, labels = _pattern_data(200, 2)
  before = [v.numpy().copy() for v in trained.variables]
  pgd = _accuracy(trained, "pgd", images, labels)
  apgd_ce = _accuracy(trained, "apgd_ce", images, labels)
  apgd_dlr = _accuracy(trained, "apgd_dlr", images, labels)
  assert pgd < 0.8 and apgd_dlr < 0.8
  # The same 20 gradient steps; 0.01 is two images of noise.
  assert apgd_ce <= pgd + 0.01
  for b, a in zip(before, trained.variables):
    np.testing.assert_array_equal(a.numpy(), b)


def test_apgd_attack_interface():
  attack = attacks.build("apgd_dlr", {"epsilon": EPS, "apgd_steps": 7,
                                      "restarts": 3})
  assert isinstance(attack, apgd.APGD) and attack.kind == "white_box"
  assert attack.spec == apgd.APGDSpec(EPS, 7, "dlr")
  assert attack.settings() == {"steps": 7, "restarts": 3, "loss": "dlr",
                               "momentum": 0.75, "rho": 0.75,
                               "initial_step": 2.0}
