"""Tests of APGD and APGD-T: the reference's checkpoint schedule, step rule
and start, the optimum of linear models, stopping broken examples against the
reference's run of every example, and the strength against PGD on a small
trained model."""

import dataclasses

import keras
import numpy as np
import pytest
import tensorflow as tf

from rlfat_tf import attacks
from rlfat_tf import errors
from rlfat_tf import models
from rlfat_tf import robustness
from rlfat_tf.attacks import apgd
from rlfat_tf.attacks import losses
from rlfat_tf.attacks import pgd

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


def test_checkpoints_follow_the_reference_schedule():
  # N = 100: stretches 22, 19, 16, 13, 10, 7, then the floor 6 (6 + 99 > 100).
  assert apgd.checkpoints(100) == (0, 22, 41, 57, 70, 80, 87, 93, 99)
  # N = 20: int(4.4) = 4, then int(0.6) -> 1 fewer down to int(1.2) -> 1.
  assert apgd.checkpoints(20) == (0, 4, 7, 9) + tuple(range(10, 21))
  # N = 250: 55, then 7 fewer (int(7.5)) down to 15; the paper's ceil(0.57 N)
  # would put the third check at 143.
  assert apgd.checkpoints(250) == (0, 55, 103, 144, 178, 205, 225, 240)
  assert apgd.checkpoints(1) == (0, 1)
  is_checkpoint, stretch = apgd.schedule(100)
  assert np.flatnonzero(is_checkpoint.numpy()).tolist() == [
      22, 41, 57, 70, 80, 87, 93, 99]
  assert stretch.numpy()[[22, 41, 57, 99, 50]].tolist() == [22, 19, 16, 6, 1]


def _halvings(losses):
  """Replays a 100-step loss history f(x^0..x^100) through the step rule.

  Returns the iterate counts after which the step is halved.
  """
  is_checkpoint, stretch = apgd.schedule(100)
  progress = apgd.start_progress(tf.constant([losses[0]], tf.float32),
                                  100)
  halved = []
  for i in range(1, 101):
    progress, halve = apgd.advance(progress, tf.constant([losses[i]],
                                                         tf.float32),
                                   is_checkpoint[i], stretch[i], 0.75)
    if bool(halve[0]):
      halved.append(i)
  return halved


def test_condition_one_halves_at_exactly_rho_increases():
  # The loss rises every iteration except for dips to 0 in the stretch of
  # iterates 42..57: four dips leave 12 = 0.75 * 16 increases, which the
  # reference's "<=" counts as failure; three leave 13 and pass.
  losses = np.arange(101.0)
  losses[[44, 47, 50, 53]] = 0.0
  assert _halvings(losses) == [57]
  losses[53] = 53.0
  assert _halvings(losses) == []


def test_condition_two_skips_the_first_checkpoint_and_alternates():
  # The start's loss 100 is never beaten (iterate 100 only ties it), yet the
  # loss rises in most iterations, so condition 1 never fires. Condition 2
  # cannot fire at iterate 22 (no halving "before" the first checkpoint); it
  # fires at 41, where the best equals the best at 22, then only at every
  # other checkpoint, since it needs the previous one not to have halved.
  losses = np.arange(101.0)
  losses[0] = 100.0
  # After the restart at 41 the loss of iterate 42 rises against iterate 41's
  # (41), not against the restart point's 100: with the dips at 45, 49 and 53
  # the stretch 42..57 has 13 > 12 increases and passes.
  losses[[45, 49, 53]] = 0.0
  assert _halvings(losses) == [41, 70, 87, 99]


def _reference_halvings(history, steps, rho=0.75):
  """The step rule of fra31/auto-attack's ``attack_single_run`` (L-inf), on
  per-example loss histories [steps + 1, B] (the start, then each iterate),
  written out as it is there: ``loss_steps`` is a zero-filled [steps, B]
  array that row i - 1 of receives iterate i's loss, and
  ``check_oscillation`` reads ``loss_steps[j - c]`` against
  ``loss_steps[j - c - 1]``, which at the first check reaches row -1.

  Returns the iterate counts after which each example's step is halved.
  """
  k = max(int(0.22 * steps), 1)
  size_decr, n_iter_min = max(int(0.03 * steps), 1), max(int(0.06 * steps), 1)
  batch = history.shape[1]
  loss_steps = np.zeros([steps, batch])
  loss_best = history[0].copy()
  loss_best_last_check = loss_best.copy()
  reduced_last_check = np.ones(batch)
  counter3 = 0
  halved = [[] for _ in range(batch)]
  for i in range(steps):
    loss_steps[i] = history[i + 1]
    loss_best = np.maximum(loss_best, history[i + 1])
    counter3 += 1
    if counter3 == k:
      t = np.zeros(batch)
      for c in range(k):
        t += loss_steps[i - c] > loss_steps[i - c - 1]
      fl = (t <= k * rho).astype(float)
      fl = np.maximum(fl, (1.0 - reduced_last_check) *
                      (loss_best_last_check >= loss_best))
      reduced_last_check, loss_best_last_check = fl.copy(), loss_best.copy()
      for b in np.flatnonzero(fl):
        halved[b].append(i + 1)
      k = max(k - size_decr, n_iter_min)
      counter3 = 0
  return halved


def _halvings_of(history, steps):
  is_checkpoint, stretch = apgd.schedule(steps)
  progress = apgd.start_progress(tf.constant(history[0], tf.float32), steps)
  halved = [[] for _ in range(history.shape[1])]
  for i in range(1, steps + 1):
    progress, halve = apgd.advance(
        progress, tf.constant(history[i], tf.float32), is_checkpoint[i],
        stretch[i], 0.75)
    for b in np.flatnonzero(halve.numpy()):
      halved[b].append(i)
  return halved


def test_the_first_iterate_counts_as_in_the_reference():
  # The targeted DLR loss of an unbroken example is negative: the reference
  # compares iterate 1 with its zero-filled history row, so never counts it.
  # Here iterate 1 rises over the start, and iterates 2-22 rise 16 times:
  # 16 <= 0.75 * 22 halves at the first check in the reference, while
  # counting iterate 1 against the start would make 17 and not halve.
  history = np.full([101, 1], -2.0)
  history[1] = -1.5
  history[2:18, 0] = -1.4 + 0.01 * np.arange(16)
  history[18:, 0] = history[17, 0]
  assert int(np.sum(np.diff(history[1:23, 0]) > 0)) == 16
  assert _reference_halvings(history, 100)[0][0] == 22
  assert _halvings_of(history, 100) == _reference_halvings(history, 100)
  # Random histories of both signs (cross-entropy is positive), long and
  # short runs, N = 1 among them (its one row is iterate 1's own loss).
  rng = np.random.default_rng(0)
  for steps in (1, 2, 5, 20, 100):
    for sign in (1.0, -1.0):
      history = sign * np.abs(rng.standard_normal([steps + 1, 64]))
      history[:, ::2] = np.cumsum(history[:, ::2], axis=0) * 0.1
      assert _halvings_of(history, steps) == _reference_halvings(
          history, steps), (steps, sign)


def test_start_lies_on_the_sign_normalised_radius():
  images = tf.fill([3, 4, 4, 2], 0.5)
  seeds = tf.constant([[4, 0], [4, 1], [4, 2]], tf.int64)
  start = pgd.sphere_start(images, seeds, 0.1).numpy()
  for x, seed in zip(start, seeds):
    t = tf.random.stateless_uniform([4, 4, 2], seed, -1.0, 1.0).numpy()
    np.testing.assert_allclose(x, 0.5 + 0.1 * t / np.abs(t).max(), atol=1e-7)
    np.testing.assert_allclose(np.abs(x - 0.5).max(), 0.1, atol=1e-7)
  # Per example: the start does not depend on the rest of the batch.
  np.testing.assert_array_equal(
      pgd.sphere_start(images[1:], seeds[1:], 0.1).numpy(), start[1:])
  edge = pgd.sphere_start(tf.ones([1, 4, 4, 2]), seeds[:1], 0.1).numpy()
  assert edge.max() == 1.0 and edge.min() >= 0.9 - 1e-7


def test_bad_specs_are_rejected():
  with pytest.raises(ValueError, match="loss"):
    apgd.APGDSpec(EPS, 10, "cw")
  with pytest.raises(ValueError, match="step"):
    apgd.APGDSpec(EPS, 0)
  with pytest.raises(ValueError, match="target class"):
    apgd.APGDSpec(EPS, 10, "dlr_targeted", target_classes=0)


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
  labels = tf.constant([0, 1, 0])
  # Class 0 loses by raising w . x, class 1 by lowering it. Each image lies
  # 0.35 from grey against that direction, so no point of its ball is
  # misclassified (sum(w) = -6: |w . x| >= 1 there) and APGD climbs to the
  # end: each pixel sits on the corner the label's gradient sign points to.
  direction = np.where(labels.numpy() == 0, 1.0, -1.0)[:, None, None, None]
  images = tf.constant((0.5 - 0.35 * direction * w).astype(np.float32))
  seeds = tf.constant([[1, 0], [1, 1], [1, 2]], tf.int64)
  adv = apgd.perturb(model, apgd.APGDSpec(0.1, 10, "ce"), images, labels,
                     seeds).numpy()
  assert np.argmax(model(adv).numpy(), -1).tolist() == [0, 1, 0]
  np.testing.assert_allclose(adv, images + 0.1 * direction * w, atol=1e-6)


def _third_class_model(classes=5):
  """Logits (1, 0.5, 0.2 + v . (x - 0.5), -10, -20, ...) of a 4x4 image.

  At the grey image the ranking is 0, 1, 2, ...; no perturbation moves
  class 1, but within epsilon 0.1 of grey class 2 can reach 0.2 + 1.6.
  """
  v = np.random.default_rng(4).permutation([1.0] * 8 + [-1.0] * 8)
  kernel = np.zeros((16, classes))
  kernel[:, 2] = v  # sum(v) = 0, so v . x = v . (x - 0.5)
  bias = [1.0, 0.5, 0.2] + [-10.0 * k for k in range(1, classes - 2)]
  inputs = keras.Input((4, 4, 1))
  logits = keras.layers.Dense(
      classes, kernel_initializer=keras.initializers.Constant(kernel),
      bias_initializer=keras.initializers.Constant(bias))(
          keras.layers.Flatten()(inputs))
  return keras.Model(inputs, logits), v.reshape(4, 4, 1)


def test_apgd_t_moves_on_to_the_next_target_until_one_is_reached():
  model, v = _third_class_model()
  # The second example is labelled 3: the clean model already misses it.
  images = tf.fill([2, 4, 4, 1], 0.5)
  labels = tf.constant([0, 3])
  seeds = tf.constant([[5, 0], [5, 1]], tf.int64)
  spec = apgd.APGDSpec(0.1, 10, "dlr_targeted", target_classes=2)
  adv = apgd.perturb(model, spec, images, labels, seeds).numpy()
  # Target 1 cannot win; target 2 wins at the corner 0.5 + 0.1 v, which the
  # first step of 2 epsilon reaches from anywhere in the ball.
  np.testing.assert_allclose(adv[0], 0.5 + 0.1 * v, atol=1e-6)
  assert np.argmax(model(adv).numpy(), -1).tolist() == [2, 0]
  np.testing.assert_array_equal(adv[1], 0.5)
  # With only the first target the example survives, inside the ball.
  one = apgd.perturb(model, dataclasses.replace(spec, target_classes=1),
                     images[:1], labels[:1], seeds[:1]).numpy()
  assert np.argmax(model(one).numpy(), -1).tolist() == [0]
  assert np.abs(one - 0.5).max() <= 0.1 + 1e-6
  # Nothing left to attack: the batch of only the missed example.
  np.testing.assert_array_equal(
      apgd.perturb(model, spec, images[1:], labels[1:], seeds[1:]), 0.5)


def test_apgd_t_needs_more_classes_than_targets():
  model, _ = _third_class_model()
  images, labels = tf.fill([1, 4, 4, 1], 0.5), tf.constant([0])
  seeds = tf.constant([[0, 0]], tf.int64)
  with pytest.raises(errors.UserError, match="lower target_classes "
                     r"\(--apgd_targets\)"):
    apgd.perturb(model, apgd.APGDSpec(0.1, 2, "dlr_targeted",
                                      target_classes=5),
                 images, labels, seeds)
  three, _ = _third_class_model(classes=3)
  with pytest.raises(errors.UserError, match="at least 4"):
    apgd.perturb(three, apgd.APGDSpec(0.1, 2, "dlr_targeted",
                                      target_classes=1),
                 images, labels, seeds)


@pytest.mark.parametrize("loss", ["dlr", "dlr_targeted"])
def test_graph_and_eager_runs_agree(loss):
  keras.utils.set_random_seed(1)
  model = models.wide_resnet(10, 1, 4, (8, 8, 3))
  images, labels = _pattern_data(4, 5)
  seeds = tf.constant([[2, i] for i in range(4)], tf.int64)
  spec = apgd.APGDSpec(EPS, 6, loss, target_classes=2)
  eager = apgd.perturb(model, spec, images, labels, seeds)
  graph = tf.function(lambda x, y, s: apgd.perturb(model, spec, x, y, s))(
      images, labels, seeds)
  np.testing.assert_allclose(graph.numpy(), eager.numpy(), atol=1e-6)
  delta = eager.numpy() - images
  assert np.abs(delta).max() <= EPS + 1e-6
  assert eager.numpy().min() >= 0.0 and eager.numpy().max() <= 1.0


def _reference_run(model, spec, images, labels, seeds):
  """APGD-CE as the reference runs it: every example, every iteration.

  Returns the highest-loss point, and per example the iteration (0 for the
  start) of its first misclassified iterate (-1 if none) with that iterate.
  """
  eps = spec.epsilon
  is_checkpoint, stretch = apgd.schedule(spec.steps)

  def evaluate(x):
    with tf.GradientTape() as tape:
      tape.watch(x)
      logits = model(x, training=False)
      loss = losses.cross_entropy(logits, labels)
      total = tf.reduce_sum(loss)
    wrong = np.argmax(logits.numpy(), -1) != labels.numpy()
    return loss, tape.gradient(total, x), wrong

  x_cur = x_prev = x_max = pgd.sphere_start(images, seeds, eps)
  f, g_cur, wrong = evaluate(x_cur)
  g_max, progress = g_cur, apgd.start_progress(f, spec.steps)
  first = np.where(wrong, 0, -1)
  first_adv = x_cur.numpy()
  eta = tf.fill(tf.shape(labels), 2.0 * eps)
  for i in range(spec.steps):
    alpha = spec.momentum if i > 0 else 1.0
    z = pgd.project(x_cur + eta[:, None, None, None] * tf.sign(g_cur),
                    images, eps)
    x_next = pgd.project(
        x_cur + alpha * (z - x_cur) + (1.0 - alpha) * (x_cur - x_prev),
        images, eps)
    f, g_next, wrong = evaluate(x_next)
    new = wrong & (first < 0)
    first[new] = i + 1
    first_adv[new] = x_next.numpy()[new]
    better = f > progress.best
    x_max = pgd.select(better, x_next, x_max)
    g_max = pgd.select(better, g_next, g_max)
    progress, halve = apgd.advance(progress, f, is_checkpoint[i + 1],
                                   stretch[i + 1], spec.rho)
    eta = tf.where(halve, eta / 2.0, eta)
    x_prev, x_cur = x_cur, pgd.select(halve, x_max, x_next)
    g_cur = pgd.select(halve, g_max, g_next)
  return x_max.numpy(), first, first_adv


def test_stopping_broken_examples_changes_no_verdict_and_no_other_path(
    trained):
  images, labels = _pattern_data(24, 7)
  labels[:2] = (labels[:2] + 1) % 4  # misclassified from the start on
  images, labels = tf.constant(images), tf.constant(labels)
  seeds = tf.constant([[4, i] for i in range(24)], tf.int64)
  spec = apgd.APGDSpec(EPS, 12, "ce")
  x_max, first, first_adv = _reference_run(trained, spec, images, labels,
                                           seeds)
  # Examples broken at the start, at later iterations, and never.
  assert (first == 0).any() and (first > 1).any() and (first < 0).any()
  survived = first < 0
  compiled = tf.function(
      lambda x, y, s: apgd.perturb(trained, spec, x, y, s),
      input_signature=[tf.TensorSpec([None, 8, 8, 3]),
                       tf.TensorSpec([None], tf.int32),
                       tf.TensorSpec([None, 2], tf.int64)])
  for run in (apgd.perturb, lambda *a: compiled(*a[2:])):
    adv = run(trained, spec, images, labels, seeds).numpy()
    # The survivors get the reference's highest-loss point, each broken
    # example its first misclassified iterate, which is misclassified.
    np.testing.assert_allclose(adv[survived], x_max[survived], atol=1e-6)
    np.testing.assert_allclose(adv[~survived], first_adv[~survived],
                               atol=1e-6)
    wrong = (np.argmax(trained(adv, training=False).numpy(), -1)
             != labels.numpy())
    assert wrong.tolist() == (~survived).tolist()


def test_a_batch_broken_at_the_start_never_reaches_the_model_again():
  # Class 0 always wins; every example is labelled 1.
  inputs = keras.Input((4, 4, 1))
  features = keras.layers.Flatten()(keras.layers.Conv2D(2, 3)(inputs))
  logits = keras.layers.Dense(
      2, kernel_initializer="zeros",
      bias_initializer=keras.initializers.Constant([5.0, 0.0]))(features)
  model = keras.Model(inputs, logits)
  images, labels = tf.fill([3, 4, 4, 1], 0.5), tf.ones([3], tf.int32)
  seeds = tf.constant([[6, i] for i in range(3)], tf.int64)
  spec = apgd.APGDSpec(0.1, 5, "ce")
  start = pgd.sphere_start(images, seeds, 0.1).numpy()
  graph = tf.function(lambda x, y, s: apgd.perturb(model, spec, x, y, s))
  for run in (apgd.perturb, lambda *a: graph(*a[2:])):
    np.testing.assert_array_equal(run(model, spec, images, labels, seeds),
                                  start)


def _accuracy(model, name, images, labels):
  attack = attacks.build(name, {"epsilon": EPS, "step_size": 0.0075,
                                "pgd_steps": 20, "apgd_steps": 20,
                                "apgd_targets": 3, "restarts": 1})
  out = robustness.run_attack(model, attack, images, labels, batch_size=100,
                              verbose=0)
  assert out["attacked"].mean() > 0.95
  assert out["linf"].max() <= EPS + 1e-6
  return out["robust"].mean()


def test_apgd_is_at_least_as_strong_as_pgd_with_the_same_budget(trained):
  images, labels = _pattern_data(200, 2)
  before = [v.numpy().copy() for v in trained.variables]
  pgd_20 = _accuracy(trained, "pgd", images, labels)
  apgd_ce = _accuracy(trained, "apgd_ce", images, labels)
  apgd_dlr = _accuracy(trained, "apgd_dlr", images, labels)
  apgd_t = _accuracy(trained, "apgd_t", images, labels)
  assert pgd_20 < 0.8 and apgd_dlr < 0.8
  # APGD-T runs DLR's budget once per target; three targets break more.
  assert apgd_t <= apgd_dlr + 0.01
  # The same 20 gradient steps; 0.01 is two images of noise.
  assert apgd_ce <= pgd_20 + 0.01
  for b, a in zip(before, trained.variables):
    np.testing.assert_array_equal(a.numpy(), b)


def test_apgd_attack_interface():
  attack = attacks.build("apgd_dlr", {"epsilon": EPS, "apgd_steps": 7,
                                      "apgd_targets": 9, "restarts": 3})
  assert isinstance(attack, apgd.APGD) and attack.kind == "white_box"
  assert attack.spec == apgd.APGDSpec(EPS, 7, "dlr")
  assert attack.settings() == {"steps": 7, "restarts": 3, "loss": "dlr",
                               "momentum": 0.75, "rho": 0.75,
                               "initial_step": 2.0}
  targeted = attacks.build("apgd_t", {"epsilon": EPS, "apgd_steps": 7,
                                      "apgd_targets": 4, "restarts": 1})
  assert targeted.spec == apgd.APGDSpec(EPS, 7, "dlr_targeted",
                                        target_classes=4)
  assert targeted.settings()["target_classes"] == 4
