r"""Runs a study of robust generalization: a grid of training runs, evaluated.

Examples:
  python -m rlfat_tf.study --train_flagfile=flags/study/cifar10_cpu_train.cfg \
      --methods=pgdat,rlfat_p --seeds=0,1,2 --eval_examples=2000 \
      --study_dir=studies/cifar10_cpu
  python -m rlfat_tf.study --train_flagfile=flags/cifar10_rlfat_p.cfg \
      --methods=pgdat,rlfat_p --seeds=0,1,2 --train_sizes=5000,49000 \
      --study_dir=studies/c10
  python -m rlfat_tf.study --train_flagfile=flags/study/cifar10_cpu_train.cfg \
      --methods=pgdat,rlfat_p,trades,rlfat_t --train_sizes=250,1000 \
      --train_epochs=160 --eval_examples=1000 --study_dir=studies/c10

Every cell of the grid (--methods x --seeds x --train_sizes) is an ordinary
run folder of ``rlfat_tf.train`` under STUDY/runs/, trained with the settings
of --train_flagfile plus its method, seed and training-set size (and, with
--train_epochs, as many steps as that many epochs of that size take). Set
--monitor_examples and --eval_every there: every run then records, at each
validation step and in inference mode, clean and PGD accuracy on the first N
images it trains on and on the first N test images (``history.json``), the
curves of its generalization gap. Once trained, its last checkpoint, and its
best one when it holds out a validation split, are evaluated with
``rlfat_tf.evaluate`` (--eval_attacks; by default PGD-20 and the standard
AutoAttack) into STUDY/evals/. Robust accuracy is the per-image worst case
over those attacks, and each attack's own accuracy is kept beside it
("final/autoattack", "final/pgd"), so one study gives the verdict under
AutoAttack and under PGD-20 on the same checkpoints.

The study then writes STUDY/study.json (every run's curves and evaluations,
their mean and sample standard deviation over seeds, and each method against
the method it builds on, e.g. RLFAT_P against PGDAT, by Welch's t-test over
seeds), STUDY/study.md (the tables), STUDY/cost.json (what each run cost:
its training's wall-clock seconds, from its summary files, and its
evaluations' attack seconds; their mean over seeds and the total) and three
figures: curves.png (train and test robust accuracy as training goes, per
method and training-set size), gap.png (their difference) and final.png
(final and best accuracies with error bars over seeds).

A study stopped at any point continues where it stopped when the same command
runs again: finished runs and evaluations are kept, an unfinished run resumes
from its last checkpoint, an unfinished evaluation resumes from the batches it
saved (``evalstate``), and the files above are written only once everything is
done (never with --nowrite_outputs: several processes, e.g. one per core, may
each run part of the grid in one study folder, and the whole grid's command
then writes them from the cells they recorded). Each finished cell's entry
and cost are kept in STUDY/cells/, so a study folder copied without its runs/
(the checkpoints: e.g. cells/, evals/ and eval_settings.json committed to a
repository) also continues where it stopped, training only the cells it has
not finished. SIGTERM or Ctrl-C stops it at the
next step or batch boundary with that progress saved, and exits 143 or 130.
The grid may grow between runs of the command; the evaluation settings may
not, since the evaluations already written used them.
"""

import dataclasses
import itertools
import math
import os
import sys

from absl import flags

# Before TensorFlow loads: keep its C++ start-up chatter off the console.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
from scipy import stats
import tensorflow as tf

from rlfat_tf import attacks
from rlfat_tf import cli
from rlfat_tf import errors
from rlfat_tf import evaluate
from rlfat_tf import figures
from rlfat_tf import files
from rlfat_tf import methods
from rlfat_tf import preemption
from rlfat_tf import progress
from rlfat_tf import runs
from rlfat_tf import train
from rlfat_tf.trainer import actions

# 2: study.json holds "comparisons". 3: the summaries and comparisons hold
# each evaluation attack's own accuracy too ("final/<attack>").
SCHEMA_VERSION = 3
EVAL_SETTINGS_FILE = "eval_settings.json"
# What the runs cost, apart from study.json: seconds differ from one run of
# the study to the next, and study.json does not.
COST_FILE = "cost.json"
# Each finished cell's study.json entry and cost, so that a study folder
# kept without its runs/ (the checkpoints) still holds everything it reports.
CELLS_DIR = "cells"
# The settings a recorded cell may differ in from the one asked: where the
# data is and how the run displays its progress, not what it computes. Every
# other one, the number of steps among them, shapes what the cell reports.
RECORDED_MAY_DIFFER = frozenset(
    {"data_dir", "tfds_data_dir", "memory_budget_gib", "progress",
     "keep_checkpoints"})
# The metrics a study reports, by its own short names.
CLEAN = "test/clean_accuracy"
ROBUST = "test/overall_worst_case_accuracy"
TRAIN_CLEAN, TRAIN_ROBUST = actions.eval_keys("train_subset")
TEST_CLEAN, TEST_ROBUST = actions.eval_keys("test_subset")
# Per-run numbers that the table and study.json summarise over seeds.
SUMMARY_KEYS = (
    "final/clean", "final/robust", "best/clean", "best/robust", "best/step",
    "curve/test_robust_peak", "curve/test_robust_peak_step",
    "curve/test_robust_final", "curve/test_robust_drop",
    "curve/train_robust_final", "curve/robust_gap_final")
# What a method is compared on against the method it builds on (RLFAT_P
# against PGDAT): test accuracies, and how much the robust gap and the fall
# from the test robust peak shrink.
COMPARED_KEYS = (
    "final/clean", "final/robust", "best/clean", "best/robust",
    "curve/robust_gap_final", "curve/test_robust_drop")


# Each attack's own accuracy at each checkpoint, in the registry's order.
ALONE_KEYS = tuple(f"{which}/{name}" for which in ("final", "best")
                   for name in attacks.NAMES)


def attack_keys(entries):
  """The per-attack keys the runs' summaries hold: "final/<attack>" and
  "best/<attack>", the accuracy under each evaluation attack alone, in the
  registry's order (e.g. "final/pgd", "final/autoattack")."""
  held = set().union(*(e["summary"] for e in entries)) if entries else set()
  return tuple(key for key in ALONE_KEYS if key in held)


def _ints(values):
  try:
    return [int(v) for v in values]
  except ValueError:
    return None


def define_flags(flag_values=flags.FLAGS):
  """Defines the command's flags in ``flag_values``; ``__main__`` calls it."""
  fv = {"flag_values": flag_values}
  flags.DEFINE_string("study_dir", None, "Folder of the study: runs/, evals/, "
                      "study.json, study.md and the figures.", **fv)
  flags.DEFINE_string("train_flagfile", None, "Flagfile of rlfat_tf.train "
                      "with the settings every run shares (dataset, model, "
                      "steps, --monitor_examples, --eval_every, ...); the "
                      "study adds --method, --seed, --train_size and "
                      "--model_dir.", **fv)
  flags.DEFINE_list("methods", ["pgdat", "rlfat_p"], "Methods to train: "
                    f"{', '.join(methods.METHODS)}.", **fv)
  flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds of the runs of each "
                    "method and training-set size.", **fv)
  flags.DEFINE_list("train_sizes", [], "Training-set sizes (--train_size of "
                    "rlfat_tf.train); empty: the whole training set.", **fv)
  flags.DEFINE_integer("train_epochs", None, "Train every run for this many "
                       "passes over its training set: --train_steps = "
                       "ceil(epochs x size / --batch_size), so that larger "
                       "sizes train longer (default: the train flagfile's "
                       "--train_steps for every size).", lower_bound=1, **fv)
  flags.DEFINE_list("eval_attacks", ["pgd", "autoattack"], "Attacks of the "
                    "final evaluation (--attacks of rlfat_tf.evaluate); the "
                    "robust accuracy reported is the per-image worst case "
                    "over all of them.", **fv)
  flags.DEFINE_integer("eval_examples", None, "Evaluate on the first N test "
                       "images (default: all).", lower_bound=1, **fv)
  flags.DEFINE_integer("eval_batch_size", 100, "Images per compiled attack "
                       "call of the evaluation.", lower_bound=1, **fv)
  flags.DEFINE_bool("eval_checks", False, "Run the integrity checks in every "
                    "evaluation (slower; a failure is recorded in "
                    "study.json).", **fv)
  flags.DEFINE_bool("write_outputs", True, "Once every cell is done, write "
                    "study.json, study.md, cost.json and the figures; with "
                    "--nowrite_outputs only train, evaluate and record the "
                    "cells (STUDY/cells/), so that processes sharing a "
                    "study folder, each on part of the grid, leave its "
                    "files to the command that runs the whole grid.", **fv)
  flags.DEFINE_bool("progress", None, progress.FLAG_HELP, **fv)
  flags.mark_flags_as_required(["study_dir", "train_flagfile"], **fv)
  flags.register_validator(
      "methods", lambda v: bool(v) and set(v) <= set(methods.METHODS)
      and len(set(v)) == len(v),
      message=f"--methods must be distinct names from "
      f"{','.join(methods.METHODS)}", **fv)
  flags.register_validator(
      "seeds", lambda v: bool(v) and _ints(v) is not None and len(set(v))
      == len(v) and all(s >= 0 for s in _ints(v)),
      message="--seeds must be distinct non-negative integers, e.g. 0,1,2",
      **fv)
  flags.register_validator(
      "train_sizes", lambda v: _ints(v) is not None and all(
          n > 0 for n in _ints(v)) and len(set(v)) == len(v),
      message="--train_sizes must be distinct positive integers, e.g. "
      "1000,5000", **fv)
  flags.register_validator(
      "eval_attacks", lambda v: bool(v) and set(v) <= set(attacks.NAMES),
      message=f"--eval_attacks must be a non-empty list from "
      f"{','.join(attacks.NAMES)}", **fv)


def parsed_values(flag_values=flags.FLAGS):
  """The parsed values of the flags ``define_flags`` defined, by name."""
  return cli.module_values(__name__, flag_values)


@dataclasses.dataclass(frozen=True)
class Cell:
  """One run of the grid.

  Attributes:
    method: the method's name.
    seed: the run's seed.
    train_size: its --train_size, or None to keep the train flagfile's.
  """
  method: str
  seed: int
  train_size: int | None


def grid(values):
  """The cells of the study, method-major, in the order the flags list them.

  Seeds vary fastest, so an interrupted study has finished whole groups of
  seeds of the first methods.
  """
  sizes = [int(n) for n in values["train_sizes"]] or [None]
  return [Cell(m, int(s), n) for m, n, s in itertools.product(
      values["methods"], sizes, values["seeds"])]


def run_name(record):
  """A run's folder name, e.g. "pgdat_n1000_s0" ("nall": every image)."""
  size = "all" if record.train_size is None else record.train_size
  return f"{record.method}_n{size}_s{record.seed}"


def run_record(values, cell):
  """``(model_dir, record)`` of a cell: the train flagfile plus the cell.

  Raises:
    errors.UserError: the flagfile cannot be read or sets bad flags.
  """
  path = values["train_flagfile"]
  if not tf.io.gfile.exists(path):
    raise errors.UserError(f"--train_flagfile={path} does not exist: pass a "
                           f"flagfile of rlfat_tf.train, e.g. "
                           f"flags/study/cifar10_cpu_train.cfg")
  # The folder is named after the resolved settings, which --model_dir
  # does not shape.
  argv = ["train", f"--flagfile={path}", f"--method={cell.method}",
          f"--seed={cell.seed}", "--model_dir=unused",
          *progress.flag_argv(values["progress"])]
  if cell.train_size is not None:
    argv.append(f"--train_size={cell.train_size}")
  record = _train_record(argv, path)
  epochs = values.get("train_epochs")
  if epochs is not None:
    if record.train_size is None:
      raise errors.UserError(
          f"--train_epochs needs each run's training-set size: pass "
          f"--train_sizes, or set --train_size in {path}")
    steps = math.ceil(epochs * record.train_size / record.batch_size)
    record = _train_record([*argv, f"--train_steps={steps}"], path)
  return (os.path.join(values["study_dir"], "runs", run_name(record)),
          record)


def _train_record(argv, path):
  try:
    return train.values_from_argv(argv)[1]
  except flags.Error as e:
    raise errors.UserError(f"--train_flagfile={path}: {e}") from None


def eval_settings(values):
  """The evaluation settings every evaluation of the study uses."""
  return {"attacks": list(values["eval_attacks"]),
          "num_examples": values["eval_examples"],
          "batch_size": values["eval_batch_size"],
          "checks": values["eval_checks"]}


def _eval_values(values, model_dir, which, output):
  settings = eval_settings(values)
  argv = ["evaluate", f"--model_dir={model_dir}", f"--which={which}",
          f"--output={output}", f"--attacks={','.join(settings['attacks'])}",
          f"--batch_size={settings['batch_size']}",
          "--checks" if settings["checks"] else "--nochecks",
          "--brightness=", "--gamma=", "--salience_images=0",
          *progress.flag_argv(values["progress"])]
  if settings["num_examples"] is not None:
    argv.append(f"--num_examples={settings['num_examples']}")
  try:
    return evaluate.values_from_argv(argv)
  except flags.Error as e:
    raise errors.UserError(f"evaluation flags: {e}") from None


def _check_eval_settings(values):
  """Records the evaluation settings, or refuses ones that differ."""
  path = os.path.join(values["study_dir"], EVAL_SETTINGS_FILE)
  settings = eval_settings(values)
  if tf.io.gfile.exists(path):
    before = runs.read_json(path)
    if before != settings:
      changed = sorted(k for k in settings if before.get(k) != settings[k])
      raise errors.UserError(
          f"{values['study_dir']} was evaluated with {changed[0]} = "
          f"{before.get(changed[0])!r}, not {settings[changed[0]]!r}: rerun "
          f"with the study's evaluation flags, or use a new --study_dir")
    return
  files.write_json(path, settings)


def _trained(model_dir, record):
  """Whether the run's last checkpoint is at its final step."""
  if not runs.has_checkpoint(model_dir):
    return False
  path = runs.checkpoint_path(model_dir)
  return runs.checkpoint_number(path) >= record.train_steps


def run_cell(values, model_dir, record, log=print):
  """Trains a cell's run (or resumes it) and evaluates its checkpoints.

  Work already on disk is kept: a finished run is not trained again, and an
  evaluation whose file exists is not run again.

  Args:
    values: this module's flag values.
    model_dir, record: the cell's run (``run_record``).
    log: prints a progress line.

  Returns:
    ``{which: results file}``.
  """
  name = run_name(record)
  if not _trained(model_dir, record):
    log(f"== training {name}")
    train.run(model_dir, record)
    keras.backend.clear_session()
  which_list = ["last"] + (["best"] if record.val_size else [])
  outputs = {}
  for which in which_list:
    output = os.path.join(values["study_dir"], "evals",
                          f"{name}_{which}.json")
    if not tf.io.gfile.exists(output):
      log(f"== evaluating the {which} checkpoint of {name}")
      evaluate.run(_eval_values(values, model_dir, which, output))
      keras.backend.clear_session()
    outputs[which] = output
  return outputs


def training_seconds(model_dir):
  """Wall-clock seconds the run's training took, from its summary files.

  Each process that trains the run writes its own file, whose first event
  is stamped when the file is made and whose last is the last summary, so
  the sum over files leaves out the pauses between a stop and its resume.

  Returns:
    The seconds, or None for a run without summaries.
  """
  paths = tf.io.gfile.glob(os.path.join(model_dir, "summaries",
                                        "events.out.tfevents.*"))
  total = None
  for path in sorted(paths):
    stamps = [tf.compat.v1.Event.FromString(record.numpy()).wall_time
              for record in tf.data.TFRecordDataset(path)]
    if stamps:
      total = (total or 0.0) + max(stamps) - min(stamps)
  return total


def evaluation_seconds(results):
  """Seconds an evaluation's attacks took, batches taken from a stopped run's
  saved progress included at what they cost when they ran."""
  return float(sum(a["seconds"] for a in results["attacks"].values()))


def curves(model_dir):
  """The run's monitored scores at each validation step, from history.json.

  Returns:
    A list of ``{"step": s, key: value}`` with the train_subset/ and
    test_subset/ scores (and the validation ones when present).
  """
  path = os.path.join(model_dir, actions.HISTORY_FILE)
  if not tf.io.gfile.exists(path):
    return []
  keep = ("val/", "train_subset/", "test_subset/")
  out = []
  for entry in runs.read_json(path):
    scores = {k: v for k, v in entry.items() if k.startswith(keep)}
    if scores:
      out.append({"step": entry["step"], **scores})
  return out


def curve_summary(points):
  """Where the test robust curve peaks, and the gap at the end.

  Args:
    points: ``curves`` of one run.

  Returns:
    The ``curve/`` numbers of ``SUMMARY_KEYS`` (empty without monitoring).
  """
  points = [p for p in points if TEST_ROBUST in p and TRAIN_ROBUST in p]
  if not points:
    return {}
  # The first of equal peaks: the earliest step that reached it.
  peak = max(points, key=lambda p: (p[TEST_ROBUST], -p["step"]))
  last = points[-1]
  return {"curve/test_robust_peak": peak[TEST_ROBUST],
          "curve/test_robust_peak_step": peak["step"],
          "curve/test_robust_final": last[TEST_ROBUST],
          "curve/test_robust_drop": peak[TEST_ROBUST] - last[TEST_ROBUST],
          "curve/train_robust_final": last[TRAIN_ROBUST],
          "curve/robust_gap_final": last[TRAIN_ROBUST] - last[TEST_ROBUST]}


def run_entry(values, model_dir, record, outputs):
  """The study.json entry of one run: curves, evaluations, summary numbers."""
  points = curves(model_dir)
  entry = {"name": run_name(record), "method": record.method,
           "seed": record.seed, "train_size": record.train_size,
           "model_dir": os.path.relpath(model_dir, values["study_dir"]),
           "train_record": record.to_json(), "curves": points,
           "evaluations": {}, "summary": curve_summary(points)}
  for which, output in outputs.items():
    results = runs.read_json(output)
    key = "final" if which == "last" else "best"
    step = runs.checkpoint_number(results["run"]["checkpoint"])
    failed = evaluate.failed_checks(results["checks"])
    entry["evaluations"][key] = {
        "file": os.path.relpath(output, values["study_dir"]),
        "step": step, "metrics": results["metrics"],
        "failed_checks": failed}
    entry["summary"][f"{key}/clean"] = results["metrics"][CLEAN]
    entry["summary"][f"{key}/robust"] = results["metrics"][ROBUST]
    for attack in values["eval_attacks"]:
      entry["summary"][f"{key}/{attack}"] = (
          results["metrics"][f"test/{attack}_accuracy"])
    if key == "best":
      entry["summary"]["best/step"] = step
  return entry


def run_cost(model_dir, outputs):
  """What one run cost: its training's and its evaluations' seconds.

  Args:
    model_dir: the run folder.
    outputs: ``{which: results file}`` of its evaluations.

  Returns:
    ``{"train_seconds": float or None, "eval_seconds": float}``.
  """
  return {"train_seconds": training_seconds(model_dir),
          "eval_seconds": sum(evaluation_seconds(runs.read_json(output))
                              for output in outputs.values())}


def cost_report(entries, costs):
  """cost.json: each run's cost, their mean over seeds, and the total.

  Args:
    entries: the runs' study.json entries.
    costs: ``run_cost`` of each, in the same order.
  """
  rows = [{"name": e["name"], "method": e["method"], "seed": e["seed"],
           "train_size": e["train_size"], **c}
          for e, c in zip(entries, costs)]
  summary = []
  for (method, size), group in _groups(rows).items():
    row = {"method": method, "train_size": size,
           "display_name": methods.get(method).display_name,
           "seeds": [r["seed"] for r in group]}
    for key in ("train_seconds", "eval_seconds"):
      if all(r[key] is not None for r in group):
        row[key] = mean_std([r[key] for r in group])
    summary.append(row)
  return {"runs": rows, "summary": summary,
          "total": {key: sum(r[key] or 0.0 for r in rows)
                    for key in ("train_seconds", "eval_seconds")}}


def mean_std(numbers):
  """``{"mean", "std", "n"}``; std is the sample standard deviation (None
  for one number)."""
  numbers = np.asarray(numbers, np.float64)
  return {"mean": float(numbers.mean()),
          "std": float(numbers.std(ddof=1)) if len(numbers) > 1 else None,
          "n": len(numbers)}


def _groups(entries):
  """``{(method, train_size): [entries of its seeds]}``, in grid order."""
  groups = {}
  for entry in entries:
    groups.setdefault((entry["method"], entry["train_size"]), []).append(
        entry)
  return groups


def summarise(entries):
  """Mean and standard deviation over seeds of each method and size."""
  groups = _groups(entries)
  out = []
  for (method, size), group in groups.items():
    row = {"method": method,
           "display_name": methods.get(method).display_name,
           "train_size": size, "seeds": [e["seed"] for e in group]}
    for key in SUMMARY_KEYS + attack_keys(group):
      numbers = [e["summary"][key] for e in group if key in e["summary"]]
      if len(numbers) == len(group):
        row[key] = mean_std(numbers)
    out.append(row)
  return out


def welch(a, b):
  """Welch's t-test of mean(a) - mean(b), for groups of unequal variance.

  Returns:
    ``{"difference", "t", "df", "p"}``, p two-sided; t, df and p are None
    when a group has one number or both have no spread, where seed noise
    cannot be estimated.
  """
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  out = {"difference": float(a.mean() - b.mean()), "t": None, "df": None,
         "p": None}
  if min(len(a), len(b)) < 2 or (np.ptp(a) == 0 and np.ptp(b) == 0):
    return out
  test = stats.ttest_ind(a, b, equal_var=False)
  out.update(t=float(test.statistic), df=float(test.df),
             p=float(test.pvalue))
  return out


def compare(entries):
  """Each method against the method it builds on, per training-set size.

  Seeds are independent samples of each method, so the test is Welch's
  two-sample t-test over seeds (``welch``) on each of ``COMPARED_KEYS``.

  Returns:
    A list of ``{"method", "baseline", "train_size", key: welch(...)}``,
    one per method whose baseline is in the study too.
  """
  groups = _groups(entries)
  out = []
  for (method, size), group in groups.items():
    base = methods.get(method).framework
    if base == method or (base, size) not in groups:
      continue
    row = {"method": method, "baseline": base, "train_size": size}
    for key in COMPARED_KEYS + attack_keys(group):
      ours = [e["summary"][key] for e in group if key in e["summary"]]
      theirs = [e["summary"][key] for e in groups[(base, size)]
                if key in e["summary"]]
      if ours and theirs:
        row[key] = welch(ours, theirs)
    out.append(row)
  return out


def _score(key):
  """A point's score named ``key``, or None where it was not measured."""
  return lambda point: point.get(key)


def _gap(point):
  """Train minus test robust accuracy at a point, or None."""
  if TRAIN_ROBUST in point and TEST_ROBUST in point:
    return point[TRAIN_ROBUST] - point[TEST_ROBUST]
  return None


def mean_curves(entries, value):
  """Mean and std over seeds of one curve, per method and size.

  Args:
    entries: the runs' study.json entries.
    value: ``point -> number or None`` (``_score(key)``, ``_gap``).

  Returns:
    A list of ``{"method", "train_size", "steps", "mean", "std"}``, over the
    steps every seed of the group measured.
  """
  groups = {}
  for entry in entries:
    points = {p["step"]: value(p) for p in entry["curves"]
              if value(p) is not None}
    groups.setdefault((entry["method"], entry["train_size"]), []).append(
        points)
  out = []
  for (method, size), group in groups.items():
    steps = sorted(set.intersection(*(set(p) for p in group)))
    if not steps:
      continue
    values = np.array([[p[s] for s in steps] for p in group])
    out.append({"method": method, "train_size": size, "steps": steps,
                "mean": values.mean(axis=0).tolist(),
                "std": (values.std(axis=0, ddof=1).tolist()
                        if len(group) > 1 else [0.0] * len(steps))})
  return out


def _cell_label(row):
  name = methods.get(row["method"]).display_name
  return name if row["train_size"] is None else f"{name}, n={row['train_size']}"


def _fmt(stat, percent=True):
  """Mean ± std of an accuracy (in percent, one decimal) or a step."""
  if stat is None:
    return ""
  scale, digits = (100.0, 1) if percent else (1.0, 0)
  text = f"{scale * stat['mean']:.{digits}f}"
  if stat["std"] is not None:
    text += f" ± {scale * stat['std']:.{digits}f}"
  return text


def table(summary):
  """The study's Markdown table: one row per method and training-set size.

  Robust is the per-image worst case over the evaluation attacks; the
  accuracy under each of them alone follows it.
  """
  def alone(which):
    return [(f"{which}/{name}", f"{which} {entry.display_name}")
            for name, entry in attacks.ATTACKS.items()]

  columns = [
      ("final/clean", "final clean"), ("final/robust", "final robust"),
      *alone("final"),
      ("best/clean", "best clean"), ("best/robust", "best robust"),
      *alone("best"), ("best/step", "best step"),
      ("curve/test_robust_peak", "test robust peak (curve)"),
      ("curve/test_robust_peak_step", "peak step"),
      ("curve/test_robust_final", "test robust end (curve)"),
      ("curve/train_robust_final", "train robust end (curve)"),
      ("curve/robust_gap_final", "gap end")]
  columns = [(k, t) for k, t in columns if any(k in row for row in summary)]
  lines = ["| model | seeds | " + " | ".join(t for _, t in columns) + " |",
           "|---|---|" + "---|" * len(columns)]
  for row in summary:
    cells = [_fmt(row.get(k), percent="step" not in k) for k, _ in columns]
    lines.append(f"| {_cell_label(row)} | {len(row['seeds'])} | "
                 + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def comparison_table(comparisons):
  """Markdown: each comparison's difference in points, t, df and p."""
  if not comparisons:
    return ""
  lines = ["| comparison | measure | difference (points) | t | df | p |",
           "|---|---|---|---|---|---|"]
  for row in comparisons:
    name = (f"{methods.get(row['method']).display_name} − "
            f"{methods.get(row['baseline']).display_name}")
    if row["train_size"] is not None:
      name += f", n={row['train_size']}"
    for key in (k for k in COMPARED_KEYS + ALONE_KEYS if k in row):
      test = row[key]
      numbers = ([f"{test['t']:.2f}", f"{test['df']:.1f}",
                  f"{test['p']:.3f}" if test["p"] >= 0.001 else "< 0.001"]
                 if test["t"] is not None else ["", "", ""])
      lines.append(f"| {name} | {key} | {100 * test['difference']:+.1f} | "
                   + " | ".join(numbers) + " |")
  return "\n".join(lines) + "\n"


def _drawn(entries):
  """How the curve figures draw a ``mean_curves`` curve, and their x label.

  Sizes train for different numbers of steps, so curves are drawn over
  epochs of their own training set (over steps when a run trains on the
  whole set, whose size the study does not know), one panel per size.

  Returns:
    ``(drawn, xlabel)``: ``drawn(curve, label, dashed)`` is the
    ``figures.study_curves`` series of a curve.
  """
  sizes = list(dict.fromkeys(e["train_size"] for e in entries))
  batch = {(e["method"], e["train_size"]): e["train_record"]["batch_size"]
           for e in entries}
  per_epoch = None not in sizes

  def drawn(curve, label, dashed):
    size = curve["train_size"]
    x = curve["steps"]
    if per_epoch:
      x = [s * batch[(curve["method"], size)] / size for s in x]
    panel = None
    if len(sizes) > 1:
      panel = ("all training images" if size is None
               else f"{size:,} training images")
    return {**curve, "label": label, "dashed": dashed, "x": x,
            "group": methods.get(curve["method"]).display_name,
            "panel": panel}

  return drawn, "epoch" if per_epoch else "training step"


def write_outputs(values, entries, costs=None):
  """Writes study.json, study.md, the figures and, given each entry's
  ``run_cost``, cost.json; returns the study.json payload."""
  study_dir = values["study_dir"]
  summary = summarise(entries)
  comparisons = compare(entries)
  payload = {
      "schema_version": SCHEMA_VERSION,
      "grid": {"methods": list(values["methods"]),
               "seeds": [int(s) for s in values["seeds"]],
               "train_sizes": [int(n) for n in values["train_sizes"]]},
      "evaluation": eval_settings(values),
      "metrics": {"clean": CLEAN, "robust": ROBUST,
                  "train_curve": [TRAIN_CLEAN, TRAIN_ROBUST],
                  "test_curve": [TEST_CLEAN, TEST_ROBUST]},
      "runs": entries,
      "summary": summary,
      "comparisons": comparisons,
  }
  files.write_json(os.path.join(study_dir, "study.json"), payload)
  if costs is not None:
    files.write_json(os.path.join(study_dir, COST_FILE),
                     cost_report(entries, costs))
  tables = table(summary)
  if comparisons:
    tables += "\n" + comparison_table(comparisons)
  files.write_text(os.path.join(study_dir, "study.md"), tables)
  drawn, xlabel = _drawn(entries)
  series = [
      drawn(curve, f"{_cell_label(curve)}, {which}", dashed=which == "train")
      for key, which in ((TRAIN_ROBUST, "train"), (TEST_ROBUST, "test"))
      for curve in mean_curves(entries, _score(key))]
  if series:
    figures.study_curves(series, os.path.join(study_dir, "curves.png"),
                         "robust accuracy (%)", xlabel)
    gaps = [drawn(curve, _cell_label(curve), dashed=False)
            for curve in mean_curves(entries, _gap)]
    figures.study_curves(gaps, os.path.join(study_dir, "gap.png"),
                         "train − test robust accuracy (points)", xlabel)
  bars = [{"label": _cell_label(row),
           "values": {name: row[key] for key, name in (
               ("final/clean", "final clean"),
               ("final/robust", "final robust"),
               ("best/clean", "best clean"), ("best/robust", "best robust"))
                      if key in row}} for row in summary]
  figures.error_bars(bars, os.path.join(study_dir, "final.png"))
  return payload


def cell_path(values, record):
  """Where a finished cell's entry and cost are kept: STUDY/cells/NAME.json."""
  return os.path.join(values["study_dir"], CELLS_DIR,
                      f"{run_name(record)}.json")


def recorded_cell(values, record):
  """A finished cell's ``{"entry", "cost"}`` from STUDY/cells/, or None.

  Raises:
    errors.UserError: the cell was trained with a setting the train
      flagfile now changes.
  """
  path = cell_path(values, record)
  if not tf.io.gfile.exists(path):
    return None
  cell = runs.read_json(path)
  trained = runs.RunRecord.from_json(cell["entry"]["train_record"], path)
  changed = runs.changed_setting(trained, record, RECORDED_MAY_DIFFER)
  if changed:
    name, old, new = changed
    raise errors.UserError(
        f"{path} records a run trained with --{name}={old}, not {new}: "
        f"pass the study's train flags, or use a new --study_dir")
  return cell


def finish_cell(values, model_dir, record, log=print):
  """Trains and evaluates a cell (``run_cell``) and records it in cells/.

  Returns:
    The cell's ``{"entry", "cost"}``.
  """
  outputs = run_cell(values, model_dir, record, log)
  cell = {"entry": run_entry(values, model_dir, record, outputs),
          "cost": run_cost(model_dir, outputs)}
  path = cell_path(values, record)
  tf.io.gfile.makedirs(os.path.dirname(path))
  files.write_json(path, cell)
  return cell


def run(values, log=print):
  """Runs (or continues) the whole study and writes its outputs.

  A cell recorded in STUDY/cells/ is taken from there, with or without its
  run folder; the others are trained and evaluated, or resumed.

  Args:
    values: dict of this module's flag values.
    log: prints a progress line.

  Returns:
    The study.json payload, or None with ``values["write_outputs"]`` off.

  Raises:
    errors.UserError: bad input, here or in a run's settings.
  """
  study_dir = values["study_dir"]
  files.check_writable(study_dir, "--study_dir")
  tf.io.gfile.makedirs(study_dir)
  planned = [run_record(values, cell) for cell in grid(values)]
  # Every run's settings are checked before the first one trains.
  recorded = [recorded_cell(values, record) for _, record in planned]
  for (model_dir, record), cell in zip(planned, recorded):
    if cell is None:
      runs.check_resume(model_dir, record)
  _check_eval_settings(values)
  cells = []
  for i, ((model_dir, record), cell) in enumerate(zip(planned, recorded)):
    log(f"== run {i + 1} of {len(planned)}")
    cells.append(cell or finish_cell(values, model_dir, record, log))
  if not values["write_outputs"]:
    log(f"study: cells recorded in {os.path.join(study_dir, CELLS_DIR)}; "
        "the whole grid's command writes study.json from them")
    return None
  payload = write_outputs(values, [c["entry"] for c in cells],
                          [c["cost"] for c in cells])
  log(f"study: {os.path.join(study_dir, 'study.json')}")
  return payload


def main():
  """Runs the study the parsed flags describe (``python -m rlfat_tf.study``)."""
  if not flags.FLAGS["verbosity"].present:
    tf.get_logger().setLevel("ERROR")
  try:
    run(parsed_values())
  except preemption.Stopped as e:
    # A run's training or evaluation saved its progress; the same command
    # resumes the study there.
    print(e, file=sys.stderr, flush=True)
    return e.status
  return None


if __name__ == "__main__":
  cli.run_absl(main, define_flags)
