"""Tests of the sign-gradient attacks (training attacks, PGD and CW)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from rlfat_tf import models
from rlfat_tf.attacks import losses
from rlfat_tf.attacks import pgd

EPS = 0.03


@pytest.fixture(scope="module")
def model():
  keras.utils.set_random_seed(0)
  return models.wide_resnet(10, 1, 10, (8, 8, 3))


@pytest.fixture(scope="module")
def batch():
  rng = np.random.RandomState(0)
  images = rng.rand(6, 8, 8, 3).astype(np.float32)
  images[0] = 0.0  # an all-black and an all-white image test the [0, 1] clip
  images[1] = 1.0
  labels = rng.randint(0, 10, 6).astype(np.int32)
  seeds = np.stack([np.full(6, 3), np.arange(6)], axis=1).astype(np.int64)
  return tf.constant(images), tf.constant(labels), tf.constant(seeds)


def _bn_stats(model):
  return [v.numpy().copy() for v in model.non_trainable_variables]


def test_projection_keeps_the_ball_and_the_pixel_range():
  x = tf.constant([[0.0, 0.5, 1.0, 0.02]])
  adv = pgd.project(tf.constant([[-0.5, 0.6, 1.5, 0.0]]), x, EPS)
  np.testing.assert_allclose(adv.numpy(), [[0.0, 0.53, 1.0, 0.0]], atol=1e-7)


@pytest.mark.parametrize("start", ["uniform", "normal"])
def test_random_start_is_per_example_and_independent_of_the_batch(batch,
                                                                  start):
  images, _, seeds = batch
  spec = pgd.AttackSpec(EPS, 0.01, 1, "ce", start, "eval")
  full = pgd.random_start(spec, images, seeds).numpy()
  part = pgd.random_start(spec, images[3:], seeds[3:]).numpy()
  np.testing.assert_array_equal(full[3:], part)
  assert not np.array_equal(full[3] - images[3], full[4] - images[4])
  delta = full[2:] - images.numpy()[2:]
  if start == "uniform":
    assert np.abs(delta).max() <= EPS + 1e-7
    assert np.abs(delta).mean() > EPS / 3  # spread over [-eps, eps]
  else:
    assert 0.0008 < delta.std() < 0.0012


def test_one_step_from_the_clean_image_is_fgsm(model, batch):
  images, labels, seeds = batch
  spec = pgd.AttackSpec(EPS, EPS, 1, "ce", "none", "eval")
  with tf.GradientTape() as tape:
    tape.watch(images)
    loss = tf.reduce_sum(losses.cross_entropy(
        model(images, training=False), labels))
  grad = tape.gradient(loss, images).numpy()
  expected = np.clip(images.numpy() + EPS * np.sign(grad), 0.0, 1.0)
  adv = pgd.perturb(model, spec, images, labels, seeds).numpy()
  np.testing.assert_allclose(adv, expected, atol=1e-7)


def test_pgd_stays_valid_and_raises_the_loss(model, batch):
  images, labels, seeds = batch
  spec = pgd.pgd(EPS, 0.0075, 10, "eval")
  adv = pgd.perturb(model, spec, images, labels, seeds)
  x, a = images.numpy(), adv.numpy()
  assert np.abs(a - x).max() <= EPS + 1e-6
  assert a.min() >= 0.0 and a.max() <= 1.0
  clean_loss = losses.cross_entropy(model(images, training=False), labels)
  adv_loss = losses.cross_entropy(model(adv, training=False), labels)
  assert np.all(adv_loss.numpy() >= clean_loss.numpy() - 1e-6)
  assert adv_loss.numpy().mean() > clean_loss.numpy().mean()


def test_trades_attack_raises_the_kl(model, batch):
  images, labels, seeds = batch
  spec = pgd.trades_kl(EPS, 0.0075, 5, "eval")
  adv = pgd.perturb(model, spec, images, labels, seeds)
  clean = model(images, training=False)
  kl = losses.kl_divergence(clean, model(adv, training=False)).numpy()
  start = pgd.random_start(spec, images, seeds)
  kl_start = losses.kl_divergence(clean,
                                      model(start, training=False)).numpy()
  assert kl.mean() > 10 * kl_start.mean()
  assert np.abs(adv.numpy() - images.numpy()).max() <= EPS + 1e-6


def test_graph_and_eager_attacks_agree(model, batch):
  images, labels, seeds = batch
  spec = pgd.pgd(EPS, 0.0075, 3, "eval")
  eager = pgd.perturb(model, spec, images, labels, seeds)
  graph = tf.function(
      lambda x, y, s: pgd.perturb(model, spec, x, y, s))(images, labels,
                                                             seeds)
  np.testing.assert_allclose(graph.numpy(), eager.numpy(), atol=1e-6)


def test_eval_bn_mode_leaves_moving_statistics_untouched(model, batch):
  images, labels, seeds = batch
  before = _bn_stats(model)
  for loss in ("ce", "kl"):
    spec = pgd.AttackSpec(EPS, 0.0075, 3, loss, "uniform", "eval")
    tf.function(lambda: pgd.perturb(model, spec, images, labels, seeds))()
  for b, a in zip(before, _bn_stats(model)):
    np.testing.assert_array_equal(a, b)


def test_train_bn_mode_updates_moving_statistics_every_step(batch):
  images, labels, seeds = batch
  model = models.wide_resnet(10, 1, 10, (8, 8, 3))
  mean = model.get_layer("stage1_unit0_pre_bn").moving_mean
  spec = pgd.pgd(EPS, 0.0075, 3, "train")
  pgd.perturb(model, spec, images, labels, seeds)
  after_three = mean.numpy().copy()
  # Each forward pass in train mode moves the average 10% of the way to the
  # batch mean, so three passes from zero reach (1 - 0.9^3) of it. The attack
  # inputs are within 0.03 of the clean images, whose BN input mean is used.
  conv_mean = model.get_layer("init_conv")(images).numpy().mean(axis=(0, 1, 2))
  assert not np.allclose(after_three, 0.0)
  np.testing.assert_allclose(after_three, (1 - 0.9**3) * conv_mean,
                             rtol=0.05, atol=1e-3)


def test_bad_specs_are_rejected():
  with pytest.raises(ValueError):
    pgd.AttackSpec(EPS, 0.01, 1, "hinge", "uniform", "eval")
  with pytest.raises(ValueError):
    pgd.AttackSpec(EPS, 0.01, 1, "ce", "uniform", "inference")


def test_cw_spec_is_the_official_cw_pgd_in_eval_mode():
  spec = pgd.cw(EPS, 0.0075, 20)
  assert (spec.loss, spec.start, spec.bn_mode, spec.steps) == (
      "cw", "uniform", "eval", 20)


def test_restart_seeds_keep_restart_zero_and_fork_the_others(batch):
  _, _, seeds = batch
  np.testing.assert_array_equal(pgd.restart_seeds(seeds, 0), seeds)
  one = pgd.restart_seeds(seeds, 1).numpy()
  two = pgd.restart_seeds(seeds, 2).numpy()
  assert one.dtype == np.int64 and one.shape == seeds.shape
  every = np.concatenate([seeds.numpy(), one, two])
  assert len({tuple(s) for s in every}) == 18
  # A restart's seed depends only on the example's own seed.
  np.testing.assert_array_equal(pgd.restart_seeds(seeds[2:4], 1), one[2:4])


def test_cw_attack_masks_the_true_class_when_other_logits_are_negative():
  # Linear logits (3 - 8 m, -1.5 + 4 m, -2) of the image mean m. At m = 0.25
  # both other logits are negative (-0.5, -2); the correctly masked margin
  # pushes m up by the full 0.2 and the image lands in class 1.
  inputs = keras.Input((2, 2, 1))
  mean = keras.layers.GlobalAveragePooling2D()(inputs)
  logits = keras.layers.Dense(3, kernel_initializer=keras.initializers.Constant(
      [[-8.0, 4.0, 0.0]]), bias_initializer=keras.initializers.Constant(
          [3.0, -1.5, -2.0]))(mean)
  linear = keras.Model(inputs, logits)
  images = tf.fill([1, 2, 2, 1], 0.25)
  labels = tf.constant([0])
  spec = pgd.AttackSpec(0.2, 0.05, 4, "cw", "none", "eval")
  adv = pgd.perturb(linear, spec, images, labels,
                        tf.constant([[0, 0]], tf.int64))
  np.testing.assert_allclose(adv.numpy(), 0.45, atol=1e-6)
  assert int(tf.argmax(linear(adv), -1)[0]) == 1


@pytest.mark.parametrize("spec", [
    pgd.pgd(0.03, 0.01, 3, "eval"),
    pgd.trades_kl(0.03, 0.01, 3, "train"),
])
def test_unrolled_steps_compute_what_the_loop_computes(spec):
  model = models.wide_resnet(10, 1, 10, (8, 8, 3))
  images = tf.random.stateless_uniform([4, 8, 8, 3], [1, 2])
  labels = tf.constant([0, 3, 5, 9])
  seeds = tf.constant([[1, 2], [3, 4], [5, 6], [7, 8]], tf.int64)
  unrolled = tf.function(
      lambda *a: pgd.perturb(*a, unroll=True))(model, spec, images,
                                                   labels, seeds)
  looped = tf.function(pgd.perturb)(model, spec, images, labels, seeds)
  assert float(tf.reduce_max(tf.abs(looped - images))) > 0.0
  np.testing.assert_allclose(unrolled.numpy(), looped.numpy(), rtol=0,
                             atol=1e-7)


def test_select_picks_whole_examples():
  a = tf.reshape(tf.range(12.0), [3, 2, 2])
  b = -a
  got = pgd.select(tf.constant([True, False, True]), a, b).numpy()
  np.testing.assert_array_equal(got[0], a[0].numpy())
  np.testing.assert_array_equal(got[1], -a[1].numpy())
  np.testing.assert_array_equal(got[2], a[2].numpy())


def test_uniform_start_takes_epsilon_directly(batch):
  images, _, seeds = batch
  spec = pgd.AttackSpec(EPS, 0.01, 1, "ce", "uniform", "eval")
  np.testing.assert_array_equal(pgd.uniform_start(images, seeds, EPS),
                                pgd.random_start(spec, images, seeds))


def test_pgd_attack_interface(model, batch):
  images, labels, seeds = batch
  attack = pgd.PGD(name="pgd", display_name="PGD",
                   spec=pgd.pgd(EPS, 0.0075, 3, "eval"), restarts=2)
  assert attack.kind == "white_box"
  assert attack.settings() == {"steps": 3, "step_size": 0.0075,
                               "restarts": 2, "loss": "ce"}
  np.testing.assert_array_equal(
      attack.run(model, images, labels, seeds),
      pgd.perturb(model, attack.spec, images, labels, seeds))
  cw = pgd.PGD(name="cw", display_name="CW", spec=pgd.cw(EPS, 0.0075, 3))
  assert cw.settings()["confidence"] == 50


def test_evaluation_attacks_must_keep_batchnorm_in_eval_mode():
  with pytest.raises(ValueError, match="bn_mode='eval'"):
    pgd.PGD(name="pgd", display_name="PGD",
            spec=pgd.pgd(EPS, 0.0075, 3, "train"))
  with pytest.raises(ValueError, match="restarts"):
    pgd.PGD(name="pgd", display_name="PGD",
            spec=pgd.pgd(EPS, 0.0075, 3, "eval"), restarts=0)


def _reference_perturb(model, spec, images, labels, seeds):
  """The attack as plain code: sign steps on the summed loss's gradient."""
  training = spec.bn_mode == "train"
  loss_fn = losses.LOSSES[spec.loss]
  clean = model(images, training=training) if spec.loss == "kl" else None
  adv = pgd.random_start(spec, images, seeds)
  for _ in range(spec.steps):
    with tf.GradientTape() as tape:
      tape.watch(adv)
      loss = tf.reduce_sum(loss_fn(model(adv, training=training), labels,
                                   clean))
    adv = pgd.project(adv + spec.step_size * tf.sign(tape.gradient(loss, adv)),
                      images, spec.epsilon)
  return adv


@pytest.mark.parametrize("loss", ["ce", "kl"])
def test_float32_attack_is_the_plain_sign_gradient_bit_for_bit(model, batch,
                                                               loss):
  images, labels, seeds = batch
  spec = pgd.AttackSpec(EPS, 0.0075, 3, loss, "uniform", "eval")
  np.testing.assert_array_equal(
      pgd.perturb(model, spec, images, labels, seeds),
      _reference_perturb(model, spec, images, labels, seeds))


def _confident_float16_model(factor=60.0, training=False):
  """A float16 WRN-10-1, its float32 twin, and images it is sure about.

  The logits layer's kernel is scaled by ``factor``; 40 drives the mean
  cross-entropy of its eval-mode predictions to about 2e-7, 60 below float32's
  resolution of it. At 40, how much of the unscaled float16 gradient
  underflows depends on the CPU's float16 kernels (over half of the pixels
  where this test was written, 47 % on a CPU with AVX512-FP16, which failed
  the test); at 60 all of it does.
  In train mode BatchNorm standardises each batch, which takes a larger
  factor.
  """
  twins = []
  for policy in ("mixed_float16", "float32"):
    keras.config.set_dtype_policy(policy)
    try:
      keras.utils.set_random_seed(0)
      twins.append(models.wide_resnet(10, 1, 10, (8, 8, 3)))
    finally:
      keras.config.set_dtype_policy("float32")
  half, full = twins
  kernel = half.get_layer("logits").kernel
  kernel.assign(kernel * factor)
  full.set_weights(half.get_weights())
  images = tf.random.stateless_uniform([16, 8, 8, 3], [1, 2])
  labels = tf.argmax(half(images, training=training), -1,
                     output_type=tf.int32)
  return half, full, images, labels


def _zero_fraction(x):
  return float(tf.reduce_mean(tf.cast(tf.equal(x, 0.0), tf.float32)))


def test_float16_input_gradients_keep_their_sign_on_a_confident_model():
  half, full, images, labels = _confident_float16_model()
  assert half.compute_dtype == "float16"
  assert float(tf.reduce_mean(losses.cross_entropy(
      half(images, training=False), labels))) < 1e-5
  ce = losses.LOSSES["ce"]
  with tf.GradientTape() as tape:
    tape.watch(images)
    loss = tf.reduce_sum(ce(half(images, training=False), labels, None))
  # The unscaled float16 backward pass loses most of the gradient.
  assert _zero_fraction(tape.gradient(loss, images)) > 0.5
  grad = pgd.input_gradient(half, ce, images, labels, None, False)
  exact = pgd.input_gradient(full, ce, images, labels, None, False)
  assert _zero_fraction(grad) < 0.01
  assert np.mean(np.sign(grad) == np.sign(exact)) > 0.9
  # One FGSM step moves nearly every pixel (only those the [0, 1] clip
  # holds stay).
  spec = pgd.AttackSpec(EPS, EPS, 1, "ce", "none", "eval")
  adv = pgd.perturb(half, spec, images, labels, tf.zeros([16, 2], tf.int64))
  assert _zero_fraction(adv - images) < 0.01


def test_float16_train_mode_gradient_scales_the_whole_batch_alike():
  half, _, images, labels = _confident_float16_model(3200.0, training=True)
  ce = losses.LOSSES["ce"]
  grad = pgd.input_gradient(half, ce, images, labels, None, True)
  with tf.GradientTape() as tape:
    tape.watch(images)
    loss = tf.reduce_sum(ce(half(images, training=True), labels, None))
  assert _zero_fraction(tape.gradient(loss, images)) > 0.5
  assert _zero_fraction(grad) < 0.01
  # Batch statistics couple the examples, so only one factor for the whole
  # batch keeps every sign: the gradient of the summed loss, times 1 / the
  # largest entry of its gradient at the logits.
  with tf.GradientTape() as tape:
    tape.watch(images)
    logits = half(images, training=True)
  with tf.GradientTape() as inner:
    inner.watch(logits)
    loss = tf.reduce_sum(ce(logits, labels, None))
  logits_grad = inner.gradient(loss, logits)
  scale = 1.0 / tf.reduce_max(tf.abs(logits_grad))
  expected = tape.gradient(logits, images, output_gradients=logits_grad * scale)
  np.testing.assert_array_equal(grad, expected)
