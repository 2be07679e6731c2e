"""Tests of the N attack on a hand-built colour classifier."""

import numpy as np
import pytest
import tensorflow as tf

from rlfat_tf import attacks
from rlfat_tf import robustness
from rlfat_tf.attacks import nattack

import helpers

EPS = 0.03
SMALL = nattack.NAttackSpec(epsilon=EPS, population=20, iterations=60)


@pytest.fixture(scope="module")
def colour_model():
  """An undefended classifier: logit c is 20 times the mean of channel c."""
  return helpers.colour_model()


def _flat(colours):
  colours = np.asarray(colours, np.float32)
  return np.broadcast_to(colours[:, None, None, :],
                         (len(colours), 4, 4, 3)).copy()


def test_margin_uses_each_candidates_own_runner_up():
  logits = tf.constant([[3.0, 1.0, 2.0], [3.0, 2.5, 0.0]])
  # log-softmax differences are logit differences: the runner-up is class 2
  # in the first row and class 1 in the second.
  np.testing.assert_allclose(nattack._margin(logits, tf.constant(0)).numpy(),
                             [1.0, 0.5], rtol=1e-6)


def test_breaks_close_calls_and_spares_clear_ones(colour_model):
  # Class 0 by 0.02 (one eps step of two channels flips it), class 1 by 0.3
  # (out of reach), and an image already misclassified (true label 2).
  images = _flat([[0.52, 0.50, 0.48], [0.40, 0.70, 0.40], [0.60, 0.50, 0.50]])
  labels = np.array([0, 1, 2], np.int32)
  attack = nattack.NAttack(name="nattack", display_name="N attack",
                           spec=SMALL)
  out = robustness.run_attack(colour_model, attack, images, labels,
                              batch_size=3, seed=1, verbose=0,
                              keep_adversarial=True)
  np.testing.assert_array_equal(out["attacked"], [True, True, False])
  np.testing.assert_array_equal(out["robust"], [False, True, False])
  adv = out["adversarial"]
  assert np.abs(adv - images).max() <= EPS + 1e-6
  assert adv.min() >= 0.0 and adv.max() <= 1.0
  assert np.argmax(colour_model(adv[:1]).numpy()) != 0
  # The image the model already misclassifies is not attacked.
  np.testing.assert_array_equal(adv[2], images[2])
  assert out["robust"].mean() == pytest.approx(1 / 3)
  # The clear image runs all 60 iterations: checks at 0, 10, ..., 50 plus a
  # population of 20 per iteration; the close call stops early.
  seeds = tf.constant([[1, 0], [1, 1]], tf.int64)
  queries = [int(nattack.attack_image(colour_model, SMALL, images[i],
                                      labels[i], seeds[i])[2])
             for i in range(2)]
  assert queries[1] == 6 + 60 * 20
  assert 0 < queries[0] < queries[1]


def test_a_misclassified_image_is_broken_at_the_first_check(colour_model):
  image = _flat([[0.6, 0.5, 0.5]])[0]
  success, adv, queries = nattack.attack_image(
      colour_model, SMALL, image, 1, tf.constant([0, 0], tf.int64))
  assert bool(success) and int(queries) == 1
  # The image of the initial mu, 0.001 N(0, 1) in tanh space: about 5e-4
  # per pixel here.
  assert np.abs(adv.numpy() - image).max() < 5e-3


def test_results_are_reproducible_from_the_seed(colour_model):
  image = _flat([[0.515, 0.5, 0.485]])[0]
  runs = [nattack.attack_image(colour_model, SMALL, image, 0,
                               tf.constant([4, 2], tf.int64))
          for _ in range(2)]
  np.testing.assert_array_equal(runs[0][1].numpy(), runs[1][1].numpy())
  assert int(runs[0][2]) == int(runs[1][2])


def test_the_registry_builds_it_at_the_evaluation_epsilon():
  values = {**attacks.default_values(), "epsilon": 0.05, "step_size": 0.01,
            "restarts": 4, "nattack_population": 20, "nattack_examples": 7}
  attack = attacks.build("nattack", values)
  assert attack.kind == "black_box" and attack.examples == 7
  # Restarts are for white-box attacks: the N attack runs once.
  assert attack.restarts == 1
  assert attack.spec == nattack.NAttackSpec(epsilon=0.05, population=20)
  assert attack.settings() == {"population": 20, "sigma": 0.1,
                               "learning_rate": 0.008, "iterations": 200,
                               "check_every": 10, "init_scale": 0.001,
                               "restarts": 1}


def test_bad_specs_are_rejected():
  with pytest.raises(ValueError):
    nattack.NAttackSpec(population=1)
  with pytest.raises(ValueError):
    nattack.NAttackSpec(iterations=0)
