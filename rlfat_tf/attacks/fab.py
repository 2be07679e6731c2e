"""Targeted FAB (FAB-T), L-infinity, as standard AutoAttack runs it.

FAB, the fast adaptive boundary attack (Croce & Hein, ICML 2020, "Minimally
distorted adversarial examples with a fast adaptive boundary attack"), looks
for the adversarial example closest to the clean point. At each iterate it
linearises the difference of two logits, projects both the iterate and the
clean point onto the zero set of that linearisation inside the [0, 1] box (the
minimal L-infinity step, ``projection_linf``), takes a convex combination of
the two projections biased towards the clean point, overshoots by ``eta``, and
after every adversarial iterate steps back towards the clean point by
``beta``. The targeted version linearises logit(target) - logit(true) for a
fixed target class; standard AutoAttack runs it for the 2nd, 3rd, ... 10th
most likely class of the clean point, in that order, on the points no earlier
target broke.

This follows fra31/auto-attack (commit a392200): ``autoattack/fab_base.py``
(``FABAttack.attack_single_run``, ``FABAttack.perturb``), ``fab_pt.py``
(``get_diff_logits_grads_batch_targeted``) and ``fab_projections.py``
(``projection_linf``); comments cite them as file:line. Standard AutoAttack
(``autoattack.py:306-318``) sets n_restarts=1, n_iter=100 and
n_target_classes=9 and keeps FAB's defaults alpha_max=0.1, eta=1.05,
beta=0.9; its epsilon is the evaluation radius.

As the reference, each target (and restart) runs only on the points still
robust, gathered into a smaller batch, and is skipped when none is left. The
model runs in inference mode (``training=False``), where an example's logits
do not depend on the rest of its batch. One difference in form, not in
result: random starts draw from per-example stateless seeds instead of one
global generator.
"""

import dataclasses
import math

import numpy as np
import tensorflow as tf

from rlfat_tf import errors
from rlfat_tf.attacks import base
from rlfat_tf.attacks import pgd

# fab_base.py:126: the "no adversarial example yet" norm.
_NO_ADV = 1e10


@dataclasses.dataclass(frozen=True)
class FABSpec:
  """A targeted L-infinity FAB attack (FAB-T).

  Attributes:
    epsilon: L-infinity radius; an adversarial example counts only if it lies
      within it (fab_base.py:319), and it scales the random start.
    steps: iterations per target and restart (n_iter).
    target_classes: how many targets: the 2nd to (target_classes + 1)-th most
      likely classes of the clean point (n_target_classes); the model needs at
      least target_classes + 1 classes.
    restarts: runs per target; run 0 starts at the clean point, later runs at
      a random point (n_restarts; standard AutoAttack uses 1).
    alpha_max: the largest weight of the clean point's projection.
    eta: overshoot factor of the projection step.
    beta: factor of the step back towards the clean point after an
      adversarial iterate.
  """
  epsilon: float
  steps: int = 100
  target_classes: int = 9
  restarts: int = 1
  alpha_max: float = 0.1
  eta: float = 1.05
  beta: float = 0.9

  def __post_init__(self):
    if not self.epsilon > 0:
      raise ValueError(f"FAB needs a positive epsilon, got {self.epsilon}")
    for name in ("steps", "target_classes", "restarts"):
      if getattr(self, name) < 1:
        raise ValueError(f"FAB needs {name} >= 1, got {getattr(self, name)}")
    if not 0 <= self.alpha_max <= 1:
      raise ValueError(f"FAB alpha_max must lie in [0, 1], got "
                       f"{self.alpha_max}")
    if not 0 < self.beta < 1:
      raise ValueError(f"FAB beta must lie in (0, 1), got {self.beta}")
    if not self.eta >= 1:
      raise ValueError(f"FAB eta (overshoot) must be >= 1, got {self.eta}")


STEPS = base.Setting("fab_steps", FABSpec.steps, "FAB-T iterations per "
                     "target.", lower_bound=1)
TARGETS = base.Setting("fab_targets", FABSpec.target_classes, "Target "
                       "classes of FAB-T (the model needs more classes).",
                       lower_bound=1)


def _argsort_rows(p):
  """NumPy: per row of p >= 0, the indices of the stable ascending sort.

  The float bits of p >= 0 order as integers, so each key packs p's bits
  (the sign bit dropped, so that -0.0 counts as 0) above the column index:
  the keys are distinct, and in increasing order they give p in increasing
  order, ties by increasing index, as ``tf.argsort(p, stable=True)``.
  """
  shift = max(p.shape[1] - 1, 1).bit_length()
  bits = p.view(np.int32).astype(np.int64) & 0x7FFFFFFF
  keys = np.sort((bits << shift) | np.arange(p.shape[1]), axis=1)
  return (keys & ((1 << shift) - 1)).astype(np.int32)


def sorted_sums(p, w, d):
  """The sort of ``projection_linf`` and its cumulative sums, in NumPy.

  They are most of the projection's cost, and most of a FAB iteration's
  beyond the model: TensorFlow's sort (a full top-k) is ten times slower on
  CPU than NumPy's vectorised one, XLA's slower still. NumPy gives the same
  order and, summing in the same order in float32, the same sums bit for
  bit.

  Args:
    p: float32 [N, D], the room to the box corner, no entry negative.
    w: float32 [N, D], the oriented normals.
    d: float32 [N, D], the full steps to the corner.

  Returns:
    ``indp``, int32 [N, D], the stable ascending order of p per row; and,
    over the coordinates in decreasing order of p (``indp`` reversed),
    float32 [N, D] each: the cumulative sums of |w| and of -w * d.
  """

  def sums(p, w, d):
    indp = _argsort_rows(p)
    down = indp[:, ::-1]
    ws = np.take_along_axis(w, down, axis=1)
    bs2 = -ws * np.take_along_axis(d, down, axis=1)
    return (indp, np.cumsum(np.abs(ws), axis=1, dtype=np.float32),
            np.cumsum(bs2, axis=1, dtype=np.float32))

  indp, s, sb = tf.numpy_function(sums, [p, w, d],
                                  (tf.int32, tf.float32, tf.float32),
                                  stateful=False)
  return tuple(tf.ensure_shape(t, p.shape) for t in (indp, s, sb))


def projection_linf(points, w, b):
  """Minimal L-infinity steps onto a hyperplane inside the [0, 1] box.

  For each row solves min ||d||_inf subject to w . (t + d) = b and
  0 <= t + d <= 1, step by step as fab_projections.py:7-59. Orient the
  hyperplane so that w . t >= b; moving coordinate i by lam towards its corner
  a_i (0 where w_i > 0, 1 where w_i < 0) lowers w . t by |w_i| min(lam, p_i),
  with p_i = |a_i - t_i| the room left in the box. The optimum moves every
  coordinate by the same lam, capped at p_i. With the coordinates sorted by p
  in decreasing order, the change reached at lam = p_(j) with the first j + 1
  coordinates still free is sb_j - s_j p_(j); a binary search finds the
  interval of the sorted p that holds the optimal lam, which then solves a
  linear equation. If the hyperplane cannot be reached inside the box, every
  coordinate goes to its corner.

  Args:
    points: [N, D] points t inside [0, 1].
    w: [N, D] hyperplane normals.
    b: [N] hyperplane offsets.

  Returns:
    [N, D] steps d; zero where w is zero.
  """
  t = points
  dim = w.shape[1]
  # fab_projections.py:11-13: orient each hyperplane so that w . t - b >= 0.
  sign = tf.where(tf.reduce_sum(w * t, 1) - b >= 0, 1.0, -1.0)
  w = w * sign[:, None]
  b = b * sign
  # :15-18: the corner that lowers w . x most, the full step to it, and the
  # room p to it.
  a = tf.cast(w < 0, t.dtype)
  nonzero = tf.cast(tf.not_equal(w, 0), t.dtype)
  d = (a - t) * nonzero
  p = a - t * (2 * a - 1)
  # :21-22: b becomes the change of w . x needed (<= 0), b0 the change at the
  # corner (the most negative reachable).
  b = b - tf.reduce_sum(w * t, 1)
  b0 = tf.reduce_sum(w * d, 1)
  # :19-20, 24-29: sort by p; cumulative sums over the coordinates in
  # decreasing order of p.
  indp, s, sb = sorted_sums(p, w, d)
  sb = sb + b0[:, None]
  # :31-33: c_l: the optimum caps no coordinate; c2: it caps some and the
  # hyperplane is reachable; neither: unreachable, go to the corner.
  b2 = sb[:, -1] - s[:, -1] * tf.gather(p, indp[:, 0], batch_dims=1)
  c_l = b - b2 > 0
  c2 = (b - b0 > 0) & tf.logical_not(c_l)
  # :34-48: binary search, on every row (only c2 rows use the result).
  lb = tf.zeros_like(b, tf.int32)
  ub = tf.fill(tf.shape(lb), dim - 1)
  for _ in range(math.ceil(math.log2(dim))):
    mid = (lb + ub) // 2
    indcurr = tf.gather(indp, dim - 1 - mid, batch_dims=1)
    b2 = (tf.gather(sb, mid, batch_dims=1) -
          tf.gather(s, mid, batch_dims=1) *
          tf.gather(p, indcurr, batch_dims=1))
    c = b - b2 > 0
    lb = tf.where(c, mid, lb)
    ub = tf.where(c, ub, mid)
  # :52-54: no coordinate capped, lam = -b / ||w||_1. Rows not selected may
  # divide by zero; their values are discarded.
  lmbd_l = tf.maximum((b - sb[:, -1]) / -s[:, -1], 0.0)[:, None]
  d_l = (2 * a - 1) * lmbd_l
  # :56-57: the first lb + 1 coordinates (largest p) move by lam, the rest
  # go to their corners.
  lmbd_2 = tf.maximum((b - tf.gather(sb, lb, batch_dims=1)) /
                      -tf.gather(s, lb, batch_dims=1), 0.0)[:, None]
  d_2 = tf.minimum(lmbd_2, d) * a + tf.maximum(-lmbd_2, d) * (1 - a)
  d = tf.where(c_l[:, None], d_l, tf.where(c2[:, None], d_2, d))
  return d * nonzero


def _linf(x):
  """Per-example L-infinity norm of [B, ...]."""
  return tf.reduce_max(tf.abs(tf.reshape(x, [tf.shape(x)[0], -1])), 1)


def random_start(images, epsilon, seeds):
  """FAB's random start: a uniform direction at L-infinity norm epsilon / 2.

  fab_base.py:130-139,161: t ~ U[-1, 1]^D, x + min(res2, eps) t / ||t||_inf
  / 2, clipped to [0, 1]; res2 is still 1e10 at the start, so the radius is
  epsilon / 2.

  Args:
    images: [B, H, W, C] clean images in [0, 1].
    epsilon: the attack's radius.
    seeds: int64 [B, 2] per-example seeds.

  Returns:
    [B, H, W, C] starting points.
  """
  return pgd.sphere_start(images, seeds, 0.5 * epsilon)


def _predict(model, x):
  """Labels predicted in inference mode."""
  return tf.argmax(model(x, training=False), -1, output_type=tf.int32)


def _single_run(model, spec, images, labels, targets, start):
  """One FAB-T run towards ``targets`` (fab_base.py:83-263).

  Args:
    model: Keras model mapping images to logits.
    spec: a ``FABSpec``.
    images: [B, H, W, C] clean images.
    labels: int32 [B] true labels.
    targets: int32 [B] target classes.
    start: [B, H, W, C] first iterate.

  Returns:
    [B, H, W, C]: per example the adversarial iterate of smallest norm, or the
    clean image if no iterate was adversarial (fab_base.py:253-263).
  """
  batch = tf.shape(images)[0]
  shape = tf.shape(images)
  # A static size, so that projection_linf knows its binary search length.
  dim = math.prod(images.shape[1:])
  x0 = tf.reshape(images, [-1, dim])
  rows = tf.range(batch)
  true_idx = tf.stack([rows, labels], 1)
  target_idx = tf.stack([rows, targets], 1)

  def body(i, x1, adv, res2):
    # fab_pt.py:100-114: the target-minus-true logit and its gradient; with
    # one target the choice of the closest hyperplane (fab_base.py:171-185)
    # has a single candidate.
    with tf.GradientTape() as tape:
      tape.watch(x1)
      logits = tf.cast(model(x1, training=False), tf.float32)
      df = (tf.gather_nd(logits, target_idx) -
            tf.gather_nd(logits, true_idx))
      total = tf.reduce_sum(df)
    w = tf.reshape(tf.cast(tape.gradient(total, x1), tf.float32), [-1, dim])
    # fab_base.py:186-188: the linearisation's zero set {z : w . z = b}.
    b = -df + tf.reduce_sum(w * tf.reshape(x1, [-1, dim]), 1)
    # :191-206: project the iterate and the clean point in one call.
    d3 = projection_linf(tf.concat([tf.reshape(x1, [-1, dim]), x0], 0),
                         tf.concat([w, w], 0), tf.concat([b, b], 0))
    d1, d2 = (tf.reshape(d, shape) for d in tf.split(d3, 2))
    # :208-224: weight of the clean point's projection, a1 / (a1 + a2) capped
    # at alpha_max.
    a0 = tf.maximum(tf.reduce_max(tf.abs(d3), 1), 1e-8)
    a1, a2 = tf.split(a0, 2)
    alpha = tf.minimum(tf.maximum(a1 / (a1 + a2), 0.0), spec.alpha_max)
    alpha = tf.reshape(alpha, [-1] + [1] * (len(images.shape) - 1))
    # :225-226: the overshooting convex combination, clipped to the box.
    x1 = tf.clip_by_value(
        (x1 + spec.eta * d1) * (1 - alpha) + (images + d2 * spec.eta) * alpha,
        0.0, 1.0)
    # :228-249: success is any wrong label; keep the smallest-norm
    # adversarial iterate, then step every adversarial iterate back.
    is_adv = tf.not_equal(_predict(model, x1), labels)
    norm = _linf(x1 - images)
    better = is_adv & (norm < res2)
    adv = pgd.select(better, x1, adv)
    res2 = tf.where(better, norm, res2)
    x1 = pgd.select(is_adv, images + (x1 - images) * spec.beta, x1)
    return i + 1, x1, adv, res2

  _, _, adv, res2 = tf.while_loop(
      lambda i, *_: i < spec.steps, body,
      (tf.constant(0), start, images, tf.fill([batch], _NO_ADV)))
  return pgd.select(res2 < _NO_ADV, adv, images)


def perturb(model, spec, images, labels, seeds):
  """Runs FAB-T and returns adversarial examples (fab_base.py:265-329).

  For k = 2, ..., target_classes + 1 in order, and each restart, attacks the
  examples still robust towards their k-th most likely class on the clean
  image; an example counts as broken when the run's result is misclassified
  and within ``spec.epsilon`` (fab_base.py:312-323), and is not attacked
  again. Call it inside a ``tf.function``: the targets are one loop, and
  each target's restarts one ``tf.while_loop`` each.

  Args:
    model: a Keras model mapping images to logits (called with
      ``training=False``).
    spec: a ``FABSpec``.
    images: [B, H, W, C] clean images in [0, 1].
    labels: int [B] true labels.
    seeds: int64 [B, 2] per-example seeds of the random starts of restarts
      after the first (unused with ``spec.restarts == 1``).

  Returns:
    float32 [B, H, W, C], gradients stopped: for each broken example FAB's
    smallest-norm misclassified point of the first successful target (within
    epsilon, in [0, 1]); the clean image for every other example, including
    those misclassified already.

  Raises:
    errors.UserError: the model has fewer than ``spec.target_classes + 1``
      classes.
  """
  images = tf.stop_gradient(tf.cast(images, tf.float32))
  labels = tf.cast(labels, tf.int32)
  logits = tf.cast(model(images, training=False), tf.float32)
  classes = logits.shape[-1]
  if classes is not None and classes < spec.target_classes + 1:
    raise errors.UserError(
        f"FAB-T with {spec.target_classes} target classes needs at least "
        f"{spec.target_classes + 1} classes, the model has {classes}; lower "
        f"target_classes (--{TARGETS.flag})")
  # fab_base.py:270: only correctly classified points are attacked.
  robust = tf.equal(tf.argmax(logits, -1, output_type=tf.int32), labels)
  # fab_base.py:113: the target is the k-th largest clean logit.
  ranked = tf.math.top_k(logits, spec.target_classes + 1).indices
  adv = images
  for k in tf.range(spec.target_classes):
    for restart in range(spec.restarts):

      def attack(adv, robust, k=k, restart=restart):
        todo = tf.where(robust)[:, 0]
        pick = lambda t: tf.gather(t, todo)
        clean, true = pick(images), pick(labels)
        # fab_base.py:305-310: restart 0 starts at the clean point.
        if restart == 0:
          start = clean
        else:
          run = k * spec.restarts + restart
          start = random_start(clean, spec.epsilon,
                               pick(pgd.restart_seeds(seeds, run)))
        result = _single_run(model, spec, clean, true, pick(ranked[:, k + 1]),
                             start)
        # fab_base.py:312-323: broken only if misclassified within epsilon.
        broken = (tf.not_equal(_predict(model, result), true) &
                  (_linf(result - clean) <= spec.epsilon))
        rows = todo[:, None]
        return (tf.tensor_scatter_nd_update(
            adv, rows, pgd.select(broken, result, pick(adv))),
                tf.tensor_scatter_nd_update(robust, rows,
                                            tf.logical_not(broken)))

      # The model cannot run on an empty batch (convolutions fail on it).
      adv, robust = tf.cond(tf.reduce_any(robust),
                            lambda: attack(adv, robust),
                            lambda: (adv, robust))
  return tf.stop_gradient(adv)


@dataclasses.dataclass(frozen=True, kw_only=True)
class FAB(base.Attack):
  """FAB-T as an evaluation attack; ``spec`` is a ``FABSpec``.

  Its restarts are the spec's (run 0 starts at the clean point, which would
  make the evaluation's restarts of the whole attack repeat it), so the
  attack itself runs once.
  """
  kind = "white_box"

  def run(self, model, images, labels, seeds):
    return perturb(model, self.spec, images, labels, seeds)


def options(values):
  """``FAB`` fields from the evaluation values (``attacks.Registered``)."""
  return {"spec": FABSpec(values["epsilon"], values["fab_steps"],
                          values["fab_targets"], values["restarts"])}
