"""L-infinity attacks built from composable specs, run inside the graph.

An ``AttackSpec`` names the parts of an iterative attack: where it starts, the
loss it ascends, the step rule (the sign of the gradient times ``step_size``),
the projection (onto the ``epsilon`` ball around the clean image and onto
[0, 1]), the number of steps, and the BatchNorm mode of the model while it
runs. ``perturb`` runs any spec as a ``tf.while_loop`` so it lives in the same
``tf.function`` as the update that consumes its output.

Random starts are drawn per example from stateless seeds that the input
pipeline carries with each example, so an example's start does not depend on
how a batch is split across replicas, and a resumed run repeats it exactly.
"""

import dataclasses

import numpy as np
import tensorflow as tf

from rlfat_tf.attacks import base
from rlfat_tf.attacks import losses

BN_MODES = ("train", "eval")
STARTS = ("uniform", "normal", "none")


@dataclasses.dataclass(frozen=True)
class AttackSpec:
  """An L-infinity sign-gradient attack.

  Attributes:
    epsilon: radius of the L-infinity ball, in [0, 1] pixel units.
    step_size: size of each signed-gradient step.
    steps: number of steps.
    loss: key of ``losses.LOSSES``.
    start: "uniform" (U[-eps, eps] per pixel), "normal" (``start_scale`` times
      N(0, 1), the TRADES start) or "none" (the clean image).
    bn_mode: "train" runs the model with batch statistics and updates the
      BatchNorm moving averages at every step, as the official RLFAT code does;
      "eval" uses and keeps the moving averages.
    start_scale: standard deviation of the "normal" start.
  """
  epsilon: float
  step_size: float
  steps: int
  loss: str
  start: str
  bn_mode: str
  start_scale: float = 0.001

  def __post_init__(self):
    if self.loss not in losses.LOSSES:
      raise ValueError(f"unknown attack loss {self.loss!r}")
    if self.start not in STARTS:
      raise ValueError(f"unknown attack start {self.start!r}")
    if self.bn_mode not in BN_MODES:
      raise ValueError(f"unknown BatchNorm mode {self.bn_mode!r}")

  def record(self):
    """The spec as results files record it (JSON values).

    ``start_scale`` only when the start reads it.
    """
    out = dataclasses.asdict(self)
    if self.start != "normal":
      del out["start_scale"]
    return out


def pgd(epsilon, step_size, steps, bn_mode):
  """PGD on cross-entropy with a uniform random start (Madry et al.)."""
  return AttackSpec(epsilon, step_size, steps, loss="ce", start="uniform",
                    bn_mode=bn_mode)


def trades_kl(epsilon, step_size, steps, bn_mode):
  """The TRADES inner maximisation of KL(p(x) || p(x'))."""
  return AttackSpec(epsilon, step_size, steps, loss="kl", start="normal",
                    bn_mode=bn_mode)


def cw(epsilon, step_size, steps, bn_mode="eval"):
  """PGD on the CW margin with confidence 50 and a uniform random start.

  The attack of the official evaluation (``pgd_attack_test.py`` with
  ``loss_func: "cw"``), but with the true class masked correctly (see
  ``cw_margin``), which makes it stronger than the official one.
  """
  return AttackSpec(epsilon, step_size, steps, loss="cw", start="uniform",
                    bn_mode=bn_mode)


def restart_seeds(seeds, restart):
  """Per-example seeds of one restart of an attack.

  Restart 0 keeps the seeds as given, so a single-restart attack draws the
  same start as ``perturb`` called directly; restart r > 0 folds r into each
  example's seed, which gives every restart an independent start.

  Args:
    seeds: int64 [B, 2] per-example seeds.
    restart: scalar int, the restart index.

  Returns:
    int64 [B, 2] seeds.
  """
  restart = tf.cast(restart, tf.int32)
  folded = tf.map_fn(
      lambda s: tf.cast(
          tf.random.experimental.stateless_fold_in(s, restart), tf.int64),
      seeds, fn_output_signature=tf.int64)
  return tf.where(restart > 0, folded, seeds)


# The streams of ``stream_seeds``; each folds its own constant first, so no
# stream's seeds equal a restart's (``restart_seeds``) or another stream's.
STAGE_STREAM = 0x5354  # the stages of a composite attack (AutoAttack)
TARGET_STREAM = 0x5447  # the targets of APGD-T


def stream_seeds(seeds, stream, index):
  """Per-example seeds of member ``index`` of a stream of random starts.

  Member 0 keeps the seeds as given; member i > 0 folds the stream's
  constant, then i, into each example's seed, so the members start
  independently of each other, of the restarts and of the other stream, as
  the reference's attacks, which draw each start afresh from one generator,
  do.

  Args:
    seeds: int64 [B, 2] per-example seeds.
    stream: ``STAGE_STREAM`` or ``TARGET_STREAM``.
    index: scalar int (Python or tensor), the member.

  Returns:
    int64 [B, 2] seeds.
  """
  index = tf.cast(index, tf.int32)

  def fold(s):
    s = tf.random.experimental.stateless_fold_in(s, stream)
    return tf.cast(tf.random.experimental.stateless_fold_in(s, index),
                   tf.int64)

  folded = tf.map_fn(fold, seeds, fn_output_signature=tf.int64)
  return tf.where(index > 0, folded, seeds)


def select(mask, a, b):
  """Per example, ``a`` where ``mask`` holds, else ``b``.

  Args:
    mask: bool [B].
    a, b: tensors of the same shape [B, ...].
  """
  mask = tf.reshape(mask, [-1] + [1] * (len(a.shape) - 1))
  return tf.where(mask, a, b)


def project(adv, images, epsilon):
  """Projects onto the epsilon ball around ``images`` and onto [0, 1]."""
  adv = tf.clip_by_value(adv, images - epsilon, images + epsilon)
  return tf.clip_by_value(adv, 0.0, 1.0)


def _per_example_noise(draw, images, seeds):
  """``draw(shape, seed)`` for each example's seed, [B, H, W, C]."""
  shape = tf.shape(images)[1:]
  return tf.map_fn(lambda s: draw(shape, s), seeds,
                   fn_output_signature=images.dtype)


def uniform_start(images, seeds, epsilon):
  """Per example, a uniform draw from the epsilon ball, projected on [0, 1].

  Args:
    images: [B, H, W, C] clean images in [0, 1].
    seeds: int [B, 2] stateless seeds, one per example.
    epsilon: radius of the L-infinity ball.

  Returns:
    [B, H, W, C] starting points.
  """
  noise = _per_example_noise(
      lambda shape, s: tf.random.stateless_uniform(
          shape, s, -epsilon, epsilon, dtype=images.dtype), images, seeds)
  return project(images + noise, images, epsilon)


def sphere_start(images, seeds, radius):
  """Per example, x + radius * t / max|t|, t ~ U[-1, 1) per pixel, in [0, 1].

  A random point with a pixel at L-infinity distance exactly ``radius``
  (before the clip to [0, 1]): the sign-normalised start of the reference
  APGD and FAB (fra31/auto-attack).

  Args:
    images: [B, H, W, C] clean images in [0, 1].
    seeds: int [B, 2] stateless seeds, one per example.
    radius: the L-infinity distance of the start.

  Returns:
    [B, H, W, C] starting points.
  """

  def draw(shape, seed):
    t = tf.random.stateless_uniform(shape, seed, -1.0, 1.0, images.dtype)
    return t / (tf.reduce_max(tf.abs(t)) + 1e-12)

  direction = _per_example_noise(draw, images, seeds)
  return tf.clip_by_value(images + radius * direction, 0.0, 1.0)


def random_start(spec, images, seeds):
  """The starting point of an attack, drawn per example.

  Args:
    spec: an ``AttackSpec``.
    images: [B, H, W, C] clean images in [0, 1].
    seeds: int [B, 2] stateless seeds, one per example.

  Returns:
    Projected starting points, [B, H, W, C].
  """
  if spec.start == "none":
    return images
  if spec.start == "uniform":
    return uniform_start(images, seeds, spec.epsilon)
  noise = _per_example_noise(
      lambda shape, s: spec.start_scale * tf.random.stateless_normal(
          shape, s, dtype=images.dtype), images, seeds)
  return project(images + noise, images, spec.epsilon)


def perturb(model, spec, images, labels, seeds, unroll=False):
  """Runs an attack and returns adversarial examples.

  Args:
    model: a Keras model mapping images to logits.
    spec: an ``AttackSpec``.
    images: [B, H, W, C] clean images in [0, 1].
    labels: int [B] true labels.
    seeds: int [B, 2] per-example seeds for the random start.
    unroll: write the steps out one after another instead of running them in
      a ``tf.while_loop``; same result. For the places that cannot take the
      loop (see ``trainer.Trainer``): XLA on CPUs and cross-replica
      BatchNorm updates.

  Returns:
    [B, H, W, C] adversarial examples within ``spec.epsilon`` of ``images``
    and inside [0, 1], with gradients stopped.
  """
  training = spec.bn_mode == "train"
  loss_fn = losses.LOSSES[spec.loss]
  images = tf.stop_gradient(images)
  clean_logits = None
  if spec.loss in losses.NEEDS_CLEAN_LOGITS:
    clean_logits = tf.stop_gradient(model(images, training=training))
  adv = random_start(spec, images, seeds)
  for _ in range(spec.steps) if unroll else tf.range(spec.steps):
    grad = input_gradient(model, loss_fn, adv, labels, clean_logits,
                          training)
    adv = project(adv + spec.step_size * tf.sign(grad), images, spec.epsilon)
  return tf.stop_gradient(adv)


def input_gradient(model, loss_fn, adv, labels, clean_logits, training):
  """The input gradient of an attack's loss, summed over the batch.

  Under a float16 model (``mixed_float16``) the backward pass runs in
  float16, whose smallest positive value is 6e-8: on a confident model the
  gradient of the loss at the logits is about as small, and most of the
  input gradient underflows to exactly zero, so ``sign`` stops the attack.
  There the gradient at the (float32) logits is rescaled before it enters
  the float16 layers, so that its largest entry is 1 (each example's own in
  BatchNorm eval mode, where an example's input gradient depends on its loss
  alone; the batch's in train mode, where batch statistics couple the
  examples and only a common factor keeps every sign). A positive factor
  leaves the sign of the gradient unchanged. Other models take the plain
  gradient of the summed loss.

  Args:
    model: a Keras model mapping images to float32 logits.
    loss_fn: a value of ``losses.LOSSES``.
    adv: [B, H, W, C] float32 points to differentiate at.
    labels: int [B] true labels.
    clean_logits: logits of the clean images, or None (see ``loss_fn``).
    training: the model's ``training`` argument (the BatchNorm mode).

  Returns:
    [B, H, W, C] float32 gradient, or a positive multiple of it.
  """
  if getattr(model, "compute_dtype", None) != "float16":
    with tf.GradientTape() as tape:
      tape.watch(adv)
      loss = tf.reduce_sum(loss_fn(model(adv, training=training), labels,
                                   clean_logits))
    return tape.gradient(loss, adv)
  with tf.GradientTape() as tape:
    tape.watch(adv)
    logits = model(adv, training=training)
  with tf.GradientTape() as logits_tape:
    logits_tape.watch(logits)
    loss = tf.reduce_sum(loss_fn(logits, labels, clean_logits))
  logits_grad = logits_tape.gradient(loss, logits)
  axis = None if training else list(range(1, len(logits_grad.shape)))
  largest = tf.reduce_max(tf.abs(logits_grad), axis=axis, keepdims=True)
  # A gradient at the logits below float32's smallest normal number (or
  # exactly zero) is left as it is: its reciprocal would overflow.
  tiny = np.finfo(logits_grad.dtype.as_numpy_dtype).tiny
  scale = tf.where(largest > tiny, 1.0 / tf.maximum(largest, tiny), 1.0)
  return tape.gradient(logits, adv, output_gradients=logits_grad * scale)


@dataclasses.dataclass(frozen=True, kw_only=True)
class PGD(base.Attack):
  """A sign-gradient evaluation attack (PGD, CW-margin PGD) with restarts.

  ``spec`` is an ``AttackSpec`` with BatchNorm in "eval" mode.
  """
  kind = "white_box"

  def __post_init__(self):
    super().__post_init__()
    if self.spec.bn_mode != "eval":
      raise ValueError("evaluation attacks must run with bn_mode='eval'")

  def settings(self):
    spec = self.spec
    out = {"steps": spec.steps, "step_size": spec.step_size,
           "restarts": self.restarts, "loss": spec.loss}
    if spec.loss == "cw":
      out["confidence"] = losses.CW_CONFIDENCE
    return out

  def run(self, model, images, labels, seeds):
    return perturb(model, self.spec, images, labels, seeds)


PGD_STEPS = base.Setting("pgd_steps", 20, "PGD steps.", lower_bound=1)
CW_STEPS = base.Setting("cw_steps", None, "CW-margin PGD steps (default: "
                        "--pgd_steps).", lower_bound=1)


def pgd_options(values):
  """``PGD`` fields of PGD on cross-entropy (see ``attacks.Registered``)."""
  return {"spec": pgd(values["epsilon"], values["step_size"],
                      values["pgd_steps"], "eval"),
          "restarts": values["restarts"]}


def cw_options(values):
  """``PGD`` fields of CW-margin PGD (see ``attacks.Registered``)."""
  steps = values["cw_steps"] or values["pgd_steps"]
  return {"spec": cw(values["epsilon"], values["step_size"], steps),
          "restarts": values["restarts"]}
