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

The integrity checks catch the usual ways a robustness number is inflated
(``rlfat_tf.integrity`` judges them; the checks' attacks run here, on the
first ``check_examples`` images, with the evaluation's PGD):

- outputs_are_logits: the model does not end in a softmax;
- epsilon_sweep_monotone: over eps/4, eps/2 and eps, accuracy does not rise
  and the cross-entropy PGD reaches rises strictly from the clean images on;
- pgd_beats_noise: PGD leaves clearly fewer images than uniform noise of the
  same radius;
- gradients_not_masked: few input-gradient entries are exactly zero;
- large_epsilon_breaks_all: PGD with epsilon 0.5 leaves at most 1%;
- more_steps_no_gain: twice the steps from the same starts do not raise
  accuracy;
- fresh_restarts_no_gain: one more restart, from seeds the evaluation did not
  use, does not raise accuracy beyond a sign test's noise;
- black_box_not_stronger: no black-box attack beats the white-box worst case
  on its images;
- perturbation_within_bounds: every adversarial example is within epsilon of
  its image and inside [0, 1].

A caller adds ``integrity.check_variables_unchanged``, comparing snapshots of
all model variables taken around the whole evaluation.
"""

import dataclasses
import time

import keras
import numpy as np
import tensorflow as tf

from rlfat_tf import attacks
from rlfat_tf import data
from rlfat_tf import errors
from rlfat_tf import evalstate
from rlfat_tf import integrity
from rlfat_tf import progress
from rlfat_tf.attacks import losses
from rlfat_tf.attacks import pgd

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
      attacks.entry(name)
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


def _compiled(model, attack, image_shape):
  """One compiled call: attack a batch and score the result."""

  def run(images, labels, seeds):
    adv = attacks.attack_batch(model, attack, images, labels, seeds)
    robust = tf.equal(tf.argmax(model(adv, training=False), -1,
                                output_type=labels.dtype), labels)
    return {"robust": robust,
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
               verbose=1, keep_adversarial=False, robust=None, saved=None):
  """Runs an attack over a set of images (its first ``attack.examples``).

  Only the examples still robust are attacked, gathered into full batches:
  the others are broken already, and their clean image stands in for their
  adversarial example. Each attacked example draws from the seed of its
  position in the set, so its result does not depend on which others are
  attacked.

  With ``saved``, the batches it holds are taken as they are and only the
  rest are attacked, each saved as it finishes.

  Args:
    model: a Keras model mapping images to logits.
    attack: a ``attacks.base.Attack``.
    images: [N, H, W, C] images, uint8 or float32 in [0, 1].
    labels: int [N] true labels.
    batch_size: images per compiled call.
    seed: seed of the per-example random starts (``data.eval_dataset``).
    verbose: how progress is shown, a ``progress.Mode`` (1: a bar on a
      terminal, plain lines otherwise; 2: the bar; 0: none).
    keep_adversarial: also return the adversarial examples.
    robust: bool [N], the examples still robust, the only ones attacked;
      they must be classified correctly (default: every example the model
      classifies correctly, ``correct``).
    saved: an ``evalstate.Run`` of this attack on these examples, or None.

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
  progbar = progress.progbar(len(index), verbose=verbose, unit_name="image",
                             stateful_metrics=["robust"])
  batches = saved.batches if saved is not None else []
  for part in batches:
    for k in keys:
      parts[k].append(part[k])
  done = sum(len(part["robust"]) for part in batches)
  survived = sum(int(np.sum(part["robust"])) for part in batches)
  if done:
    progbar.update(done, [("robust", survived / done)])
  # The batches on disk are the first ones of the same order: the rest
  # starts where they end, on the same batch boundaries.
  rest = index[done:]
  if len(rest):
    run = _compiled(model, attack, images.shape[1:])
    total = len(batches) + -(-len(rest) // batch_size)
    mark = time.perf_counter()
    for number, batch in enumerate(
        data.eval_dataset(images[rest], labels[rest], batch_size=batch_size,
                          seed=seed, positions=rest), start=len(batches)):
      result = run(batch["image"], batch["label"], batch["seed"])
      arrays = {k: result[k].numpy() for k in keys}
      for k in keys:
        parts[k].append(arrays[k])
      done += len(arrays["robust"])
      survived += int(np.sum(arrays["robust"]))
      progbar.update(done, [("robust", survived / done)])
      if saved is not None:
        now = time.perf_counter()
        saved.save(number, {**arrays, "seconds": np.float64(now - mark)},
                   total)
        mark = now
  if len(index):
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


def _say(verbose, message):
  if verbose:
    print(message, flush=True)


def evaluate(model, images, labels, config, prefix="test", verbose=1,
             keep_adversarial=("pgd",), state=None):
  """Clean accuracy, robust accuracies and integrity checks.

  With a ``state`` (``evalstate.EvalState``), every batch of every attack
  run is saved as it finishes and the batches an earlier evaluation with the
  same settings saved are taken from it, so a stopped evaluation resumes;
  the seconds reported include those of the batches taken.

  Args:
    model: a Keras model mapping images in [0, 1] to logits.
    images: [N, H, W, C] uint8 images, or float32 in [0, 1].
    labels: int [N] true labels.
    config: an ``EvalConfig``.
    prefix: first part of every metric key ("test" or "val").
    verbose: prints each stage and its progress, a ``progress.Mode`` (0:
      silent).
    keep_adversarial: white-box attacks whose adversarial examples are
      returned.
    state: an ``evalstate.EvalState`` opened for this evaluation, or None.

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
    taken = 0.0
    for stage in attack.stages():
      stage_start = time.perf_counter()
      name = attack.name if stage is attack else f"{attack.name}/{stage.name}"
      saved = state.run(name) if state is not None else None
      out = run_attack(model, stage, images[:num], labels[:num],
                       batch_size=config.batch_size, seed=config.seed,
                       verbose=verbose, keep_adversarial=keep, robust=robust,
                       saved=saved)
      stage_taken = saved.saved_seconds if saved is not None else 0.0
      taken += stage_taken
      if keep:
        newly = (robust & ~out["robust"])[:, None, None, None]
        adversarial[attack.name] = np.where(
            newly, out["adversarial"],
            adversarial.get(attack.name, out["adversarial"]))
      robust = out["robust"]
      if stage is attack:
        stats[attack.name] = out
      else:
        stats[name] = out
        seconds = time.perf_counter() - stage_start + stage_taken
        entry[stage.name] = {**entry[stage.name], "seconds": seconds,
                             "images_per_second": num / seconds}
        metrics[f"{prefix}/{attack.name}/after_{stage.name}_accuracy"] = (
            _fraction(robust))
    seconds = time.perf_counter() - start + taken
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
                               per_example, stats, black, verbose, state)
  return {"metrics": metrics, "attacks": settings, "checks": checks,
          "per_example": per_example, "adversarial": adversarial}


def _mean_cross_entropy(logits, labels, mask):
  """The mean cross-entropy over the examples where ``mask`` holds."""
  per_example = losses.cross_entropy(logits, np.asarray(labels, np.int32))
  return float(np.mean(per_example.numpy()[mask]))


def _logits_function(model, batch_size):
  """Logits of float32 images in batches, through one compiled call."""
  call = tf.function(lambda x: model(x, training=False))

  def logits(images):
    return np.concatenate([call(tf.constant(images[i:i + batch_size])).numpy()
                           for i in range(0, len(images), batch_size)])

  return logits


def _integrity_checks(model, images, labels, config, logits, per_example,
                      stats, black, verbose, state):
  """Runs the attacks of the integrity checks; returns name -> result.

  ``black`` names the black-box attacks that ran. The sweeps run the
  evaluation's PGD (``attacks.build("pgd", ...)``) with one restart unless
  said otherwise. ``state`` keeps their batches as ``evaluate``'s own.
  """
  checks = {"outputs_are_logits": integrity.check_logits(
      logits[:config.batch_size])}
  num = min(config.check_examples, len(images))
  subset_images, subset_labels = images[:num], labels[:num]
  steps, eps = config.values()["pgd_steps"], config.epsilon

  def run(attack, what, seed=config.seed, keep=False):
    _say(verbose, f"check: {what} on {num} images")
    return run_attack(model, attack, subset_images, subset_labels,
                      batch_size=config.batch_size, seed=seed,
                      verbose=verbose, keep_adversarial=keep,
                      saved=state.run(f"check {what}") if state else None)

  def pgd_run(epsilon=eps, step_size=config.step_size, pgd_steps=steps,
              restarts=1, seed=config.seed, keep=False):
    attack = attacks.build("pgd", config.values(
        epsilon=epsilon, step_size=step_size, pgd_steps=pgd_steps,
        restarts=restarts))
    return run(attack, f"PGD-{pgd_steps}, {restarts} restart(s), "
               f"eps={epsilon:g}, seed {seed}", seed=seed, keep=keep)

  # The evaluation's own PGD run is the sweep's last point when it has one
  # restart: same attack, seeds and images.
  evaluated = stats.get("pgd", {})
  adversarial_logits = _logits_function(model, config.batch_size)
  # The loss is measured where the attacks act: on the images classified
  # correctly (the others keep their clean image).
  correct = np.asarray(per_example["clean"][:num], bool)
  sweep = [("clean", _fraction(correct))]
  mean_losses = [_mean_cross_entropy(logits[:num], subset_labels, correct)]
  for divisor, label in ((4, "eps/4"), (2, "eps/2"), (1, "eps")):
    if divisor == 1 and config.restarts == 1 and "adversarial" in evaluated:
      out = {k: evaluated[k][:num] for k in ("robust", "adversarial")}
    else:
      out = pgd_run(epsilon=eps / divisor, keep=True)
    sweep.append((label, _fraction(out["robust"])))
    mean_losses.append(_mean_cross_entropy(
        adversarial_logits(out["adversarial"]), subset_labels, correct))
  one = out["robust"]
  checks["epsilon_sweep_monotone"] = integrity.check_epsilon_sweep(
      sweep, mean_losses if correct.any() else None, num)

  # PGD with no steps: one uniform draw from the ball.
  noise = pgd.PGD(name="noise", display_name="uniform noise",
                  spec=pgd.AttackSpec(eps, 0.0, 0, "ce", "uniform", "eval"))
  checks["pgd_beats_noise"] = integrity.check_beats_noise(
      _fraction(one), _fraction(run(noise, f"uniform noise, eps={eps:g}")[
          "robust"]), num)

  checks["gradients_not_masked"] = integrity.check_gradients(
      integrity.zero_gradient_fraction(model, as_float(subset_images),
                                       subset_labels, config.batch_size),
      num)

  # A step of 2.5 eps / steps lets PGD cross the whole ball (Madry et al.).
  large = config.large_epsilon
  checks["large_epsilon_breaks_all"] = integrity.check_large_epsilon(
      _fraction(pgd_run(epsilon=large, step_size=2.5 * large / steps)[
          "robust"]), large)

  checks["more_steps_no_gain"] = integrity.check_more_steps(
      [(f"PGD-{steps}", _fraction(one)),
       (f"PGD-{2 * steps}", _fraction(pgd_run(pgd_steps=2 * steps)[
           "robust"]))], num)

  restarts = config.restarts
  if "pgd" in per_example:
    base = per_example["pgd"][:num]
  elif restarts == 1:
    base = one
  else:
    base = pgd_run(restarts=restarts)["robust"]
  # Example seeds are split from (seed, position): another seed shares none.
  fresh = pgd_run(restarts=restarts + 1, seed=config.seed + 1)["robust"]
  checks["fresh_restarts_no_gain"] = integrity.check_fresh_restarts(
      base, fresh, restarts)

  if black and "worst_case" in per_example:
    compared = []
    for name in black:
      count = len(per_example[name])
      compared.append((attacks.entry(name).display_name,
                       _fraction(per_example[name]),
                       _fraction(per_example["worst_case"][:count]), count))
    checks["black_box_not_stronger"] = integrity.check_black_box(compared)
  checks["perturbation_within_bounds"] = integrity.check_bounds(stats, eps)
  return checks


@dataclasses.dataclass(frozen=True)
class Report:
  """What ``evaluate_robustness`` measured.

  Attributes:
    metrics: "<prefix>/<name>_accuracy" per attack, the clean accuracy and
      the worst cases (see ``evaluate``); the keys of results files and
      TensorBoard tags.
    per_example: name -> bool [N]: clean correctness, survival of each
      attack (of each stage of AutoAttack as "autoattack/<stage>" only in
      ``attacks``' stage entries), the worst cases.
    attacks: each attack's settings, seconds and images per second.
    checks: integrity check name -> {"passed", "detail"} (empty without
      checks).
    labels: int [N] labels of the evaluated images.
    settings: the evaluation's settings, the results file's "eval" entry.
    model: what was evaluated, the results file's "run" entry.
  """
  metrics: dict
  per_example: dict
  attacks: dict
  checks: dict
  labels: np.ndarray
  settings: dict
  model: dict

  @property
  def failed_checks(self):
    """Names of the integrity checks that failed, in order."""
    return [n for n, r in self.checks.items() if not r["passed"]]

  def write(self, output):
    """Writes the results file and its per-example file, as
    ``rlfat_tf.evaluate`` does (``results.write``); returns the payload."""
    # Imported here: results imports nothing of robustness, but keeping this
    # module's import list to what its attacks need keeps it light.
    from rlfat_tf import results  # pylint: disable=g-import-not-at-top
    return results.write(output, {
        "run": self.model, "eval": self.settings, "attacks": self.attacks,
        "metrics": self.metrics, "checks": self.checks}, self.labels,
                         self.per_example)


def _arrays(dataset):
  """(images, labels) of a tf.data.Dataset of (image, label) pairs or of
  dicts with "image" and "label", batched or not."""
  images, labels = [], []
  for element in dataset.as_numpy_iterator():
    if isinstance(element, dict):
      image, label = element["image"], element["label"]
    else:
      image, label = element
    images.append(np.asarray(image))
    labels.append(np.asarray(label))
  if not images:
    raise errors.UserError("the dataset is empty: pass a dataset of "
                           "(image, label) pairs")
  if images[0].ndim == 4:
    return np.concatenate(images), np.concatenate(labels).astype(np.int32)
  return np.stack(images), np.asarray(labels, np.int32)


def _check_images(images, labels):
  """Refuses images and labels the attacks cannot take as they are."""
  if images.ndim != 4:
    raise errors.UserError(
        f"images have shape {images.shape}, not [N, H, W, C]: pass a batch "
        f"of images")
  if len(images) != len(labels) or labels.ndim != 1:
    raise errors.UserError(
        f"{len(images)} images but labels of shape {labels.shape}: pass one "
        f"integer label per image (not one-hot)")
  if images.dtype != np.uint8:
    if not np.issubdtype(images.dtype, np.floating):
      raise errors.UserError(
          f"images of dtype {images.dtype}: pass uint8 images or floats in "
          f"[0, 1]")
    low, high = float(images.min()), float(images.max())
    if low < 0.0 or high > 1.0:
      raise errors.UserError(
          f"image values span [{low:g}, {high:g}], not [0, 1]: divide uint8 "
          f"pixels by 255 (and pass input_scale=255 if the model expects "
          f"[0, 255])")


def evaluate_robustness(model, images, labels=None, *, epsilon,
                        attacks=("autoattack",), batch_size=100, checks=True,
                        step_size=None, restarts=1, settings=None, seed=0,
                        input_scale=1.0, check_examples=500, prefix="test",
                        verbose=0, state_dir=None):
  """Robust accuracy of any classifier, with the evaluation's checks.

  The same evaluation as ``python -m rlfat_tf.evaluate`` (the attacks,
  their per-example seeds, the worst cases and the integrity checks), on a
  model and images given in Python::

    report = rlfat_tf.evaluate_robustness(model, x_test, y_test,
                                          epsilon=8 / 255)
    print(report.metrics["test/autoattack_accuracy"])
    report.write("results/my_model.json")

  Args:
    model: a ``keras.Model``, a SavedModel signature or a function, mapping
      float32 images in [0, 1] to logits (see ``classifier.wrap``).
    images: [N, H, W, C] uint8 images or floats in [0, 1]; or a
      ``tf.data.Dataset`` of (image, label) pairs (or dicts with "image" and
      "label"), batched or not, and no ``labels``.
    labels: int [N] labels (not one-hot).
    epsilon: L-infinity radius in [0, 1] units (8 / 255, say).
    attacks: names from ``attacks.NAMES``; default standard AutoAttack.
    batch_size: images per compiled attack call.
    checks: run the integrity checks (``Report.checks``).
    step_size: step of PGD and CW; default ``epsilon / 4``.
    restarts: random restarts of each white-box attack.
    settings: attack settings by flag name (``{"apgd_steps": 50}``).
    seed: seed of every random start and draw.
    input_scale: see ``classifier.wrap`` (255 for [0, 255] models).
    check_examples: images of the checks' own attacks.
    prefix: first part of every metric key.
    verbose: 1 prints each stage and its progress (a bar on a terminal).
    state_dir: a folder for the evaluation's progress (``evalstate``): the
      same call, made again after a stop or a crash, resumes from it; a call
      with other arguments or images is refused. It is removed once the
      evaluation ends. None: nothing is saved.

  A Ctrl-C (``KeyboardInterrupt``) or a crash keeps every batch saved
  before it.

  Returns:
    A ``Report``.

  Raises:
    errors.UserError: bad images or labels, an unknown attack or setting, a
      radius outside (0, 1], or a model whose outputs do not fit the labels
      or are probabilities (with ``checks``).
  """
  # Imported here: classifier imports integrity, which imports attack
  # losses; at module level the cycle would run through rlfat_tf.attacks.
  from rlfat_tf import classifier  # pylint: disable=g-import-not-at-top
  if isinstance(images, tf.data.Dataset):
    if labels is not None:
      raise errors.UserError("labels come from the dataset: pass labels only "
                             "with an array of images")
    images, labels = _arrays(images)
  elif labels is None:
    raise errors.UserError("no labels: pass labels with an array of images, "
                           "or a tf.data.Dataset of (image, label) pairs")
  images, labels = np.asarray(images), np.asarray(labels)
  _check_images(images, labels)
  labels = labels.astype(np.int32)
  if not 0.0 < epsilon <= 1.0:
    raise errors.UserError(
        f"epsilon {epsilon:g} is outside (0, 1]: images are in [0, 1], so "
        f"pass e.g. 8 / 255, not 8")
  model = classifier.wrap(model, input_scale=input_scale)
  if checks:
    num_classes = int(np.shape(model(as_float(images[:1]),
                                     training=False))[-1])
    if labels.max() >= num_classes or labels.min() < 0:
      raise errors.UserError(
          f"labels span {labels.min()} .. {labels.max()}, but the model has "
          f"{num_classes} outputs: pass labels in 0 .. {num_classes - 1}")
    classifier.check(model, images.shape[1:], num_classes, "the images")
  config = EvalConfig(
      attacks=tuple(attacks), epsilon=epsilon,
      step_size=epsilon / 4 if step_size is None else step_size,
      restarts=restarts, settings=dict(settings or {}), checks=checks,
      check_examples=check_examples, batch_size=batch_size, seed=seed)
  description = getattr(model, "description", None) or (
      f"Keras model {model.name}" if isinstance(model, keras.Model)
      else type(model).__name__)
  state = None
  if state_dir is not None:
    state = evalstate.EvalState.open(state_dir, {
        "model": description, "image set": evalstate.digest(images, labels),
        "prefix": prefix, "input_scale": input_scale,
        **dataclasses.asdict(config)})
  before = integrity.snapshot_variables(model)
  out = evaluate(model, images, labels, config, prefix=prefix,
                 verbose=verbose, keep_adversarial=(), state=state)
  checks_done = out["checks"]
  if checks:
    checks_done["variables_unchanged"] = integrity.check_variables_unchanged(
        before, integrity.snapshot_variables(model))
  if state is not None:
    state.remove()
  return Report(
      metrics=out["metrics"], per_example=out["per_example"],
      attacks=out["attacks"], checks=checks_done, labels=labels,
      settings={"split": prefix, "num_examples": len(images),
                "epsilon": epsilon, "batch_size": batch_size, "seed": seed,
                "input_scale": input_scale},
      model={"architecture": description, "method": None, "dataset": None})
