"""Square Attack (Andriushchenko et al., ECCV 2020), L-infinity, as AutoAttack.

Square is the score-based black-box member of standard AutoAttack: it uses
only the model's logits, so gradient masking does not fool it. This module
follows fra31/auto-attack at commit a392200, ``autoattack/square.py``
(``SquareAttack``, the ``norm='Linf'`` branch) with the settings that
``AutoAttack(version='standard')`` gives it (``autoattack/autoattack.py``
lines 42-43 and 320): 5000 queries, p_init = 0.8, one restart, the margin
loss, and no rescaling of the schedule (``resc_schedule=False``). Line
numbers below refer to ``autoattack/square.py`` at that commit.

The attack, per image the model classifies correctly:

- start at x + eps * s with s a random sign per column and channel
  (vertical stripes), clipped to [0, 1]; this costs the first query;
- at iteration i = 0 .. queries - 1 take the side length s_i of a square from
  the schedule of p (``p_selection``, ``square_size``), draw its top-left
  corner and one sign per channel, and set the square of the best point so
  far to x +- eps (the best point plus 2 eps times the sign, projected onto
  the ball and onto [0, 1]);
- keep the candidate when its margin z_y - max_{j != y} z_j is lower or not
  positive; stop the image at its first margin <= 0.

An image costs 1 + (iterations it took part in) queries; images the model
already misclassifies are not attacked and cost none. At the end, as the
reference does, an image keeps its best point only if the model misclassifies
it; otherwise the clean image is returned.

Without rescaling, the schedule's bounds are raw iterations: at 5000 queries
p goes down to p_init / 128 (after iteration 4000) and no further.

One difference, forced by per-example randomness: the reference draws one
corner and one set of channel signs per iteration for the whole batch; here
each image draws its own, from its own stateless seed, so an image's result
repeats exactly and does not depend on its batch mates (as far as the
model's logits for an image do not depend on the batch it is in: batched
kernels may round differently, and a near-tie of margins can then go the
other way). All of an image's draws are made before the loop, one row per
iteration (queries x (2 + C) floats per image, 100 KB at 5000 queries on
RGB).
"""

import dataclasses
import math

import numpy as np
import tensorflow as tf

from rlfat_tf.attacks import base
from rlfat_tf.attacks import losses
from rlfat_tf.attacks import pgd

# square.py lines 198-215: p is p_init / 2^k, where k counts the bounds below
# that the (possibly rescaled) iteration exceeds.
P_SCHEDULE_BOUNDS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)
# square.py line 196: the schedule is written for 10,000 queries.
P_SCHEDULE_QUERIES = 10000


@dataclasses.dataclass(frozen=True)
class SquareSpec:
  """An untargeted L-infinity Square attack (defaults: standard AutoAttack).

  Attributes:
    epsilon: radius of the L-infinity ball, in [0, 1] pixel units.
    queries: iterations after the initial point (``n_queries``); an image
      that survives them all cost queries + 1 model evaluations.
    p_init: the fraction of the image a square covers at the start.
    rescale_schedule: stretch the p schedule from 10,000 iterations to
      ``queries`` (``resc_schedule``; AutoAttack turns it off).
  """
  epsilon: float
  queries: int = 5000
  p_init: float = 0.8
  rescale_schedule: bool = False

  def __post_init__(self):
    if not 0.0 <= self.epsilon <= 1.0:
      raise ValueError(f"Square epsilon must be in [0, 1], got "
                       f"{self.epsilon}")
    if self.queries < 1:
      raise ValueError(f"Square needs at least one query, got "
                       f"{self.queries}")
    if not 0.0 < self.p_init <= 1.0:
      raise ValueError(f"Square p_init must be in (0, 1], got "
                       f"{self.p_init}")


def p_selection(iteration, p_init, queries, rescale_schedule):
  """The fraction p of the image that the square of an iteration covers.

  Args:
    iteration: the 0-based iteration of the loop.
    p_init: p at the start.
    queries: iterations of the attack (used only to rescale).
    rescale_schedule: map ``iteration`` to int(iteration / queries * 10000)
      first (square.py line 196).

  Returns:
    p_init halved once for each bound of ``P_SCHEDULE_BOUNDS`` that the
    iteration exceeds.
  """
  if rescale_schedule:
    iteration = int(iteration / queries * P_SCHEDULE_QUERIES)
  halvings = sum(iteration > bound for bound in P_SCHEDULE_BOUNDS)
  return p_init / 2**halvings


def square_size(p, height, width, channels):
  """Side length of a square covering a fraction p of the image.

  As square.py lines 225 and 255-256: round(sqrt(p * n_features / c)) with
  n_features = c * h * w, Python's round (halves to even), at least 1 and at
  most the shorter side.
  """
  n_features = channels * height * width
  size = max(int(round(math.sqrt(p * n_features / channels))), 1)
  return min(size, min(height, width))


def square_sizes(spec, height, width, channels):
  """int32 [spec.queries]: the square's side length at each iteration."""
  return np.array([
      square_size(p_selection(i, spec.p_init, spec.queries,
                              spec.rescale_schedule), height, width, channels)
      for i in range(spec.queries)], np.int32)


def _static_shape(images):
  shape = images.shape[1:]
  if not shape.is_fully_defined():
    raise ValueError(f"Square needs static image sizes, got {images.shape}")
  return shape.as_list()


def _split_seeds(seeds):
  """Per example, the seed of the initial stripes and that of the loop."""
  split = tf.map_fn(
      lambda s: tf.random.experimental.stateless_split(s, num=2), seeds,
      fn_output_signature=tf.int64)
  return split[:, 0], split[:, 1]


def _signs(uniform):
  """+-1 from uniform [0, 1) draws, as ``random_choice`` (lines 113-115)."""
  return tf.sign(2.0 * uniform - 1.0)


def initial_point(images, epsilon, seeds):
  """The vertical-stripes start of the attack (square.py lines 234-235).

  Args:
    images: [B, H, W, C] clean images in [0, 1].
    epsilon: the L-infinity radius.
    seeds: int64 [B, 2] per-example seeds (the same ones ``attack`` takes).

  Returns:
    [B, H, W, C]: x + eps * s, s one sign per image, column and channel and
    the same down each column, clipped to [0, 1].
  """
  images = tf.convert_to_tensor(images, tf.float32)
  _, width, channels = _static_shape(images)
  stripe_seeds, _ = _split_seeds(tf.convert_to_tensor(seeds, tf.int64))
  draws = tf.map_fn(
      lambda s: tf.random.stateless_uniform([1, width, channels], s),
      stripe_seeds, fn_output_signature=tf.float32)
  return tf.clip_by_value(images + epsilon * _signs(draws), 0.0, 1.0)


def loop_draws(seeds, queries, channels):
  """Each image's uniform [0, 1) draws for the loop, made up front.

  Args:
    seeds: int64 [B, 2] per-example seeds (the same ones ``attack`` takes).
    queries: iterations of the loop.
    channels: C, the number of image channels.

  Returns:
    float32 [B, queries, 2 + C]: row i holds iteration i's draws for
    ``candidates``. A stateless draw's first rows do not depend on how many
    rows are drawn, so a shorter attack makes the same first moves.
  """
  _, seeds = _split_seeds(tf.convert_to_tensor(seeds, tf.int64))
  return tf.map_fn(
      lambda s: tf.random.stateless_uniform([queries, 2 + channels], s),
      seeds, fn_output_signature=tf.float32)


def candidates(best, images, epsilon, size, draws):
  """One candidate per image: the best point with one square redrawn.

  As square.py lines 257-266: the top-left corner is
  (int((H - s) * u_0), int((W - s) * u_1)), which is uniform over
  0 .. H - s - 1 (the reference's ``random_int`` never picks H - s; with
  s = H the corner is 0), and the square gets best + 2 eps * sign(2 u_c - 1)
  in channel c, projected onto the ball and onto [0, 1].

  Args:
    best: [N, H, W, C] current best points.
    images: [N, H, W, C] clean images.
    epsilon: the L-infinity radius.
    size: scalar int, the side length s.
    draws: [N, 2 + C] uniform [0, 1) draws: u_0, u_1, then one per channel.

  Returns:
    [N, H, W, C] candidates.
  """
  images = tf.convert_to_tensor(images, tf.float32)
  draws = tf.convert_to_tensor(draws, tf.float32)
  height, width, _ = _static_shape(images)
  size = tf.cast(size, tf.int32)

  def window(length, u):
    # ``random_int``: low + (high - low) * rand, truncated (lines 117-119).
    start = tf.cast(tf.cast(length - size, tf.float32) * u, tf.int32)
    index = tf.range(length)[None, :]
    return (index >= start[:, None]) & (index < start[:, None] + size)

  inside = (window(height, draws[:, 0])[:, :, None, None] &
            window(width, draws[:, 1])[:, None, :, None])
  step = 2.0 * epsilon * _signs(draws[:, 2:])[:, None, None, :]
  delta = tf.where(inside, step, tf.zeros_like(step))
  return pgd.project(best + delta, images, epsilon)


def attack(model, spec, images, labels, seeds):
  """Runs the Square attack on a batch; one ``tf.while_loop``.

  Call it inside a ``tf.function`` (see ``compiled``). The model runs in
  inference mode (``training=False``).

  Args:
    model: a Keras model mapping images to logits.
    spec: a ``SquareSpec``.
    images: [B, H, W, C] clean images in [0, 1]; H, W and C static.
    labels: int [B] true labels.
    seeds: int64 [B, 2] per-example stateless seeds.

  Returns:
    ``(adversarial, queries)``: [B, H, W, C] images within ``spec.epsilon``
    of ``images`` and inside [0, 1], for each image the point that broke it
    if there is one and the clean image otherwise; int32 [B], the model
    evaluations the attack spent on each image (0 for an image the model
    already misclassifies, at most ``spec.queries + 1``).
  """
  images = tf.stop_gradient(tf.convert_to_tensor(images, tf.float32))
  labels = tf.cast(labels, tf.int32)
  seeds = tf.convert_to_tensor(seeds, tf.int64)
  height, width, channels = _static_shape(images)
  eps = tf.constant(spec.epsilon, tf.float32)
  sizes = tf.constant(square_sizes(spec, height, width, channels))
  draws = loop_draws(seeds, spec.queries, channels)

  def predict(x):
    return tf.cast(model(x, training=False), tf.float32)

  clean_logits = predict(images)
  # Only images the model gets right are attacked (square.py lines 578, 588).
  attacked = tf.equal(tf.argmax(clean_logits, -1, output_type=tf.int32),
                      labels)
  first = tf.where(attacked)[:, 0]
  start = tf.gather(initial_point(images, eps, seeds), first)
  best = tf.tensor_scatter_nd_update(images, first[:, None], start)
  # The margin loss z_y - max_{j != y} z_j (lines 76-78).
  clean_margin = losses.margin(clean_logits, labels)
  # Convolutions fail on an empty batch: skip the query when there is
  # nothing to attack (the loop below only runs while some image is active).
  margin = tf.cond(
      tf.size(first) > 0,
      lambda: tf.tensor_scatter_nd_update(
          clean_margin, first[:, None],
          losses.margin(predict(start), tf.gather(labels, first))),
      lambda: clean_margin)
  queries = tf.cast(attacked, tf.int32)

  def active(margin):
    # Images stop at their first margin <= 0 (lines 244, 279-280).
    return attacked & (margin > 0.0)

  def cond(i, best, margin, queries):
    del best, queries
    return (i < spec.queries) & tf.reduce_any(active(margin))

  def body(i, best, margin, queries):
    on = active(margin)
    index = tf.where(on)[:, 0]
    clean = tf.gather(images, index)
    best_on = tf.gather(best, index)
    margin_on = tf.gather(margin, index)
    rows = tf.stack([index, tf.fill(tf.shape(index), tf.cast(i, tf.int64))],
                    axis=1)
    new = candidates(best_on, clean, eps, sizes[i], tf.gather_nd(draws, rows))
    new_margin = losses.margin(predict(new), tf.gather(labels, index))
    # Lines 272-287: with the margin loss, keep the candidate if its margin
    # is lower or if it is misclassified.
    keep = (new_margin < margin_on) | (new_margin <= 0.0)
    best = tf.tensor_scatter_nd_update(
        best, index[:, None], pgd.select(keep, new, best_on))
    margin = tf.tensor_scatter_nd_update(
        margin, index[:, None], tf.where(keep, new_margin, margin_on))
    return i + 1, best, margin, queries + tf.cast(on, tf.int32)

  _, best, _, queries = tf.while_loop(
      cond, body, (tf.constant(0), best, margin, queries))
  # Lines 597-605: a point replaces the clean image only if it is
  # misclassified.
  wrong = tf.not_equal(tf.argmax(predict(best), -1, output_type=tf.int32),
                       labels)
  adversarial = pgd.select(attacked & wrong, best, images)
  return tf.stop_gradient(adversarial), queries


def perturb(model, spec, images, labels, seeds):
  """Runs the Square attack and returns only the adversarial images.

  Args and the first return value as ``attack``.
  """
  return attack(model, spec, images, labels, seeds)[0]


def compiled(model, spec, image_shape):
  """``attack`` as one ``tf.function`` over batches of any size.

  Args:
    model: a Keras model mapping images to logits.
    spec: a ``SquareSpec``.
    image_shape: (H, W, C) of the images.

  Returns:
    A function (images float32 [B, H, W, C], labels int32 [B], seeds int64
    [B, 2]) -> (adversarial, queries), traced once.
  """
  return tf.function(
      lambda images, labels, seeds: attack(model, spec, images, labels,
                                           seeds),
      input_signature=[tf.TensorSpec([None, *image_shape], tf.float32),
                       tf.TensorSpec([None], tf.int32),
                       tf.TensorSpec([None, 2], tf.int64)])


@dataclasses.dataclass(frozen=True, kw_only=True)
class Square(base.Attack):
  """The Square attack as an evaluation attack; ``spec`` is a ``SquareSpec``.

  One run of ``attack`` (AutoAttack's one restart) with the margin loss.
  """
  kind = "black_box"

  def run(self, model, images, labels, seeds):
    return perturb(model, self.spec, images, labels, seeds)


SETTINGS = (
    base.Setting("square_queries", SquareSpec.queries, "Square attack "
                 "queries per image.", lower_bound=1),
    base.Setting("square_p_init", SquareSpec.p_init, "Square attack: the "
                 "fraction of the image its first squares cover.",
                 type=float, lower_bound=0.0),
)


def options(values):
  """``Square`` fields from the evaluation values (``attacks.Registered``)."""
  return {"spec": SquareSpec(values["epsilon"], values["square_queries"],
                             values["square_p_init"])}
