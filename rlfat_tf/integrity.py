"""Verdicts of the integrity checks: can a robustness number be trusted?

Each check returns ``{"passed": bool, "detail": one line}``, and each can
fail: its test breaks an attack or masks a model's gradients and sees it
fail. ``robustness.evaluate`` runs the attacks the checks need (the PGD sweeps
over epsilon, steps and restarts, and uniform noise) and passes their results
here; this module only judges them, apart from the input gradient of
``gradients_not_masked``, which it measures itself.

Comparisons of accuracies on the same images allow the slack of
``noise_tolerance``. A comparison of two runs with independent random starts
(``check_fresh_restarts``) allows a sign test's slack instead, since such
runs disagree on the images near their decision boundary.
"""

import math

import numpy as np
import tensorflow as tf

from rlfat_tf.attacks import losses

# Float32 slack allowed on the epsilon-ball and [0, 1] bounds.
BOUND_TOLERANCE = 1e-6
# Largest fraction of exactly-zero input-gradient entries of a healthy model.
# Measured on 200 CIFAR-10 test images: 0 of 614,400 entries for WRN-10-1
# and WRN-10-2 at initialisation and for WRN-10-2 after 1,950 PGDAT steps,
# and 0.005% for that model in mixed_float16 (float16 underflow). Its logits
# scaled by 100 (a saturated softmax) give 13.6%, by 1000 give 38.5%.
MAX_ZERO_GRADIENT_FRACTION = 0.01
# Standard deviations of the sign test of ``check_fresh_restarts``.
SIGN_TEST_SIGMAS = 3.0


def result(passed, detail):
  """A check's result."""
  return {"passed": bool(passed), "detail": detail}


def noise_tolerance(num_examples):
  """Slack of an accuracy comparison on the same images: 0.5%, >= 1 image."""
  return max(0.005, 1.0 / max(num_examples, 1))


def _trail(points):
  return ", ".join(f"{label} {value:.4f}" for label, value in points)


def check_logits(logits):
  """The model must output logits, not probabilities or log-probabilities."""
  logits = np.asarray(logits, np.float64)
  sums = logits.sum(axis=-1)
  probabilities = (logits.min() >= 0.0 and logits.max() <= 1.0 and
                   np.allclose(sums, 1.0, atol=1e-3))
  top = logits.max(axis=-1)
  log_sum_exp = top + np.log(np.exp(logits - top[:, None]).sum(axis=-1))
  log_probabilities = logits.max() <= 0.0 and np.allclose(log_sum_exp, 0.0,
                                                          atol=1e-3)
  if probabilities or log_probabilities:
    kind = "probabilities" if probabilities else "log-probabilities"
    return result(False, f"the model outputs {kind}, not logits: remove the "
                  f"final softmax, or the CE and CW losses saturate")
  return result(True, f"outputs are logits (range [{logits.min():.3g}, "
                f"{logits.max():.3g}], row sums not 1)")


def check_large_epsilon(accuracy, epsilon, tolerance=0.01):
  """An attack with a huge epsilon must drive accuracy to about zero."""
  return result(
      accuracy <= tolerance,
      f"PGD at eps={epsilon:g}: accuracy {accuracy:.4f} (must be <= "
      f"{tolerance:g}; more means the gradients do not lead anywhere)")


def check_epsilon_sweep(accuracies, mean_losses, num_examples):
  """A larger ball must lower accuracy and raise the loss PGD reaches.

  Accuracy may rise by no more than ``noise_tolerance`` from one radius to
  the next, and the mean cross-entropy of the adversarial examples of the
  images classified correctly must rise strictly from the clean images
  (radius 0) on. The second condition holds
  for any model with input gradients, robust or not, and fails for an attack
  that does not ascend the loss: one that minimises it (the loss falls below
  the clean loss) or returns the clean images (it stays equal).

  Args:
    accuracies: list of (radius label, accuracy), from "clean" on.
    mean_losses: the mean cross-entropy at the same radii over the images
      classified correctly, or None when there are none (the loss condition
      then has nothing to test).
    num_examples: images the sweep ran on.

  Returns:
    The check result.
  """
  tol = noise_tolerance(num_examples)
  labels = [label for label, _ in accuracies]
  values = [value for _, value in accuracies]
  rises = [i for i in range(1, len(values)) if values[i] > values[i - 1] + tol]
  if mean_losses is None:
    flat, losses_trail = [], "not measured (no image classified correctly)"
  else:
    flat = [i for i in range(1, len(mean_losses))
            if not mean_losses[i] > mean_losses[i - 1]]
    losses_trail = _trail(zip(labels, mean_losses))
  if rises:
    i = rises[0]
    return result(False, f"accuracy rose with epsilon ({_trail(accuracies)}; "
                  f"{labels[i]} beats {labels[i - 1]} by more than "
                  f"{tol:.4f})")
  if flat:
    i = flat[0]
    return result(False, f"the attack's cross-entropy did not rise from "
                  f"{labels[i - 1]} to {labels[i]} ({losses_trail}): it does "
                  f"not ascend the loss")
  return result(True, f"accuracy {_trail(accuracies)}; mean cross-entropy "
                f"of the correctly classified {losses_trail} on "
                f"{num_examples} images")


def check_more_steps(accuracies, num_examples):
  """More steps from the same starts must not raise accuracy beyond noise.

  Args:
    accuracies: list of (label, accuracy), from the fewest steps on.
    num_examples: images the accuracies are measured on.

  Returns:
    The check result.
  """
  tol = noise_tolerance(num_examples)
  worse = [(a, b) for a, b in zip(accuracies, accuracies[1:])
           if b[1] > a[1] + tol]
  if worse:
    (weak, _), (strong, _) = worse[0]
    return result(False, f"more steps raised accuracy ({_trail(accuracies)}; "
                  f"{strong} beats {weak} by more than {tol:.4f})")
  return result(True, f"accuracy does not rise with more steps: "
                f"{_trail(accuracies)} on {num_examples} images")


def check_beats_noise(pgd_accuracy, noise_accuracy, num_examples):
  """PGD must break clearly more images than uniform noise of its radius.

  It passes when PGD leaves no image, or when its accuracy is more than
  ``noise_tolerance`` below the noise's. It fails for an attack that does not
  ascend the loss and for a model whose gradients lead nowhere.

  Args:
    pgd_accuracy: accuracy under the evaluation's PGD.
    noise_accuracy: accuracy under one uniform draw from the same ball.
    num_examples: images both are measured on.

  Returns:
    The check result.
  """
  tol = noise_tolerance(num_examples)
  passed = pgd_accuracy == 0.0 or noise_accuracy - pgd_accuracy > tol
  return result(passed, f"accuracy under PGD {pgd_accuracy:.4f}, under "
                f"uniform noise of the same radius {noise_accuracy:.4f} on "
                f"{num_examples} images (PGD must be more than {tol:.4f} "
                f"lower, or 0)")


def check_fresh_restarts(base_robust, fresh_robust, restarts):
  """Restarts from fresh random starts must not raise accuracy beyond noise.

  The fresh run has one restart more than the base run and shares none of
  its seeds, so on a deterministic model it is at least as strong on
  average. The images the two runs disagree on are near the decision
  boundary; if the runs were equally strong, each would be the one that
  survives with probability 1/2. The check fails when the fresh run leaves
  more images than the base run by more than ``SIGN_TEST_SIGMAS`` standard
  deviations of that sign test (and more than ``noise_tolerance``): the base
  run's verdicts then belonged to its particular starts (starts degenerate
  for other seeds) or to a model whose predictions do not repeat.

  Args:
    base_robust: bool [N], survival of the base run.
    fresh_robust: bool [N], survival of the fresh run.
    restarts: the base run's restarts.

  Returns:
    The check result.
  """
  base = np.asarray(base_robust, bool)
  fresh = np.asarray(fresh_robust, bool)
  num = len(base)
  only_fresh = int(np.sum(fresh & ~base))
  only_base = int(np.sum(base & ~fresh))
  slack = max(noise_tolerance(num) * num,
              SIGN_TEST_SIGMAS * math.sqrt(only_fresh + only_base))
  gain = only_fresh - only_base
  detail = (f"accuracy with {restarts} restart(s) {np.mean(base):.4f}, with "
            f"{restarts + 1} fresh restarts {np.mean(fresh):.4f} on {num} "
            f"images; "
            f"{only_fresh} survive only the fresh run, {only_base} only the "
            f"base run (the difference may be at most {slack:.1f})")
  return result(gain <= slack, detail)


def zero_gradient_fraction(model, images, labels, batch_size):
  """The fraction of input-gradient entries that are exactly zero.

  The gradient is that of PGD's first step from the clean images: of the
  summed cross-entropy, with the model in inference mode, in the model's own
  precision. A zero entry is a pixel that the sign step does not move.

  Args:
    model: a Keras model mapping images to logits.
    images: float32 [N, H, W, C] images in [0, 1].
    labels: int [N] true labels.
    batch_size: images per compiled call.

  Returns:
    The fraction, a float.
  """

  @tf.function
  def zeros(x, y):
    with tf.GradientTape() as tape:
      tape.watch(x)
      loss = tf.reduce_sum(losses.cross_entropy(model(x, training=False), y))
    grad = tape.gradient(loss, x,
                         unconnected_gradients=tf.UnconnectedGradients.ZERO)
    return tf.reduce_sum(tf.cast(tf.equal(grad, 0.0), tf.int64))

  labels = np.asarray(labels, np.int32)
  count = 0
  for start in range(0, len(images), batch_size):
    count += int(zeros(tf.constant(images[start:start + batch_size],
                                   tf.float32),
                       tf.constant(labels[start:start + batch_size])))
  return count / max(np.asarray(images).size, 1)


def check_gradients(zero_fraction, num_examples):
  """Few entries of the input gradient may be exactly zero.

  Args:
    zero_fraction: from ``zero_gradient_fraction``.
    num_examples: images it was measured on.

  Returns:
    The check result.
  """
  limit = MAX_ZERO_GRADIENT_FRACTION
  if zero_fraction > limit:
    return result(False, f"{zero_fraction:.2%} of the input-gradient entries "
                  f"are exactly zero on {num_examples} clean images (at most "
                  f"{limit:.0%}): the gradients are masked (saturated "
                  f"softmax, a non-differentiable input stage, or float16 "
                  f"underflow), so gradient attacks overstate robustness")
  return result(True, f"{zero_fraction:.4%} of the input-gradient entries "
                f"are exactly zero on {num_examples} clean images (at most "
                f"{limit:.0%})")


def check_black_box(black_box):
  """No black-box attack may beat the white-box worst case on its images.

  A black-box attack that does beat it found adversarial examples that the
  gradients did not lead to: a sign of gradient masking. The slack is 1%, at
  least one image.

  Args:
    black_box: list of (display name, its accuracy, white-box worst-case
      accuracy on the same images, number of those images), one per
      black-box attack that ran.

  Returns:
    The check result.
  """
  parts, beaten = [], []
  for name, accuracy, white, num in black_box:
    tol = max(0.01, 1.0 / max(num, 1))
    parts.append(f"{name} {accuracy:.4f} vs {white:.4f} on {num} images")
    if accuracy < white - tol:
      beaten.append(f"{name} (by more than {tol:.4f})")
  trail = "; ".join(parts)
  if beaten:
    return result(False, f"black-box attacks beat the white-box worst case, "
                  f"a sign of gradient masking: {', '.join(beaten)} ({trail})")
  return result(True, f"no black-box attack beats the white-box worst case: "
                f"{trail}")


def check_bounds(stats, epsilon):
  """Every adversarial example is within epsilon of its image and in [0, 1].

  Args:
    stats: dict mapping attack names to dicts with NumPy arrays ``linf``,
      ``low`` and ``high`` over examples.
    epsilon: the radius all attacks were given.

  Returns:
    The check result.
  """
  bad = []
  parts = []
  for name, s in stats.items():
    if not len(s["linf"]):
      continue
    linf, low, high = (float(np.max(s["linf"])), float(np.min(s["low"])),
                       float(np.max(s["high"])))
    parts.append(f"{name} {linf:.6f}")
    if (linf > epsilon + BOUND_TOLERANCE or low < -BOUND_TOLERANCE or
        high > 1.0 + BOUND_TOLERANCE):
      bad.append(f"{name} (max |delta| {linf:.6f}, pixels in [{low:.6f}, "
                 f"{high:.6f}])")
  if bad:
    return result(False, f"adversarial examples out of bounds (eps "
                  f"{epsilon:g}, pixels [0, 1]): {'; '.join(bad)}")
  return result(True, f"every adversarial example within eps={epsilon:g} "
                f"and in [0, 1]; max |delta|: {', '.join(parts)}")


def snapshot_variables(model):
  """Copies of all model variables (weights and BatchNorm statistics)."""
  # Keras variables have a path; the tf.Variables of a SavedModel a name.
  return {getattr(v, "path", v.name): np.array(v.numpy(), copy=True)
          for v in model.variables}


def check_variables_unchanged(before, after):
  """Evaluation must leave every weight and BatchNorm statistic bit-exact."""
  changed = sorted(k for k in before
                   if k not in after or not np.array_equal(before[k], after[k]))
  if changed:
    return result(False, f"evaluation changed {len(changed)} model "
                  f"variables, e.g. {changed[0]} (an attack ran with "
                  f"training=True)")
  return result(True, f"all {len(before)} model variables (weights and "
                f"BatchNorm statistics) bit-identical after evaluation")
