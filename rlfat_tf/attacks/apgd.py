"""Auto-PGD (APGD), L-infinity, after Croce & Hein (ICML 2020), Algorithm 1.

APGD is PGD without a step-size parameter. It starts with step 2 * epsilon,
adds momentum (alpha = 0.75) to the signed-gradient step, and at checkpoints
w_j (see ``checkpoints``) halves the step size of every example on which the
last stretch went badly, restarting that example from the best point found so
far. A stretch went badly when (1) the loss rose in fewer than a fraction rho
of its iterations, or (2) the step size was not halved at the previous
checkpoint and the best loss has not improved since. Step sizes and all this
bookkeeping are per example.

The whole attack on a batch is one ``tf.while_loop`` and the model always runs
in inference mode (``training=False``): evaluation attacks never touch the
BatchNorm statistics. Besides the highest-loss point the algorithm tracks,
the attack remembers the last iterate that was misclassified, and returns it
for every example it broke: with cross-entropy, the highest-loss point need not
be the misclassified one.
"""

import dataclasses
import fractions
import math

import numpy as np
import tensorflow as tf

from rlfat_tf.attacks import base
from rlfat_tf.attacks import losses
from rlfat_tf.attacks import pgd

LOSSES = ("ce", "dlr")


@dataclasses.dataclass(frozen=True)
class APGDSpec:
  """An untargeted L-infinity APGD attack.

  Attributes:
    epsilon: radius of the L-infinity ball, in [0, 1] pixel units.
    steps: iterations N; the attack evaluates the loss and its gradient at
      N + 1 points (the random start and N iterates).
    loss: "ce" (cross-entropy) or "dlr" (``losses.dlr_loss``).
    momentum: alpha, the weight of the new step against the previous one.
    rho: the fraction of loss increases below which a stretch between two
      checkpoints counts as failed.
    initial_step: the starting step size, in multiples of ``epsilon``.
  """
  epsilon: float
  steps: int = 100
  loss: str = "ce"
  momentum: float = 0.75
  rho: float = 0.75
  initial_step: float = 2.0

  def __post_init__(self):
    if self.loss not in LOSSES:
      raise ValueError(f"unknown APGD loss {self.loss!r}; use one of "
                       f"{LOSSES}")
    if self.steps < 1:
      raise ValueError(f"APGD needs at least one step, got {self.steps}")


def checkpoints(steps):
  """The iterations w_j at which APGD checks its progress.

  w_j = ceil(p_j * steps) with p_0 = 0, p_1 = 0.22 and
  p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06), for every p_j <= 1. The
  p_j are exact fractions: in floating point 0.22 + 0.19 + 0.16 exceeds 0.57
  and would move w_3 of a 100-step attack from 57 to 58.

  Args:
    steps: number of iterations N.

  Returns:
    The distinct w_j in increasing order, starting with w_0 = 0.
  """
  shrink, floor = fractions.Fraction(3, 100), fractions.Fraction(6, 100)
  prev, cur = fractions.Fraction(0), fractions.Fraction(22, 100)
  points = [prev]
  while cur <= 1:
    points.append(cur)
    prev, cur = cur, cur + max(cur - prev - shrink, floor)
  return tuple(sorted({math.ceil(p * steps) for p in points}))


def _schedule(steps):
  """Per-iteration tensors: is k a checkpoint, and the length of its stretch."""
  is_checkpoint = np.zeros(steps + 1, bool)
  stretch = np.ones(steps + 1, np.float32)
  marks = checkpoints(steps)
  for prev, cur in zip(marks, marks[1:]):
    is_checkpoint[cur] = True
    stretch[cur] = cur - prev
  return tf.constant(is_checkpoint), tf.constant(stretch)


def perturb(model, spec, images, labels, seeds):
  """Runs APGD and returns adversarial examples.

  Args:
    model: a Keras model mapping images to logits.
    spec: an ``APGDSpec``.
    images: [B, H, W, C] clean images in [0, 1].
    labels: int [B] true labels.
    seeds: int64 [B, 2] per-example seeds of the uniform random start.

  Returns:
    [B, H, W, C] adversarial examples within ``spec.epsilon`` of ``images``
    and inside [0, 1], gradients stopped: for each example the last
    misclassified iterate if there was one, otherwise the highest-loss point.
  """
  eps = spec.epsilon
  alpha = spec.momentum
  loss_fn = losses.LOSSES[spec.loss]
  images = tf.stop_gradient(images)
  is_checkpoint, stretch = _schedule(spec.steps)

  def evaluate(x):
    with tf.GradientTape() as tape:
      tape.watch(x)
      logits = model(x, training=False)
      loss = loss_fn(logits, labels, None)
      total = tf.reduce_sum(loss)
    grad = tape.gradient(total, x)
    wrong = tf.not_equal(tf.argmax(logits, -1, output_type=labels.dtype),
                         labels)
    return loss, grad, wrong

  def step(x, grad, eta):
    return pgd.project(x + eta[:, None, None, None] * tf.sign(grad),
                           images, eps)

  x0 = pgd.uniform_start(images, seeds, eps)
  eta = tf.fill(tf.shape(labels), tf.cast(spec.initial_step * eps,
                                          images.dtype))
  f0, g0, wrong0 = evaluate(x0)
  x1 = step(x0, g0, eta)
  f1, g1, wrong1 = evaluate(x1)
  better = f1 > f0
  x_max, f_max, g_max = (pgd.select(better, x1, x0), tf.maximum(f0, f1),
                         pgd.select(better, g1, g0))
  found = wrong0 | wrong1
  x_found = pgd.select(wrong1, x1, x0)
  # Increases of the loss counted since the last checkpoint (the stretch
  # w_{j-1} .. w_j - 1 of condition 1), whether the step was halved at the
  # last checkpoint, and the best loss then (condition 2).
  increases = tf.cast(better, tf.float32)
  halved_last = tf.zeros_like(found)
  f_max_last = f0
  x_prev, x_cur, f_cur, g_cur = x0, x1, f1, g1

  for k in tf.range(1, spec.steps):
    z = step(x_cur, g_cur, eta)
    x_next = pgd.project(
        x_cur + alpha * (z - x_cur) + (1.0 - alpha) * (x_cur - x_prev),
        images, eps)
    f_next, g_next, wrong = evaluate(x_next)
    x_found = pgd.select(wrong, x_next, x_found)
    found |= wrong
    rose = f_next > f_cur
    better = f_next > f_max
    x_max = pgd.select(better, x_next, x_max)
    g_max = pgd.select(better, g_next, g_max)
    f_max = tf.where(better, f_next, f_max)

    at_checkpoint = is_checkpoint[k]
    oscillating = increases < spec.rho * stretch[k]
    stalled = tf.logical_not(halved_last) & (f_max <= f_max_last)
    halve = at_checkpoint & (oscillating | stalled)
    eta = tf.where(halve, eta / 2.0, eta)
    x_next = pgd.select(halve, x_max, x_next)
    g_next = pgd.select(halve, g_max, g_next)
    f_next = tf.where(halve, f_max, f_next)
    halved_last = tf.where(at_checkpoint, halve, halved_last)
    f_max_last = tf.where(at_checkpoint, f_max, f_max_last)
    increases = tf.where(at_checkpoint, 0.0, increases) + tf.cast(
        rose, tf.float32)
    x_prev, x_cur, f_cur, g_cur = x_cur, x_next, f_next, g_next

  return tf.stop_gradient(pgd.select(found, x_found, x_max))


@dataclasses.dataclass(frozen=True, kw_only=True)
class APGD(base.Attack):
  """APGD as an evaluation attack; ``spec`` is an ``APGDSpec``."""
  kind = "white_box"

  def run(self, model, images, labels, seeds):
    return perturb(model, self.spec, images, labels, seeds)


STEPS = base.Setting("apgd_steps", APGDSpec.steps, "APGD iterations.",
                     lower_bound=1)


def options(loss):
  """The ``APGD`` fields builder of APGD on a loss (``attacks.Registered``)."""
  return lambda values: {
      "spec": APGDSpec(values["epsilon"], values["apgd_steps"], loss),
      "restarts": values["restarts"]}
