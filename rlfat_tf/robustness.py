"""Robust accuracy of a classifier, and checks that the number can be trusted.

``evaluate`` runs registered attacks (``rlfat_tf.attacks``: PGD, CW-margin
PGD, APGD-CE, APGD-DLR, APGD-T, FAB-T, the black-box N and Square attacks,
and AutoAttack) over a set of images through their common interface, and
reports each attack's accuracy, the per-example worst case over the
white-box attacks (an example counts as robust only if it is classified
correctly and every white-box attack failed on it) and the overall worst
case over every attack that ran on the example. An attack of kind
"composite" (AutoAttack) runs its stages in turn and reports the accuracy
after each.

An example the model already misclassifies counts as broken by every attack
(its clean image lies in the ball), so no attack's accuracy exceeds the clean
accuracy, and no attack runs on it: each attack (each stage of a composite
one) runs only on the examples still robust, gathered into full batches, and
each of its restarts only on those no earlier restart broke.

Every attack runs with the model in inference mode and is compiled into one
``tf.function`` per batch, restarts included. With several restarts, each
example keeps the first adversarial example that broke it (or the last one
tried), and its final verdict is a fresh forward pass on that example.

The integrity checks catch the usual ways a robustness number is inflated;
each returns ``{"passed": bool, "detail": one line}``. ``evaluate`` runs:

- outputs_are_logits: the model does not end in a softmax (which saturates
  the CE and CW losses);
- zero_epsilon_gives_clean: PGD with epsilon 0 changes no prediction;
- large_epsilon_breaks_all: PGD with epsilon 0.5 leaves at most 1% accuracy
  (otherwise the gradients lead nowhere: masking or a broken attack);
- more_steps_no_gain: PGD with twice the steps from the same starts is not
  more accurate beyond noise;
- more_restarts_no_gain: one more restart does not raise accuracy; the runs
  share their first restarts, so this fails only when predictions are not
  repeatable (BatchNorm in training mode, a randomised model);
- black_box_not_stronger: no black-box attack beats the white-box worst case
  on the same images (a sign of gradient masking);
- perturbation_within_bounds: every adversarial example is within epsilon of
  its image and inside [0, 1].

The sweeps run on the first ``check_examples`` images. A caller adds
``check_variables_unchanged``, comparing snapshots of all model variables
taken around the whole evaluation.
"""

import dataclasses
import time

import keras
import numpy as np
import tensorflow as tf

from rlfat_tf import attacks
from rlfat_tf import data
from rlfat_tf.attacks import pgd

# Float32 slack allowed on the epsilon-ball and [0, 1] bounds.
BOUND_TOLERANCE = 1e-6


@dataclasses.dataclass(frozen=True)
class EvalConfig:
  """What ``evaluate`` runs.

  Attributes:
    attacks: names of registered attacks (``attacks.NAMES``) to run.
    epsilon: L-infinity radius of every attack.
    step_size: step of the sign-gradient attacks (PGD, CW).
    restarts: random restarts of every white-box attack (AutoAttack's
      components run once, as in its standard version).
    settings: values of attack settings (flag -> value, see
      ``attacks.settings``) that replace their defaults.
    checks: run the integrity checks.
    check_examples: images (the first ones) of the step, restart and
      epsilon sweeps of the checks.
    large_epsilon: the radius at which accuracy must collapse.
    batch_size: images per compiled call.
    seed: seed of every random start and random draw of the attacks.
  """
  attacks: tuple[str, ...] = attacks.DEFAULTS
  epsilon: float = 0.03
  step_size: float = 0.0075
  restarts: int = 1
  settings: dict = dataclasses.field(default_factory=dict)
  checks: bool = True
  check_examples: int = 500
  large_epsilon: float = 0.5
  batch_size: int = 100
  seed: int = 0

  def __post_init__(self):
    for name in self.attacks:
      attacks.get(name)
    unknown = set(self.settings) - set(attacks.default_values())
    if unknown:
      raise ValueError(f"unknown attack settings {sorted(unknown)}; choose "
                       f"from {sorted(attacks.default_values())}")

  def values(self, **changes):
    """The values attacks are built from (``attacks.build``), with changes."""
    return {**attacks.default_values(), **self.settings,
            "epsilon": self.epsilon, "step_size": self.step_size,
            "restarts": self.restarts, **changes}

  def build(self):
    """The configured attacks, in registry order."""
    values = self.values()
    return [attacks.build(name, values) for name in attacks.NAMES
            if name in self.attacks]


def _predictions(model, images, labels):
  return tf.argmax(model(images, training=False), -1, output_type=labels.dtype)


def attack_batch(model, attack, images, labels, seeds):
  """The worst case of an attack over its restarts, for one batch.

  Each restart runs only on the examples no earlier restart broke, gathered
  into a smaller batch, and not at all when none is left.

  Args:
    model: a Keras model mapping images to logits.
    attack: a ``attacks.base.Attack``.
    images: [B, H, W, C] clean images in [0, 1].
    labels: int [B] true labels.
    seeds: int64 [B, 2] per-example seeds; restart r uses
      ``pgd.restart_seeds(seeds, r)``.

  Returns:
    [B, H, W, C]: per example, the clean image if it is misclassified, else
    the first adversarial example that broke it, else that of the last
    restart.
  """
  broken = tf.not_equal(_predictions(model, images, labels), labels)
  best = images
  for restart in tf.range(attack.restarts):

    def run(best, broken, restart=restart):
      todo = tf.where(tf.logical_not(broken))[:, 0]
      pick = lambda t: tf.gather(t, todo)
      adv = attack.run(model, pick(images), pick(labels),
                       pgd.restart_seeds(pick(seeds), restart))
      wrong = tf.not_equal(_predictions(model, adv, pick(labels)),
                           pick(labels))
      rows = todo[:, None]
      return (tf.tensor_scatter_nd_update(best, rows, adv),
              tf.tensor_scatter_nd_update(broken, rows, wrong))

    # The model cannot run on an empty batch (convolutions fail on it).
    best, broken = tf.cond(tf.reduce_all(broken), lambda: (best, broken),
                           lambda: run(best, broken))
  return best


def _compiled(model, attack, image_shape):
  """One compiled call: attack a batch and score the result."""

  def run(images, labels, seeds):
    adv = attack_batch(model, attack, images, labels, seeds)
    return {"robust": tf.equal(_predictions(model, adv, labels), labels),
            "linf": tf.reduce_max(tf.abs(adv - images), axis=[1, 2, 3]),
            "low": tf.reduce_min(adv, axis=[1, 2, 3]),
            "high": tf.reduce_max(adv, axis=[1, 2, 3]),
            "adversarial": adv}

  return tf.function(run, input_signature=[
      tf.TensorSpec([None, *image_shape], tf.float32),
      tf.TensorSpec([None], tf.int32),
      tf.TensorSpec([None, 2], tf.int64)])


def _pixel_range(images):
  """Per image, the lowest and highest pixel in [0, 1] units."""
  flat = np.asarray(images).reshape(len(images), -1)
  scale = 1.0 / 255.0 if flat.dtype == np.uint8 else 1.0
  return ((flat.min(axis=1) * scale).astype(np.float32),
          (flat.max(axis=1) * scale).astype(np.float32))


def run_attack(model, attack, images, labels, *, batch_size, seed=0,
               verbose=1, keep_adversarial=False, robust=None):
  """Runs an attack over a set of images (its first ``attack.examples``).

  Only the examples still robust are attacked, gathered into full batches:
  the others are broken already, and their clean image stands in for their
  adversarial example. Each attacked example draws from the seed of its
  position in the set, so its result does not depend on which others are
  attacked.

  Args:
    model: a Keras model mapping images to logits.
    attack: a ``attacks.base.Attack``.
    images: [N, H, W, C] images, uint8 or float32 in [0, 1].
    labels: int [N] true labels.
    batch_size: images per compiled call.
    seed: seed of the per-example random starts (``data.eval_dataset``).
    verbose: 1 shows a progress bar, 0 is silent.
    keep_adversarial: also return the adversarial examples.
    robust: bool [N], the examples still robust, the only ones attacked;
      they must be classified correctly (default: every example the model
      classifies correctly, ``correct``).

  Returns:
    Dict of NumPy arrays over the N images (or the first
    ``attack.examples``): ``attacked`` (``robust`` as given), ``robust``
    (attacked, and classified correctly on the adversarial example),
    ``linf`` (distance to the clean image), ``low`` / ``high`` (pixel range
    of the adversarial example), and ``adversarial`` if asked for.
  """
  if attack.examples is not None:
    images, labels = images[:attack.examples], labels[:attack.examples]
  labels = np.asarray(labels)
  if robust is None:
    robust = correct(model, images, labels, batch_size)
  attacked = np.array(robust[:len(images)], bool)
  index = np.flatnonzero(attacked)
  low, high = _pixel_range(images)
  out = {"attacked": attacked, "robust": np.zeros(len(images), bool),
         "linf": np.zeros(len(images), np.float32), "low": low,
         "high": high}
  if keep_adversarial:
    out["adversarial"] = as_float(images)
  keys = [k for k in out if k != "attacked"]
  parts = {k: [] for k in keys}
  progbar = keras.utils.Progbar(len(index), verbose=verbose,
                                unit_name="image",
                                stateful_metrics=["robust"])
  done, survived = 0, 0
  if len(index):
    run = _compiled(model, attack, images.shape[1:])
    for batch in data.eval_dataset(images[index], labels[index],
                                   batch_size=batch_size, seed=seed,
                                   positions=index):
      result = run(batch["image"], batch["label"], batch["seed"])
      for k in keys:
        parts[k].append(result[k].numpy())
      done += len(result["robust"])
      survived += int(np.sum(result["robust"]))
      progbar.update(done, [("robust", survived / done)])
    for k in keys:
      out[k][index] = np.concatenate(parts[k])
  return out


def correct(model, images, labels, batch_size):
  """bool [N]: whether the model classifies each clean image correctly."""
  logits = clean_logits(model, images, batch_size)
  return np.argmax(logits, -1) == np.asarray(labels)


def as_float(images):
  """Images as float32 in [0, 1], converted as the input pipeline does."""
  return tf.image.convert_image_dtype(tf.constant(images), tf.float32).numpy()


def clean_logits(model, images, batch_size):
  """Logits of the clean images, in inference mode."""
  ds = data.eval_dataset(images, np.zeros(len(images), np.int32),
                         batch_size=batch_size)
  call = tf.function(lambda x: model(x, training=False))
  return np.concatenate([call(b["image"]).numpy() for b in ds])


def worst_case(robust):
  """Per-example robustness against all attacks at once.

  Args:
    robust: dict mapping attack names to bool [N] arrays, True where the
      example survived that attack.

  Returns:
    bool [N]: True where the example survived every attack.
  """
  return np.logical_and.reduce([np.asarray(v, bool) for v in robust.values()])


def _fraction(flags):
  return float(np.mean(flags)) if len(flags) else 0.0


def _result(passed, detail):
  return {"passed": bool(passed), "detail": detail}


def check_zero_epsilon(clean_correct, zero_epsilon_robust):
  """An attack with epsilon 0 must leave every prediction as it was."""
  clean = np.asarray(clean_correct, bool)
  zero = np.asarray(zero_epsilon_robust, bool)
  changed = int(np.sum(clean != zero))
  return _result(
      changed == 0,
      f"PGD at eps=0: accuracy {_fraction(zero):.4f}, clean "
      f"{_fraction(clean):.4f}, {changed} of {len(clean)} predictions "
      f"changed")


def check_large_epsilon(accuracy, epsilon, tolerance=0.01):
  """An attack with a huge epsilon must drive accuracy to about zero."""
  return _result(
      accuracy <= tolerance,
      f"PGD at eps={epsilon:g}: accuracy {accuracy:.4f} (must be <= "
      f"{tolerance:g}; more means the gradients do not lead anywhere)")


def noise_tolerance(num_examples):
  """Slack of an accuracy comparison on the same images: 0.5%, >= 1 image."""
  return max(0.005, 1.0 / max(num_examples, 1))


def check_monotone(what, accuracies, num_examples):
  """A stronger attack must never raise accuracy beyond noise.

  Args:
    what: the budget that grows, for the message ("steps", "restarts").
    accuracies: list of (label, accuracy), from the weakest attack on.
    num_examples: images the accuracies are measured on.

  Returns:
    The check result.
  """
  tol = noise_tolerance(num_examples)
  worse = [(a, b) for a, b in zip(accuracies, accuracies[1:])
           if b[1] > a[1] + tol]
  trail = ", ".join(f"{label} {acc:.4f}" for label, acc in accuracies)
  if worse:
    (weak, _), (strong, _) = worse[0]
    return _result(False, f"more {what} raised accuracy ({trail}; {strong} "
                   f"beats {weak} by more than {tol:.4f})")
  return _result(True, f"accuracy does not rise with more {what}: {trail} "
                 f"on {num_examples} images")


def check_black_box(black_box_accuracy, white_box_accuracy, num_examples,
                    black_box="black box"):
  """A black-box attack must not beat the white-box ones (gradient masking).

  Args:
    black_box_accuracy: accuracy under the black-box attacks (their
      per-example worst case).
    white_box_accuracy: the white-box worst case on the same images.
    num_examples: how many images both are measured on.
    black_box: the black-box attacks' names, for the message.

  Returns:
    The check result.
  """
  tol = max(0.01, 1.0 / max(num_examples, 1))
  return _result(
      black_box_accuracy >= white_box_accuracy - tol,
      f"{black_box} accuracy {black_box_accuracy:.4f} vs white-box worst case "
      f"{white_box_accuracy:.4f} on the same {num_examples} images (black "
      f"box may be at most {tol:.4f} lower)")


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
    return _result(False, f"adversarial examples out of bounds (eps "
                   f"{epsilon:g}, pixels [0, 1]): {'; '.join(bad)}")
  return _result(True, f"every adversarial example within eps={epsilon:g} "
                 f"and in [0, 1]; max |delta|: {', '.join(parts)}")


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
    return _result(False, f"the model outputs {kind}, not logits: remove the "
                   f"final softmax, or the CE and CW losses saturate")
  return _result(True, f"outputs are logits (range [{logits.min():.3g}, "
                 f"{logits.max():.3g}], row sums not 1)")


def snapshot_variables(model):
  """Copies of all model variables (weights and BatchNorm statistics)."""
  return {v.path: np.array(v.numpy(), copy=True) for v in model.variables}


def check_variables_unchanged(before, after):
  """Evaluation must leave every weight and BatchNorm statistic bit-exact."""
  changed = sorted(k for k in before
                   if k not in after or not np.array_equal(before[k], after[k]))
  if changed:
    return _result(False, f"evaluation changed {len(changed)} model "
                   f"variables, e.g. {changed[0]} (an attack ran with "
                   f"training=True)")
  return _result(True, f"all {len(before)} model variables (weights and "
                 f"BatchNorm statistics) bit-identical after evaluation")


def _say(verbose, message):
  if verbose:
    print(message, flush=True)


def evaluate(model, images, labels, config, prefix="test", verbose=1,
             keep_adversarial=("pgd",)):
  """Clean accuracy, robust accuracies and integrity checks.

  Args:
    model: a Keras model mapping images in [0, 1] to logits.
    images: [N, H, W, C] uint8 images, or float32 in [0, 1].
    labels: int [N] true labels.
    config: an ``EvalConfig``.
    prefix: first part of every metric key ("test" or "val").
    verbose: 1 prints each stage with a progress bar, 0 is silent.
    keep_adversarial: white-box attacks whose adversarial examples are
      returned.

  Returns:
    Dict with ``metrics`` (flat: "<prefix>/<name>_accuracy" per attack, the
    clean accuracy, "worst_case" over the white-box attacks,
    "overall_worst_case" over every attack; and for a composite attack
    "<prefix>/<name>/after_<stage>_accuracy", the accuracy after each of its
    stages), ``attacks`` (settings, seconds and images per second of each
    attack run, and of each stage of a composite one), ``checks`` (name ->
    result; empty without ``config.checks``), ``per_example`` (bool arrays:
    clean correctness, survival of each attack, the worst cases) and
    ``adversarial`` (name -> float32 [N, H, W, C] adversarial examples of
    each attack in ``keep_adversarial`` that ran: for a composite attack,
    the stage's that broke the example, else the first stage's).
  """
  n = len(images)
  per_example, stats, settings, adversarial = {}, {}, {}, {}
  logits = clean_logits(model, images, config.batch_size)
  clean = np.argmax(logits, -1) == np.asarray(labels)
  per_example["clean"] = clean
  metrics = {f"{prefix}/clean_accuracy": _fraction(clean)}
  _say(verbose, f"clean accuracy {_fraction(clean):.4f} on {n} images")

  built = config.build()
  for attack in built:
    entry = attack.settings()
    num = n if attack.examples is None else min(attack.examples, n)
    if attack.examples is not None:
      entry["num_examples"] = num
    _say(verbose, f"{attack.name}: {entry}")
    start = time.perf_counter()
    keep = attack.name in keep_adversarial
    robust = clean[:num]
    for stage in attack.stages():
      stage_start = time.perf_counter()
      out = run_attack(model, stage, images[:num], labels[:num],
                       batch_size=config.batch_size, seed=config.seed,
                       verbose=verbose, keep_adversarial=keep, robust=robust)
      if keep:
        newly = (robust & ~out["robust"])[:, None, None, None]
        adversarial[attack.name] = np.where(
            newly, out["adversarial"],
            adversarial.get(attack.name, out["adversarial"]))
      robust = out["robust"]
      if stage is attack:
        stats[attack.name] = out
      else:
        stats[f"{attack.name}/{stage.name}"] = out
        seconds = time.perf_counter() - stage_start
        entry[stage.name] = {**entry[stage.name], "seconds": seconds,
                             "images_per_second": num / seconds}
        metrics[f"{prefix}/{attack.name}/after_{stage.name}_accuracy"] = (
            _fraction(robust))
    seconds = time.perf_counter() - start
    settings[attack.name] = {**entry, "seconds": seconds,
                             "images_per_second": num / seconds}
    per_example[attack.name] = robust
    metrics[f"{prefix}/{attack.name}_accuracy"] = _fraction(robust)
  white = [a.name for a in built if a.kind == "white_box"]
  if white:
    per_example["worst_case"] = worst_case(
        {k: per_example[k] for k in ["clean", *white]})
    metrics[f"{prefix}/worst_case_accuracy"] = _fraction(
        per_example["worst_case"])
  if built:
    overall = clean.copy()
    for attack in built:
      survived = per_example[attack.name]
      overall[:len(survived)] &= survived
    per_example["overall_worst_case"] = overall
    metrics[f"{prefix}/overall_worst_case_accuracy"] = _fraction(overall)

  checks = {}
  if config.checks:
    black = [a.name for a in built if a.kind == "black_box"]
    checks = _integrity_checks(model, images, labels, config, logits,
                               per_example, stats, black, verbose)
  return {"metrics": metrics, "attacks": settings, "checks": checks,
          "per_example": per_example, "adversarial": adversarial}


def _integrity_checks(model, images, labels, config, logits, per_example,
                      stats, black, verbose):
  """Runs the sweeps of the integrity checks; returns name -> result.

  ``black`` names the black-box attacks that ran.
  """
  checks = {"outputs_are_logits": check_logits(logits[:config.batch_size])}
  num = min(config.check_examples, len(images))
  subset_images, subset_labels = images[:num], labels[:num]
  steps, eps = config.values()["pgd_steps"], config.epsilon

  def pgd_robust(epsilon, step_size, pgd_steps, restarts):
    attack = attacks.build("pgd", config.values(
        epsilon=epsilon, step_size=step_size, pgd_steps=pgd_steps,
        restarts=restarts))
    _say(verbose, f"check sweep: PGD-{pgd_steps}, {restarts} restart(s), "
         f"eps={epsilon:g} on {num} images")
    return run_attack(model, attack, subset_images, subset_labels,
                      batch_size=config.batch_size, seed=config.seed,
                      verbose=verbose)["robust"]

  def base(restarts):
    if "pgd" in per_example and config.restarts == restarts:
      return per_example["pgd"][:num]
    return pgd_robust(eps, config.step_size, steps, restarts)

  checks["zero_epsilon_gives_clean"] = check_zero_epsilon(
      per_example["clean"][:num],
      pgd_robust(0.0, config.step_size, steps, 1))
  # A step of 2.5 eps / steps lets PGD cross the whole ball (Madry et al.).
  large = config.large_epsilon
  checks["large_epsilon_breaks_all"] = check_large_epsilon(
      _fraction(pgd_robust(large, 2.5 * large / steps, steps, 1)), large)
  one = base(1)
  current = one if config.restarts == 1 else base(config.restarts)
  checks["more_steps_no_gain"] = check_monotone(
      "steps", [(f"PGD-{steps}", _fraction(one)),
                (f"PGD-{2 * steps}", _fraction(
                    pgd_robust(eps, config.step_size, 2 * steps, 1)))], num)
  more = config.restarts + 1
  checks["more_restarts_no_gain"] = check_monotone(
      "restarts", [(f"{config.restarts} restart(s)",
                    _fraction(current)),
                   (f"{more} restarts", _fraction(
                       pgd_robust(eps, config.step_size, steps, more)))],
      num)
  if black and "worst_case" in per_example:
    num_black = min(len(per_example[name]) for name in black)
    checks["black_box_not_stronger"] = check_black_box(
        _fraction(worst_case({k: per_example[k][:num_black] for k in black})),
        _fraction(per_example["worst_case"][:num_black]), num_black,
        " + ".join(attacks.get(k).display_name for k in black))
  checks["perturbation_within_bounds"] = check_bounds(stats, eps)
  return checks
