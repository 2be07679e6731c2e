"""Auto-PGD (APGD) and its targeted variant APGD-T, L-infinity.

After Croce & Hein (ICML 2020), Algorithm 1, and step for step after their
reference implementation (fra31/auto-attack, ``autoattack/autopgd_base.py``,
``APGDAttack`` and ``APGDAttack_targeted``). APGD is PGD without a step-size
parameter. It starts from a random point at L-infinity distance epsilon,
steps 2 * epsilon, adds momentum (0.75, none on the first step) to the signed
gradient step, and at checkpoints (see ``checkpoints``) halves the step size of
every example on which the last stretch went badly, restarting that example
from the best point found so far. A stretch went badly when (1) the loss rose
in at most a fraction rho of its iterations, or (2) the step size was not
halved at the previous checkpoint and the best loss has not improved since
(never at the first checkpoint). Step sizes and all this bookkeeping are per
example.

APGD-T ascends the targeted DLR loss, once for each of the classes the clean
point ranks 2nd, 3rd, ..., and attacks only the examples that the earlier
targets have not broken.

Each attack run on a batch is one ``tf.while_loop`` and the model always runs
in inference mode (``training=False``): evaluation attacks never touch the
BatchNorm statistics. Besides the highest-loss point the algorithm tracks,
the attack keeps the first iterate that was misclassified, and returns it for
every example it broke: with cross-entropy, the highest-loss point need not
be the misclassified one. An example stops there: the reference iterates on
it to the end and returns the last misclassified iterate, but each example's
path depends on that example alone, so stopping it changes no other example's
path and no verdict, and the model runs only on the examples still unbroken.
"""

import dataclasses
from typing import NamedTuple

import numpy as np
import tensorflow as tf

from rlfat_tf import errors
from rlfat_tf.attacks import base
from rlfat_tf.attacks import losses
from rlfat_tf.attacks import pgd

LOSSES = ("ce", "dlr", "dlr_targeted")

# The checkpoint schedule of the reference, as fractions of the iterations N
# that it truncates to integers: the first stretch lasts 0.22 N iterations,
# each next one 0.03 N fewer, but never fewer than 0.06 N.
_FIRST_STRETCH = 0.22
_STRETCH_SHRINK = 0.03
_SHORTEST_STRETCH = 0.06


@dataclasses.dataclass(frozen=True)
class APGDSpec:
  """An L-infinity APGD attack: APGD-CE, APGD-DLR or APGD-T.

  Attributes:
    epsilon: radius of the L-infinity ball, in [0, 1] pixel units.
    steps: iterations N per run; a run evaluates the loss and its gradient at
      N + 1 points (the random start and N iterates).
    loss: "ce" (cross-entropy), "dlr" (``losses.dlr_loss``) or
      "dlr_targeted" (APGD-T: ``losses.dlr_targeted_loss``, one run per
      target class).
    momentum: alpha, the weight of the new step against the previous one.
    rho: a stretch between two checkpoints fails when the loss rose in at
      most this fraction of its iterations.
    initial_step: the starting step size, in multiples of ``epsilon``.
    target_classes: APGD-T only: how many target classes to try, the classes
      the clean point ranks 2nd, 3rd, ...; the model needs more classes than
      this.
  """
  epsilon: float
  steps: int = 100
  loss: str = "ce"
  momentum: float = 0.75
  rho: float = 0.75
  initial_step: float = 2.0
  target_classes: int = 9

  def __post_init__(self):
    if self.loss not in LOSSES:
      raise ValueError(f"unknown APGD loss {self.loss!r}; use one of "
                       f"{LOSSES}")
    if self.steps < 1:
      raise ValueError(f"APGD needs at least one step, got {self.steps}")
    if self.target_classes < 1:
      raise ValueError(f"APGD-T needs at least one target class, got "
                       f"{self.target_classes}")


def checkpoints(steps):
  """The iterations w_j after which APGD checks its progress.

  The reference's integer schedule: the first stretch lasts
  max(int(0.22 N), 1) iterations and each next one
  max(int(0.03 N), 1) fewer, but at least max(int(0.06 N), 1). For N = 100
  the checks follow iterates 22, 41, 57, 70, 80, 87, 93 and 99, the paper's
  w_j; for other N the truncation can differ from the paper's ceil(p_j N).

  Args:
    steps: number of iterations N.

  Returns:
    0, then the w_j <= N in increasing order.
  """
  stretch = max(int(_FIRST_STRETCH * steps), 1)
  shrink = max(int(_STRETCH_SHRINK * steps), 1)
  shortest = max(int(_SHORTEST_STRETCH * steps), 1)
  points = [0]
  while points[-1] + stretch <= steps:
    points.append(points[-1] + stretch)
    stretch = max(stretch - shrink, shortest)
  return tuple(points)


def schedule(steps):
  """Per iterate count i = 0..N: is i a checkpoint, and its stretch length.

  Args:
    steps: number of iterations N.

  Returns:
    bool [N + 1] and float32 [N + 1] tensors; the stretch of a checkpoint w_j
    is w_j - w_{j-1} (1 elsewhere).
  """
  is_checkpoint = np.zeros(steps + 1, bool)
  stretch = np.ones(steps + 1, np.float32)
  marks = checkpoints(steps)
  for prev, cur in zip(marks, marks[1:]):
    is_checkpoint[cur] = True
    stretch[cur] = cur - prev
  return tf.constant(is_checkpoint), tf.constant(stretch)


class Progress(NamedTuple):
  """Per-example bookkeeping of the step-size rule, all [B].

  Attributes:
    last: loss of the latest iterate; a restart from the best point does not
      replace it, so the next increase is counted against it (at the start,
      see ``start_progress``).
    best: the highest loss so far.
    increases: how often the loss rose since the last checkpoint.
    halved: whether the step was halved at the last checkpoint.
    best_then: ``best`` at the last checkpoint.
  """
  last: tf.Tensor
  best: tf.Tensor
  increases: tf.Tensor
  halved: tf.Tensor
  best_then: tf.Tensor


def start_progress(loss, steps):
  """The bookkeeping at the random start, whose loss is ``loss``.

  ``halved`` starts true, as the reference's ``reduced_last_check = 1``, so
  condition 2 cannot fire at the first checkpoint. The first iterate's loss
  is compared, as in the reference, with the slot of its loss history
  (``loss_steps``) that its oscillation check reads then: the zero-filled
  last row, not yet written, when there are several iterations, so it counts
  as an increase exactly when it is positive (always for cross-entropy, never
  for the targeted DLR loss of an unbroken example); with one iteration that
  row is the first iterate's own loss, never an increase. The paper compares
  it with the start's loss instead.

  Args:
    loss: [B] loss of the start.
    steps: the run's iterations N.
  """
  first_against = tf.zeros_like(loss) if steps > 1 else tf.fill(
      tf.shape(loss), tf.constant(np.inf, loss.dtype))
  return Progress(last=first_against, best=loss,
                  increases=tf.zeros_like(loss),
                  halved=tf.ones_like(loss, tf.bool), best_then=loss)


def advance(progress, loss, at_checkpoint, stretch, rho):
  """Books the loss of a new iterate; at a checkpoint, decides the halving.

  Args:
    progress: the ``Progress`` before this iterate.
    loss: [B] loss of the new iterate.
    at_checkpoint: scalar bool, whether this iterate ends a stretch.
    stretch: scalar float, the length of that stretch.
    rho: the rho of ``APGDSpec``.

  Returns:
    The new ``Progress`` and bool [B]: halve the step (always false away from
    a checkpoint).
  """
  increases = progress.increases + tf.cast(loss > progress.last, loss.dtype)
  best = tf.maximum(progress.best, loss)
  oscillating = increases <= rho * stretch
  stalled = tf.logical_not(progress.halved) & (best <= progress.best_then)
  halve = at_checkpoint & (oscillating | stalled)
  return Progress(
      last=loss, best=best,
      increases=tf.where(at_checkpoint, tf.zeros_like(increases), increases),
      halved=tf.where(at_checkpoint, halve, progress.halved),
      best_then=tf.where(at_checkpoint, best, progress.best_then)), halve


class _Iterating(NamedTuple):
  """The examples an APGD run still iterates on, and their state, all [A, ...].

  Attributes:
    rows: each example's row in the batch.
    images, labels, targets: its clean image, label and target class (the
      untargeted losses ignore the target).
    x_prev, x_cur, g_cur: the previous and current iterate and the gradient
      at the current one.
    x_max, g_max: the highest-loss point and the gradient there.
    eta: the step size.
    progress: the ``Progress`` of the step-size rule.
  """
  rows: tf.Tensor
  images: tf.Tensor
  labels: tf.Tensor
  targets: tf.Tensor
  x_prev: tf.Tensor
  x_cur: tf.Tensor
  g_cur: tf.Tensor
  x_max: tf.Tensor
  g_max: tf.Tensor
  eta: tf.Tensor
  progress: Progress


def _keep(state, keep):
  """The examples of ``state`` where ``keep`` holds.

  In a graph the result's batch size is unknown, so the loop that shrinks the
  state keeps one shape from its first iteration on.
  """
  return tf.nest.map_structure(lambda t: tf.boolean_mask(t, keep), state)


def _run(model, spec, images, labels, seeds, targets):
  """One APGD run from one random start.

  An example stops at its first misclassified iterate, which is its result:
  the reference iterates on it to the end and returns its last misclassified
  iterate instead, but every per-example quantity (iterate, gradient, step
  size, the step-size rule's bookkeeping) depends on that example alone, so
  the others follow the same path either way, and an example is broken in
  both or in neither. The model runs only on the examples not yet broken, and
  not at all once none is left.

  Args:
    model: a Keras model mapping images to logits.
    spec: an ``APGDSpec``.
    images: [B, H, W, C] clean images in [0, 1].
    labels: int [B] true labels.
    seeds: int [B, 2] per-example seeds of the start.
    targets: int [B] target classes for "dlr_targeted", else None.

  Returns:
    Per example, its first misclassified iterate if some iterate was
    misclassified, else the highest-loss point [B, H, W, C]; the highest
    loss up to that point [B]; and whether some iterate was misclassified
    [B].
  """
  eps = spec.epsilon
  loss_fn = (losses.dlr_targeted_loss if spec.loss == "dlr_targeted"
             else losses.LOSSES[spec.loss])
  if targets is None:
    targets = tf.zeros_like(labels)
  is_checkpoint, stretch = schedule(spec.steps)

  def evaluate(x, labels, targets):
    with tf.GradientTape() as tape:
      tape.watch(x)
      logits = model(x, training=False)
      loss = loss_fn(logits, labels, targets)
      total = tf.reduce_sum(loss)
    grad = tape.gradient(total, x)
    wrong = tf.not_equal(tf.argmax(logits, -1, output_type=labels.dtype),
                         labels)
    return loss, grad, wrong

  x0 = pgd.sphere_start(images, seeds, eps)
  f0, g0, found = evaluate(x0, labels, targets)
  adv, best = x0, f0
  eta = tf.fill(tf.shape(labels), tf.cast(spec.initial_step * eps,
                                          images.dtype))
  state = _keep(_Iterating(
      rows=tf.range(tf.shape(labels)[0]), images=images, labels=labels,
      targets=targets, x_prev=x0, x_cur=x0, g_cur=g0, x_max=x0, g_max=g0,
      eta=eta, progress=start_progress(f0, spec.steps)), tf.logical_not(found))

  for i in tf.range(spec.steps):
    # The model cannot run on an empty batch (convolutions fail on it).
    if tf.equal(tf.size(state.rows), 0):
      break
    # The first step has no momentum (the reference's a = 1 at i = 0).
    alpha = tf.where(i > 0, spec.momentum, 1.0)
    x_cur, x_prev = state.x_cur, state.x_prev
    z = pgd.project(
        x_cur + state.eta[:, None, None, None] * tf.sign(state.g_cur),
        state.images, eps)
    x_next = pgd.project(
        x_cur + alpha * (z - x_cur) + (1.0 - alpha) * (x_cur - x_prev),
        state.images, eps)
    f_next, g_next, wrong = evaluate(x_next, state.labels, state.targets)
    better = f_next > state.progress.best
    x_max = pgd.select(better, x_next, state.x_max)
    g_max = pgd.select(better, g_next, state.g_max)
    progress, halve = advance(state.progress, f_next, is_checkpoint[i + 1],
                              stretch[i + 1], spec.rho)
    rows = tf.boolean_mask(state.rows, wrong)[:, None]
    adv = tf.tensor_scatter_nd_update(adv, rows,
                                      tf.boolean_mask(x_next, wrong))
    best = tf.tensor_scatter_nd_update(best, rows,
                                       tf.boolean_mask(progress.best, wrong))
    found = tf.tensor_scatter_nd_update(found, rows,
                                        tf.ones_like(rows[:, 0], tf.bool))
    state = _keep(state._replace(
        x_prev=x_cur, x_cur=pgd.select(halve, x_max, x_next),
        g_cur=pgd.select(halve, g_max, g_next), x_max=x_max, g_max=g_max,
        eta=tf.where(halve, state.eta / 2.0, state.eta), progress=progress),
                  tf.logical_not(wrong))

  rows = state.rows[:, None]
  adv = tf.tensor_scatter_nd_update(adv, rows, state.x_max)
  best = tf.tensor_scatter_nd_update(best, rows, state.progress.best)
  return adv, best, found


def _targeted(model, spec, images, labels, seeds):
  """APGD-T: one run per target class, on the examples still unbroken."""
  logits = model(images, training=False)
  classes = logits.shape[-1]
  if classes < 4:
    raise errors.UserError(
        f"APGD-T's targeted DLR loss needs at least 4 classes, the model has "
        f"{classes}; use APGD-CE or APGD-DLR")
  if spec.target_classes >= classes:
    raise errors.UserError(
        f"APGD-T with {spec.target_classes} target classes needs more classes "
        f"than that, the model has {classes}; lower target_classes "
        f"(--{TARGETS.flag})")
  ranked = tf.cast(tf.argsort(logits, axis=-1, direction="DESCENDING"),
                   labels.dtype)
  broken = tf.not_equal(tf.argmax(logits, -1, output_type=labels.dtype),
                        labels)
  adv = images
  best = tf.fill(tf.shape(labels), tf.constant(-np.inf, logits.dtype))
  for j in tf.range(spec.target_classes):

    def attack(adv, best, broken):
      todo = tf.where(tf.logical_not(broken))
      pick = lambda t: tf.gather_nd(t, todo)
      x, f_max, found = _run(
          model, spec, pick(images), pick(labels),
          pick(pgd.stream_seeds(seeds, pgd.TARGET_STREAM, j)),
          pick(ranked[:, j + 1]))
      # Unbroken examples keep the highest-loss point over all targets.
      kept = pgd.select(found | (f_max > pick(best)), x, pick(adv))
      return (tf.tensor_scatter_nd_update(adv, todo, kept),
              tf.tensor_scatter_nd_update(best, todo,
                                          tf.maximum(f_max, pick(best))),
              tf.tensor_scatter_nd_update(broken, todo, found))

    # Skip the run once every example is broken: the model would see an
    # empty batch, on which convolutions return malformed shapes.
    adv, best, broken = tf.cond(
        tf.reduce_all(broken), lambda: (adv, best, broken),
        lambda: attack(adv, best, broken))
  return adv


def perturb(model, spec, images, labels, seeds):
  """Runs APGD (or APGD-T) and returns adversarial examples.

  Args:
    model: a Keras model mapping images to logits.
    spec: an ``APGDSpec``.
    images: [B, H, W, C] clean images in [0, 1].
    labels: int [B] true labels.
    seeds: int64 [B, 2] per-example seeds of the random start; APGD-T's
      j-th target uses ``pgd.stream_seeds(seeds, pgd.TARGET_STREAM, j)``,
      a fresh start for each target, as the reference draws.

  Returns:
    [B, H, W, C] adversarial examples within ``spec.epsilon`` of ``images``
    and inside [0, 1], gradients stopped: for each example the first
    misclassified iterate if there was one, otherwise the highest-loss point.
    APGD-T returns the clean image where the model already misclassifies it,
    else the first misclassified iterate of the target that broke it, else
    the highest-loss point over all targets.

  Raises:
    errors.UserError: APGD-T on a model with fewer than 4 classes, or with
      no more classes than ``spec.target_classes``.
  """
  images = tf.stop_gradient(images)
  if spec.loss == "dlr_targeted":
    return tf.stop_gradient(_targeted(model, spec, images, labels, seeds))
  adv, _, _ = _run(model, spec, images, labels, seeds, None)
  return tf.stop_gradient(adv)


@dataclasses.dataclass(frozen=True, kw_only=True)
class APGD(base.Attack):
  """APGD or APGD-T as an evaluation attack; ``spec`` is an ``APGDSpec``."""
  kind = "white_box"

  def settings(self):
    out = super().settings()
    if self.spec.loss != "dlr_targeted":
      del out["target_classes"]
    return out

  def run(self, model, images, labels, seeds):
    return perturb(model, self.spec, images, labels, seeds)


STEPS = base.Setting("apgd_steps", APGDSpec.steps, "APGD iterations (of "
                     "each target of APGD-T).", lower_bound=1)
TARGETS = base.Setting("apgd_targets", APGDSpec.target_classes, "Target "
                       "classes of APGD-T (the model needs more classes).",
                       lower_bound=1)


def options(loss):
  """The ``APGD`` fields builder of APGD on a loss (``attacks.Registered``)."""
  return lambda values: {
      "spec": APGDSpec(values["epsilon"], values["apgd_steps"], loss,
                       target_classes=values["apgd_targets"]),
      "restarts": values["restarts"]}
