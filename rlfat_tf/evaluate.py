r"""Evaluates a trained run: robust accuracy, integrity checks, sensitivity.

Examples:
  python -m rlfat_tf.evaluate --model_dir=/tmp/smoke --num_examples=200
  python -m rlfat_tf.evaluate --model_dir=runs/c10 --which=best \
      --output=results/c10_best.json --restarts=5
  python -m rlfat_tf.evaluate --model_dir=runs/c10 --watch

One evaluation writes a results file (default RUN/results_<which>_<split>.json)
with the clean accuracy, the accuracy under PGD, CW-margin PGD, APGD-CE,
APGD-DLR, the N attack and AutoAttack (and after each of its stages), the
per-example worst case over the white-box attacks and over every attack, each
attack's images per second, the integrity checks, the loss sensitivity under
brightness and gamma shifts, and SmoothGrad salience maps
(``<stem>_salience.npz`` beside it), with the per-example verdicts in
``<stem>_examples.npz``. APGD-T, FAB-T and Square run on their own when
--attacks names them.

Exit status: 0 when every integrity check passed, 3 when the results were
written but at least one check failed (each failure is printed as an
"INTEGRITY CHECK FAILED" line and recorded in the results file), 2 on bad
input or a bad flag (see ``cli``).

The loss sensitivity is measured, as in the official run_smooth_test.py, on
the PGD output of every image (not only of those the model classifies
correctly), with --epsilon, --step_size and the run's training attack steps
(the official k for the paper's runs; --sensitivity_pgd_steps overrides).

--watch turns the command into a sidecar of a training run: it evaluates
every new checkpoint in RUN/checkpoints on the run's validation split with
the trainer's own validation (clean accuracy and ``trainer.VAL_PGD_KEY``: PGD
on cross-entropy at the run's training epsilon, step and steps, with the
run's seed), writes TensorBoard scalars to RUN/summaries_eval and a line per
checkpoint to RUN/eval_history.jsonl, and exits once the checkpoint of the
run's last step is evaluated or no new checkpoint came for --watch_timeout
seconds.
"""

import json
import os
import sys
import time

from absl import flags

# Before TensorFlow loads: keep its C++ start-up chatter off the console.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import tensorflow as tf

from rlfat_tf import attacks
from rlfat_tf import classifier
from rlfat_tf import cli
from rlfat_tf import data
from rlfat_tf import datasets
from rlfat_tf import errors
from rlfat_tf import evalstate
from rlfat_tf import files
from rlfat_tf import integrity
from rlfat_tf import preemption
from rlfat_tf import progress
from rlfat_tf import results
from rlfat_tf import robustness
from rlfat_tf import runs
from rlfat_tf import saliency
from rlfat_tf import sensitivity
from rlfat_tf import trainer
from rlfat_tf.attacks import pgd

WATCH_HISTORY = "eval_history.jsonl"
WATCH_SUMMARIES = "summaries_eval"

FLAGS = flags.FLAGS


def _floats(values):
  try:
    return [float(v) for v in values]
  except ValueError:
    return None


def define_flags(flag_values=FLAGS):
  """Defines the command's flags on ``flag_values``.

  Called only when the module runs as a program, so importing it (tests,
  other entry points) defines no flag that could collide with theirs; tests
  parse into their own ``flags.FlagValues``.
  """
  fv = {"flag_values": flag_values}
  # What to evaluate.
  classifier.define_source_flags(flag_values, __name__, "evaluate")
  flags.DEFINE_enum("which", "last", ("last", "best"), "Checkpoint: the last "
                    "one (as the official code) or the best on validation.",
                    **fv)
  flags.DEFINE_string("output", None, "Results file (default: "
                      "MODEL_DIR/results_<which>_<split>.json).", **fv)
  flags.DEFINE_enum("split", "test", ("test", "val"), "test: the test set; "
                    "val: the run's validation split of the training set.",
                    **fv)
  flags.DEFINE_integer("num_examples", None, "Evaluate the first N images "
                       "(default: all).", lower_bound=1, **fv)
  flags.DEFINE_integer("batch_size", 100, "Images per compiled attack call.",
                       lower_bound=1, **fv)
  flags.DEFINE_integer("seed", 0, "Seed of random starts, N-attack draws and "
                       "SmoothGrad noise.", lower_bound=0, **fv)

  # Attacks: the shared settings, then each registered attack's own.
  flags.DEFINE_list("attacks", list(attacks.DEFAULTS),
                    f"Attacks to run, from {','.join(attacks.NAMES)}.", **fv)
  flags.DEFINE_float("epsilon", 0.03, "L-inf radius of every attack, in "
                     "(0, 1] (official: 0.03).", **fv)
  flags.DEFINE_float("step_size", 0.0075, "Step of PGD and CW (official: "
                     "0.0075).", **fv)
  flags.DEFINE_integer("restarts", 1, "Random restarts of every white-box "
                       "attack.", lower_bound=1, **fv)
  for setting in attacks.settings():
    define = (flags.DEFINE_float if setting.type is float
              else flags.DEFINE_integer)
    define(setting.flag, setting.default, setting.help,
           lower_bound=setting.lower_bound, **fv)

  # Loss sensitivity and salience.
  flags.DEFINE_list("brightness", ["-0.15"], "Brightness shifts of the loss "
                    "sensitivity study (official code: -0.15); empty: none.",
                    **fv)
  flags.DEFINE_list("gamma", ["0.8", "1.2"], "Gamma values of the loss "
                    "sensitivity study; the paper's value is unverified (the "
                    "official code has no gamma mapping); empty: none.", **fv)
  flags.DEFINE_enum("sensitivity_inputs", "pgd", ("pgd", "clean"),
                    "Images the sensitivity is measured on: the PGD output "
                    "for every image (as the official code; --epsilon, "
                    "--step_size, --sensitivity_pgd_steps) or the clean "
                    "images.", **fv)
  flags.DEFINE_integer("sensitivity_pgd_steps", None, "Steps of the PGD "
                       "that makes the sensitivity inputs (default: the "
                       "run's training --attack_steps, for the paper's runs "
                       "the official k: 10 on CIFAR-10, 7 on CIFAR-100 and "
                       "STL-10).", lower_bound=1, **fv)
  flags.DEFINE_integer("salience_images", 8, "SmoothGrad maps of the first N "
                       "images (0: none).", lower_bound=0, **fv)
  flags.DEFINE_float("smoothgrad_noise", 0.1, "SmoothGrad noise level "
                     "(standard deviation over the pixel range).",
                     lower_bound=0.0, **fv)
  flags.DEFINE_integer("smoothgrad_samples", 50, "SmoothGrad noisy samples "
                       "per image.", lower_bound=1, **fv)

  # Integrity checks.
  flags.DEFINE_bool("checks", True, "Run the integrity checks.", **fv)
  flags.DEFINE_integer("check_examples", 500, "Images of the checks' own "
                       "attacks (epsilon sweep, noise, input gradients, "
                       "large eps, more steps, fresh restarts).",
                       lower_bound=1, **fv)
  flags.DEFINE_float("large_epsilon", 0.5, "Radius at which accuracy must "
                     "collapse.", lower_bound=0.0, upper_bound=1.0, **fv)

  # Sidecar mode.
  flags.DEFINE_bool("watch", False, "Evaluate each new checkpoint of a "
                    "training run on its validation split as the trainer "
                    "validates (clean, and PGD on CE at the run's training "
                    "epsilon, step, steps and seed; the attack flags do "
                    "not apply).", **fv)
  flags.DEFINE_integer("watch_timeout", 3600, "Stop watching after this many "
                       "seconds without a new checkpoint.", lower_bound=1,
                       **fv)

  flags.DEFINE_bool("progress", None, progress.FLAG_HELP, **fv)
  flags.DEFINE_bool("resume", True, "Resume a stopped evaluation from the "
                    "progress it saved beside --output (<stem>_state/); "
                    "--noresume discards that progress and starts afresh.",
                    **fv)

  runs.register_radius_validators(flag_values)
  flags.register_validator(
      "attacks", lambda v: bool(v) and set(v) <= set(attacks.NAMES),
      message=f"--attacks must be a non-empty list from "
      f"{','.join(attacks.NAMES)}", **fv)
  flags.register_validator(
      "brightness", lambda v: _floats(v) is not None,
      message="--brightness must be a list of numbers, e.g. -0.15,0.15", **fv)
  flags.register_validator(
      "gamma", lambda v: _floats(v) is not None and all(
          g > 0 for g in _floats(v)),
      message="--gamma must be a list of positive numbers, e.g. 0.8,1.2",
      **fv)


def flag_values(parsed=FLAGS):
  """The parsed values of this module's flags, by name."""
  return cli.module_values(__name__, parsed)


def values_from_argv(argv):
  """Parses a command line into this command's values, outside ``__main__``.

  Args:
    argv: the command line, program name first.

  Raises:
    absl.flags.Error: a flag is unknown or a validator refuses its value.
  """
  return flag_values(cli.parse_argv(define_flags, argv))


def load_images(record, values, split):
  """The images of a split of the run's dataset, cut to --num_examples.

  Args:
    record: the run's ``runs.RunRecord``, or None for a --model, which reads
      the test split of --dataset at --image_size.
    values: this module's flag values (``data_dir`` and ``tfds_data_dir``
      override the run's; ``num_examples`` keeps the first N images).
    split: "test", or "val" for the run's validation split, recomputed with
      ``data.validation_split`` and the run's ``val_size``.

  Returns:
    ``(images, labels)``: uint8 [N, H, W, C] and int [N], in memory (a
    streamed split is decoded once cut to --num_examples).

  Raises:
    errors.UserError: no validation split, or too few images.
  """
  if record is None:
    images, labels = datasets.load_split(
        values["dataset"], "test", values["data_dir"],
        values["tfds_data_dir"], image_size=values["image_size"])
    return _first(images, labels, values["num_examples"], split)
  folders = (values["data_dir"], values["tfds_data_dir"])
  if split == "val":
    val_size = record.val_size
    if not val_size:
      raise errors.UserError(
          f"{values['model_dir']} was trained without a validation split "
          f"(--val_size=0): evaluate --split=test, or train with --val_size")
    images, labels = runs.load_split(record, "train", *folders)
    _, (images, labels) = data.validation_split(images, labels, val_size)
  else:
    images, labels = runs.load_split(record, "test", *folders)
  return _first(images, labels, values["num_examples"], split)


def _first(images, labels, num, split):
  """The first ``num`` images (all when None); UserError if too few."""
  if num is not None:
    if num > len(images):
      raise errors.UserError(
          f"--num_examples={num} exceeds the {len(images)} images of the "
          f"{split} split: pass at most {len(images)}")
    images, labels = images[:num], labels[:num]
  return datasets.in_memory(images), labels


def eval_config(values):
  """The ``robustness.EvalConfig`` of the flags."""
  return robustness.EvalConfig(
      attacks=tuple(values["attacks"]), epsilon=values["epsilon"],
      step_size=values["step_size"], restarts=values["restarts"],
      settings={s.flag: values[s.flag] for s in attacks.settings()},
      checks=values["checks"],
      check_examples=values["check_examples"],
      large_epsilon=values["large_epsilon"],
      batch_size=values["batch_size"], seed=values["seed"])


# Flags that change no verdict of the attacks a state keeps: where files
# are, what is shown, the sidecar mode, and the sensitivity and salience,
# which run after the attacks (the sensitivity's PGD is kept as a run named
# by its steps, and shares --epsilon and --step_size).
STATELESS_FLAGS = ("output", "progress", "resume", "data_dir",
                   "tfds_data_dir", "watch", "watch_timeout", "brightness",
                   "gamma", "sensitivity_inputs", "sensitivity_pgd_steps",
                   "salience_images", "smoothgrad_noise",
                   "smoothgrad_samples")


def state_settings(values, run_entry, images, labels):
  """What decides an evaluation's verdicts, as its state records them.

  Args:
    values: this module's flag values.
    run_entry: the results file's "run" entry (its "checkpoint" is the one
      --which resolved to).
    images, labels: the evaluated images and labels.

  Returns:
    ``{"--flag": value}`` for every flag but ``STATELESS_FLAGS``, with the
    checkpoint and a digest of the images and labels.
  """
  settings = {f"--{k}": v for k, v in values.items()
              if k not in STATELESS_FLAGS}
  settings["checkpoint"] = run_entry.get("checkpoint")
  settings["image set"] = evalstate.digest(images, labels)
  return settings


def _only_with_run(values):
  """Refuses flags that name parts of a run, given a --model."""
  if values["split"] != "test":
    raise errors.UserError(
        f"--split={values['split']} needs a run's validation split, and "
        f"--model={values['model']} has none: drop --split")
  classifier.refuse_checkpoint_choice(values["model"], values["which"])
  if values["watch"]:
    raise errors.UserError(
        f"--watch follows a training run, and --model={values['model']} is "
        f"a saved model: pass --model_dir=RUN")


def load_target(values):
  """The model an evaluation runs on, and what its results record of it.

  Args:
    values: this module's flag values: --model_dir, or --model with
      --dataset, --signature and --input_scale.

  Returns:
    ``(model, record, run)``: a callable of the attacks' interface, the
    run's ``runs.RunRecord`` (None for a --model) and the results file's
    "run" entry.

  Raises:
    errors.UserError: flags that do not fit the source, an unreadable
      model, or one that does not fit the dataset (``classifier.check``).
  """
  if values["model"] is None:
    classifier.refuse_source_flags(values)
    model_dir = values["model_dir"]
    model, record, checkpoint = runs.restore_model(
        model_dir, values["which"], data_dir=values["data_dir"],
        tfds_data_dir=values["tfds_data_dir"])
    return model, record, {
        "model_dir": model_dir, "checkpoint": checkpoint,
        "which": values["which"], "dataset": record.dataset,
        "method": record.method,
        "architecture": runs.architecture(record),
        "depth": record.depth, "width": record.width,
        "train_flags": record.to_json()}
  path = values["model"]
  _only_with_run(values)
  if values["output"] is None:
    raise errors.UserError(
        f"--model={path} has no run folder to write results into: pass "
        f"--output=FILE.json")
  model, spec = classifier.load_source(values)
  return model, None, {
      "model": path, "signature": values["signature"],
      "input_scale": values["input_scale"], "dataset": spec.name,
      "method": None, "architecture": model.description}


def run(values):
  """Evaluates a run's checkpoint, or a saved model, and writes the results.

  Args:
    values: dict of this module's flag values.

  Every batch of every attack is saved as it finishes in a state folder
  beside the results file (``evalstate``), and the same command, run again
  after a stop, resumes from it (``--noresume`` starts afresh); the folder is
  removed once the results file is written. SIGTERM or Ctrl-C stops it at
  the next batch boundary; a second Ctrl-C ends the process at once.

  Returns:
    The results dict that was written.

  Raises:
    errors.UserError: bad input, or a state folder of an evaluation with
      other settings (named).
    preemption.Stopped: SIGTERM or SIGINT stopped it, its progress saved.
  """
  with preemption.PreemptionWatcher(wording=preemption.PROGRESS) as watcher:
    return _run(values, watcher)


def _run(values, watcher):
  """``run`` under its watcher."""
  start = time.perf_counter()
  verbose = progress.from_flag(values["progress"])
  model_dir, which, split = (values["model_dir"], values["which"],
                             values["split"])
  brightness = tuple(float(v) for v in values["brightness"])
  gamma = tuple(float(v) for v in values["gamma"])
  output = values["output"] or (model_dir and os.path.join(
      model_dir, f"results_{which}_{split}.json"))
  # Every file the evaluation writes is checked before the model is even
  # built, so an unusable --output fails in a second and leaves no file.
  if output:
    for path in (output, results.sibling(output, "examples.npz"),
                 results.sibling(output, "salience.npz")):
      files.check_output_file(path, "--output")
  model, record, run_entry = load_target(values)
  images, labels = load_images(record, values, split)
  # Made before the long evaluation, so an unusable --output fails at once.
  if os.path.dirname(output):
    tf.io.gfile.makedirs(os.path.dirname(output))
  config = eval_config(values)
  before = integrity.snapshot_variables(model)
  state = evalstate.EvalState.open(
      results.sibling(output, "state"),
      state_settings(values, run_entry, images, labels),
      resume=values["resume"], watcher=watcher,
      fresh_hint="pass --noresume to start afresh")
  if state.found:
    print(f"resuming from {state.folder} ({state.found} "
          f"batch{'es' if state.found > 1 else ''} saved)", flush=True)

  evaluation = robustness.evaluate(model, images, labels, config,
                                   prefix=split, verbose=verbose,
                                   keep_adversarial=(), state=state)
  metrics, checks = evaluation["metrics"], evaluation["checks"]
  float_images = robustness.as_float(images)
  sensitivity_attack = None
  if brightness or gamma:
    inputs, described = float_images, "the clean images"
    if values["sensitivity_inputs"] == "pgd":
      spec = pgd.pgd(values["epsilon"], values["step_size"],
                     values["sensitivity_pgd_steps"]
                     or (record.attack_steps if record else
                         datasets.train_defaults(run_entry["dataset"])
                         .attack_steps), "eval")
      sensitivity_attack = spec.record()
      described = f"the PGD-{spec.steps} output of every image"
      inputs = sensitivity.attacked_inputs(
          model, images, labels, spec, batch_size=values["batch_size"],
          seed=values["seed"], verbose=verbose,
          saved=state.run(f"sensitivity PGD-{spec.steps}"))
    if verbose:
      print(f"loss sensitivity on {described}: brightness {brightness}, "
            f"gamma {gamma}", flush=True)
    metrics.update(sensitivity.loss_sensitivity(
        model, inputs, labels, brightness=brightness, gamma=gamma,
        batch_size=values["batch_size"], verbose=verbose))
  salience = None
  num_maps = min(values["salience_images"], len(images))
  if num_maps:
    state.stop_if_asked("before the salience maps")
    if verbose:
      print(f"SmoothGrad maps of {num_maps} images", flush=True)
    maps = saliency.smoothgrad(
        model, float_images[:num_maps], labels[:num_maps],
        noise_level=values["smoothgrad_noise"],
        samples=values["smoothgrad_samples"], seed=values["seed"],
        batch_size=values["batch_size"], verbose=verbose)
    path = results.sibling(output, "salience.npz")
    saliency.save_maps(path, float_images[:num_maps], labels[:num_maps],
                       maps)
    salience = {"file": os.path.basename(path),
                "noise_level": values["smoothgrad_noise"],
                "samples": values["smoothgrad_samples"],
                "num_images": num_maps}
  if values["checks"]:
    checks["variables_unchanged"] = integrity.check_variables_unchanged(
        before, integrity.snapshot_variables(model))

  payload = results.write(output, {
      "run": run_entry,
      "eval": {"split": split, "num_examples": len(images),
               "epsilon": values["epsilon"],
               "batch_size": values["batch_size"], "seed": values["seed"],
               "sensitivity_inputs": values["sensitivity_inputs"],
               "sensitivity_attack": sensitivity_attack,
               "input_scale": values["input_scale"]},
      "attacks": evaluation["attacks"],
      "metrics": metrics,
      "checks": checks,
      "salience": salience,
      "time_seconds": time.perf_counter() - start,
      # Their seconds count in the attacks' but not in time_seconds.
      "resumed_batches": state.loaded,
  }, labels, evaluation["per_example"])
  state.remove()
  _print_summary(payload, output)
  return payload


def failed_checks(checks):
  """Names of the failed checks, in order."""
  return [name for name, result in checks.items() if not result["passed"]]


def _print_summary(payload, output):
  what = " ".join(str(payload["run"][k]) for k in ("architecture", "method")
                  if payload["run"].get(k))
  print(f"\n{what} on "
        f"{payload['eval']['num_examples']} {payload['eval']['split']} images "
        f"of {payload['run']['dataset']}, eps {payload['eval']['epsilon']:g}")
  for key, value in payload["metrics"].items():
    print(f"  {key:40s} {value:.4f}")
  for name, result in payload["checks"].items():
    print(f"  check {name:34s} {'ok' if result['passed'] else 'FAILED'}")
  failed = failed_checks(payload["checks"])
  if failed:
    bar = "!" * 78
    lines = [bar] + [
        f"INTEGRITY CHECK FAILED: {name}: "
        f"{payload['checks'][name]['detail']}" for name in failed] + [
            "These numbers cannot be trusted as they stand.", bar]
    print("\n".join(lines), file=sys.stderr, flush=True)
  print(f"results: {output} ({payload['time_seconds']:.1f} s)", flush=True)


def _read_history(path):
  if not tf.io.gfile.exists(path):
    return []
  with tf.io.gfile.GFile(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def watch(values):
  """Sidecar mode: evaluates each new checkpoint of a training run.

  Every checkpoint still on disk that is not yet in RUN/eval_history.jsonl is
  evaluated in step order, so a restarted sidecar resumes where it stopped.
  Each is scored as the trainer validates: clean accuracy and
  ``trainer.VAL_PGD_KEY`` (``trainer.validation_attack`` at the run's
  training epsilon, step and steps, from the run's seed) on the validation
  split, so the sidecar's numbers are the trainer's.

  Args:
    values: dict of this module's flag values.

  Returns:
    The history: one dict per evaluated checkpoint.

  Raises:
    errors.UserError: the run has no validation split, or no record after
      --watch_timeout seconds.
  """
  verbose = progress.from_flag(values["progress"])
  model_dir = values["model_dir"]
  folder = os.path.join(model_dir, "checkpoints")
  # Training writes its record with its first checkpoint, so a sidecar
  # started beside it waits for that.
  if not runs.has_checkpoint(model_dir):
    tf.train.wait_for_new_checkpoint(folder, timeout=values["watch_timeout"])
  record = runs.load_record(model_dir)
  images, labels = load_images(record, values, "val")
  model = runs.build_model(record, data_dir=values["data_dir"],
                           tfds_data_dir=values["tfds_data_dir"])
  checkpoint = tf.train.Checkpoint(model=model)
  spec = trainer.validation_attack(record.epsilon, record.step_size,
                                   record.attack_steps)
  attack = pgd.PGD(name="pgd", display_name="PGD", spec=spec)
  pgd_key = trainer.VAL_PGD_KEY
  history_path = os.path.join(model_dir, WATCH_HISTORY)
  history = _read_history(history_path)
  done = {entry["step"] for entry in history}
  writer = tf.summary.create_file_writer(
      os.path.join(model_dir, WATCH_SUMMARIES))
  if verbose:
    print(f"watching {folder} (PGD-{spec.steps} on cross-entropy, eps "
          f"{spec.epsilon:g}, on {len(images)} validation images)",
          flush=True)
  for _ in tf.train.checkpoints_iterator(folder, timeout=values[
      "watch_timeout"]):
    state = tf.train.get_checkpoint_state(folder)
    pending = sorted((p for p in state.all_model_checkpoint_paths
                      if runs.checkpoint_number(p) not in done),
                     key=runs.checkpoint_number)
    for path in pending:
      step = runs.checkpoint_number(path)
      try:
        checkpoint.restore(path).assert_existing_objects_matched(
        ).expect_partial()
      except tf.errors.NotFoundError:
        # Training keeps only its latest checkpoints and may have deleted
        # this one since it was listed.
        print(f"skipping {path}: deleted before it could be evaluated",
              flush=True)
        continue
      start = time.perf_counter()
      clean = robustness.correct(model, images, labels, values["batch_size"])
      out = robustness.run_attack(model, attack, images, labels,
                                  batch_size=values["batch_size"],
                                  seed=record.seed, verbose=verbose,
                                  robust=clean)
      metrics = {"val/clean_accuracy": float(np.mean(clean)),
                 pgd_key: float(np.mean(out["robust"]))}
      with writer.as_default(step=step):
        for key, value in metrics.items():
          tf.summary.scalar(key, value)
      writer.flush()
      entry = {"step": step, "checkpoint": path, **metrics,
               "attack": spec.record(),
               "time_seconds": time.perf_counter() - start}
      history.append(entry)
      done.add(step)
      files.write_text(history_path, "".join(
          json.dumps(e, sort_keys=True) + "\n" for e in history))
      print(f"step {step}: clean {metrics['val/clean_accuracy']:.4f}, "
            f"PGD-{spec.steps} {metrics[pgd_key]:.4f}", flush=True)
    # Training may have been resumed with more steps: read them each time.
    if max(done, default=-1) >= runs.load_record(model_dir).train_steps:
      break
  return history


def main():
  """Evaluates as the parsed flags say (``python -m rlfat_tf.evaluate``).

  Returns:
    ``cli.CHECK_FAILED`` when an integrity check failed, else None.
  """
  if not FLAGS["verbosity"].present:
    # Every attack compiles its own function, which TensorFlow's retracing
    # heuristic reports as a warning although nothing is retraced.
    tf.get_logger().setLevel("ERROR")
  values = flag_values()
  if values["model"] is not None:
    _only_with_run(values)
  if values["watch"]:
    watch(values)
    return None
  try:
    payload = run(values)
  except preemption.Stopped as e:
    print(e, file=sys.stderr, flush=True)
    return e.status
  return cli.CHECK_FAILED if failed_checks(payload["checks"]) else None


if __name__ == "__main__":
  cli.run_absl(main, define_flags)
