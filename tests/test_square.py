"""Tests of the Square attack: its schedule and square sizes against hand
values, one candidate step and the initial stripes by hand, and the attack on
a linear model whose answer is known."""

import types

import keras
import numpy as np
import pytest
import tensorflow as tf

from rlfat_tf import attacks
from rlfat_tf.attacks import square

# Dyadic, as are all test images: every pixel value the attack can reach and
# every logit of the linear model are exact in float32, so no result hinges
# on the order in which a batched matmul sums.
EPS = 0.125
SHAPE = (4, 4, 3)
QUERIES = 200


def test_p_schedule_follows_the_reference():
  # AutoAttack's setting: no rescaling, so the bounds are raw iterations.
  hand = {0: 0.8, 10: 0.8, 11: 0.4, 50: 0.4, 51: 0.2, 200: 0.2, 201: 0.1,
          500: 0.1, 501: 0.05, 1000: 0.05, 1001: 0.025, 2000: 0.025,
          2001: 0.0125, 4000: 0.0125, 4001: 0.00625, 4999: 0.00625,
          6001: 0.003125, 8001: 0.0015625}
  for iteration, p in hand.items():
    assert square.p_selection(iteration, 0.8, 5000, False) == pytest.approx(
        p, rel=1e-12), iteration
  # Rescaled to 1000 queries, iteration i counts as int(10 i).
  rescaled = {1: 0.8, 2: 0.4, 5: 0.4, 6: 0.2, 20: 0.2, 21: 0.1, 999: 0.0015625}
  for iteration, p in rescaled.items():
    assert square.p_selection(iteration, 0.8, 1000, True) == pytest.approx(
        p, rel=1e-12), iteration


def test_square_size_rounds_and_stays_in_the_image():
  assert square.square_size(0.8, 32, 32, 3) == 29    # sqrt(819.2) = 28.6
  assert square.square_size(0.4, 32, 32, 3) == 20    # sqrt(409.6) = 20.2
  assert square.square_size(0.00625, 32, 32, 3) == 3   # sqrt(6.4) = 2.53
  assert square.square_size(0.8, 96, 96, 3) == 86    # sqrt(7372.8) = 85.9
  assert square.square_size(0.05, 8, 8, 3) == 2      # sqrt(3.2) = 1.79
  assert square.square_size(0.8 / 512, 8, 8, 3) == 1   # sqrt(0.1) rounds to 0
  assert square.square_size(0.8, 4, 16, 1) == 4      # 7, capped by the height
  spec = square.SquareSpec(EPS, queries=12)
  np.testing.assert_array_equal(square.square_sizes(spec, 8, 8, 3),
                                [7] * 11 + [5])     # sqrt(51.2), sqrt(25.6)


def test_bad_specs_are_rejected():
  with pytest.raises(ValueError, match="epsilon must be in"):
    square.SquareSpec(-0.1)
  with pytest.raises(ValueError, match="epsilon must be in"):
    square.SquareSpec(1.5)
  with pytest.raises(ValueError, match="at least one query"):
    square.SquareSpec(EPS, queries=0)
  with pytest.raises(ValueError, match="p_init must be in"):
    square.SquareSpec(EPS, p_init=0.0)
  with pytest.raises(ValueError, match="static image sizes"):
    tf.function(lambda x: square.initial_point(x, EPS, [[0, 0]])
               ).get_concrete_function(tf.TensorSpec([1, None, None, 3]))


def test_settings_are_standard_autoattack():
  attack = attacks.build("square", {**attacks.default_values(),
                                    "epsilon": 8 / 255, "restarts": 5})
  assert isinstance(attack, square.Square) and attack.kind == "black_box"
  assert attack.spec == square.SquareSpec(8 / 255)
  assert attack.settings() == {"queries": 5000, "p_init": 0.8,
                               "rescale_schedule": False, "restarts": 1}


def test_candidate_redraws_one_square():
  best = np.full((2, 8, 8, 3), 0.5, np.float32)
  best[1] = 0.95
  images = best.copy()
  # Corner (int(6 * 0.5), int(6 * 0.99)) = (3, 5); signs +, -, +.
  draws = np.array([[0.5, 0.99, 0.9, 0.1, 0.6]] * 2, np.float32)
  new = square.candidates(best, images, EPS, 2, draws).numpy()
  expected = best.copy()
  expected[0, 3:5, 5:7] = [0.625, 0.375, 0.625]
  expected[1, 3:5, 5:7] = [1.0, 0.825, 1.0]
  np.testing.assert_allclose(new, expected, atol=1e-7)


def test_candidate_corner_never_reaches_the_last_position():
  images = np.full((2, 8, 8, 1), 0.5, np.float32)
  almost_one = np.nextafter(np.float32(1), np.float32(0))
  draws = np.array([[almost_one, almost_one, 0.9]] * 2, np.float32)
  new = square.candidates(images, images, EPS, 2, draws).numpy()[0, :, :, 0]
  # int(6 * u) = 5 for the largest u below 1, as the reference's random_int.
  assert np.argwhere(new != 0.5).tolist() == [[5, 5], [5, 6], [6, 5], [6, 6]]
  whole = square.candidates(images, images, EPS, 8, draws).numpy()
  np.testing.assert_allclose(whole, 0.625, atol=1e-7)


def test_initial_point_is_vertical_stripes_of_eps():
  images = np.full((3, 6, 5, 3), 0.5, np.float32)
  images[2] = 0.97
  seeds = tf.constant([[4, 0], [4, 1], [4, 2]], tf.int64)
  start = square.initial_point(images, EPS, seeds).numpy()
  delta = start - images
  # One sign per image, column and channel, the same down each column.
  np.testing.assert_array_equal(delta, np.repeat(delta[:, :1], 6, axis=1))
  np.testing.assert_allclose(np.abs(delta[:2]), EPS, atol=1e-7)
  assert {np.sign(v) for v in delta[:2].ravel()} == {-1.0, 1.0}
  assert not np.array_equal(delta[0], delta[1])
  # Clipped to [0, 1]: 0.97 goes to 1 or 0.845.
  np.testing.assert_allclose(np.sort(np.unique(start[2])), [0.845, 1.0],
                             atol=1e-6)


def _linear_model():
  """Two classes with logits (0, w . (x - 0.5)), w in {-1, 1}^48.

  At x = 0.5 + d w the margin of class 1 is 48 d, and the lowest margin in
  the eps ball is 48 (d - eps): broken exactly when d <= eps. The bias
  -0.5 sum(w) is an integer, so dyadic inputs give exact logits.
  """
  inputs = keras.Input(SHAPE)
  w = np.random.default_rng(3).choice([-1.0, 1.0], size=(48, 1))
  logit = keras.layers.Dense(
      1, kernel_initializer=keras.initializers.Constant(w),
      bias_initializer=keras.initializers.Constant(-0.5 * w.sum()))(
          keras.layers.Flatten()(inputs))
  logits = keras.layers.Concatenate()([keras.ops.zeros_like(logit), logit])
  return keras.Model(inputs, logits), w.reshape(SHAPE).astype(np.float32)


@pytest.fixture(scope="module")
def linear():
  model, w = _linear_model()
  rng = np.random.default_rng(5)
  images = np.stack([
      0.5 + EPS / 4 * w,          # easy: margin 1.5, can reach -4.5
      0.5 + 2 * EPS * w,          # impossible: margin >= 6 in the ball
      0.5 + EPS / 2 * w,          # labelled 0, already misclassified
      rng.integers(0, 33, SHAPE) / 32,   # in [0, 1], pixels at the edges
  ]).astype(np.float32)
  random_label = int(np.sum(w * (images[3] - 0.5)) > 0)
  labels = np.array([1, 1, 0, random_label], np.int32)
  seeds = np.array([[7, i] for i in range(4)], np.int64)
  run = square.compiled(model, square.SquareSpec(EPS, QUERIES), SHAPE)
  adv, queries = run(images, labels, seeds)
  return types.SimpleNamespace(
      model=model, w=w, images=images, labels=labels, seeds=seeds, run=run,
      adv=adv.numpy(), queries=queries.numpy())


def _predict(model, x):
  return np.argmax(model(x, training=False).numpy(), -1)


def test_linear_model_gets_the_known_answer(linear):
  images, labels, adv, queries = (linear.images, linear.labels, linear.adv,
                                  linear.queries)
  predicted = _predict(linear.model, adv)
  assert predicted[0] != labels[0] and 1 <= queries[0] <= QUERIES
  np.testing.assert_array_equal(adv[1], images[1])
  assert queries[1] == QUERIES + 1
  np.testing.assert_array_equal(adv[2], images[2])
  assert queries[2] == 0
  assert np.max(np.abs(adv - images)) <= EPS + 1e-6
  assert adv.min() >= 0.0 and adv.max() <= 1.0


def _reference_run(logits_fn, image, label, start, sizes, draws):
  """The reference loop for one image, written out in numpy.

  autoattack/square.py: ``perturb`` (lines 577-605) around the L-infinity
  branch of ``attack_single_run`` (lines 233-303), with this image's draws.
  """
  def margin(x):
    z = logits_fn(x)
    return z[label] - np.max(np.delete(z, label))

  if np.argmax(logits_fn(image)) != label:
    return image, 0
  height, width, _ = image.shape
  best, best_margin, queries = start, margin(start), 1
  for size, u in zip(sizes, draws):
    if best_margin <= 0:
      break
    top = int(np.float32(height - size) * u[0])
    left = int(np.float32(width - size) * u[1])
    new = best.copy()
    new[top:top + size, left:left + size] += (
        np.float32(2 * EPS) * np.sign(2 * u[2:] - 1))
    new = np.clip(np.clip(new, image - np.float32(EPS),
                          image + np.float32(EPS)), 0, 1)
    new_margin = margin(new)
    if new_margin < best_margin or new_margin <= 0:
      best, best_margin = new, new_margin
    queries += 1
  return (best if np.argmax(logits_fn(best)) != label else image), queries


def test_attack_matches_the_reference_loop(linear):
  logits_fn = lambda x: np.array([0.0, np.sum(linear.w * (x - 0.5))])
  starts = square.initial_point(linear.images, EPS, linear.seeds).numpy()
  draws = square.loop_draws(linear.seeds, QUERIES, SHAPE[2]).numpy()
  sizes = square.square_sizes(square.SquareSpec(EPS, QUERIES), *SHAPE)
  for i, image in enumerate(linear.images):
    want, want_queries = _reference_run(logits_fn, image, linear.labels[i],
                                        starts[i], sizes, draws[i])
    np.testing.assert_array_equal(linear.adv[i], want)
    assert linear.queries[i] == want_queries


def test_image_stops_at_its_first_success(linear):
  images, labels, seeds = linear.images, linear.labels, linear.seeds
  used = int(linear.queries[0])
  # The success came at iteration used - 2 (the start is the first query):
  # a budget of used - 1 iterations ends the same way, one fewer fails.
  for budget, broken in ((used - 1, True), (used - 2, False)):
    run = square.compiled(linear.model, square.SquareSpec(EPS, budget),
                          SHAPE)
    adv_b, queries_b = run(images[:1], labels[:1], seeds[:1])
    if broken:
      np.testing.assert_array_equal(adv_b.numpy()[0], linear.adv[0])
      assert queries_b.numpy()[0] == used
    else:
      np.testing.assert_array_equal(adv_b.numpy()[0], images[0])
      assert queries_b.numpy()[0] == budget + 1


def test_results_repeat_and_ignore_batch_mates(linear):
  images, labels, seeds, run = (linear.images, linear.labels, linear.seeds,
                                linear.run)
  adv, queries = linear.adv, linear.queries
  again, again_queries = run(images, labels, seeds)
  np.testing.assert_array_equal(again.numpy(), adv)
  np.testing.assert_array_equal(again_queries.numpy(), queries)
  order = [3, 0]
  alone, alone_queries = run(images[order], labels[order], seeds[order])
  np.testing.assert_array_equal(alone.numpy(), adv[order])
  np.testing.assert_array_equal(alone_queries.numpy(), queries[order])
  other, _ = run(images[:1], labels[:1], np.array([[8, 0]], np.int64))
  assert not np.array_equal(other.numpy()[0], adv[0])


def test_zero_epsilon_breaks_nothing(linear):
  run = square.compiled(linear.model, square.SquareSpec(0.0, 20), SHAPE)
  adv, queries = run(linear.images, linear.labels, linear.seeds)
  np.testing.assert_array_equal(adv.numpy(), linear.images)
  np.testing.assert_array_equal(queries.numpy(), [21, 21, 0, 21])


@pytest.mark.parametrize("shape", [(96, 96, 3), (5, 9, 1)])
def test_any_image_size_stays_in_bounds(shape):
  inputs = keras.Input(shape)
  logits = keras.layers.Dense(
      3, kernel_initializer=keras.initializers.RandomNormal(seed=1))(
          keras.layers.Flatten()(inputs))
  model = keras.Model(inputs, logits)
  images = np.random.default_rng(2).uniform(size=(2, *shape)).astype(
      np.float32)
  labels = _predict(model, images).astype(np.int32)
  run = square.compiled(model, square.SquareSpec(0.05, 5), shape)
  adv, queries = run(images, labels, np.array([[1, 0], [1, 1]], np.int64))
  adv = adv.numpy()
  assert np.max(np.abs(adv - images)) <= 0.05 + 1e-6
  assert adv.min() >= 0.0 and adv.max() <= 1.0
  assert np.all((queries.numpy() >= 1) & (queries.numpy() <= 6))


def test_a_batch_with_nothing_to_attack_queries_nothing():
  # Convolutions fail on an empty batch, so the attack must not make one.
  inputs = keras.Input(SHAPE)
  hidden = keras.layers.BatchNormalization()(
      keras.layers.Conv2D(4, 3, padding="same")(inputs))
  logits = keras.layers.Dense(3)(keras.layers.Flatten()(hidden))
  model = keras.Model(inputs, logits)
  images = np.random.default_rng(4).uniform(size=(2, *SHAPE)).astype(
      np.float32)
  wrong = ((_predict(model, images) + 1) % 3).astype(np.int32)
  run = square.compiled(model, square.SquareSpec(EPS, 5), SHAPE)
  adv, queries = run(images, wrong, np.array([[1, 0], [1, 1]], np.int64))
  np.testing.assert_array_equal(adv.numpy(), images)
  np.testing.assert_array_equal(queries.numpy(), [0, 0])
