r"""Writes the generated blocks of the documentation from the results files.

The measured tables of README.md and docs/*.md are not typed: each sits in a
marked block,

  <!-- generated: NAME -->
  ...
  <!-- end generated -->

whose text this module writes from the committed files under results/ (with
``rlfat_tf.report``'s and ``rlfat_tf.study``'s own table functions where they
exist), together with the command that measured it, the machine it ran on
and the date. ``tests/test_pages.py`` fails when a page's block differs from
what this module writes now, so a results file edited by hand, a table edited
by hand, or a new results file not yet rendered all show.

  python -m rlfat_tf.pages           # rewrites every block, prints the pages changed
  python -m rlfat_tf.pages --check   # writes nothing; exit 1 naming each stale block

A block whose results file is absent (a benchmark not measured yet) says so
and names the command that measures it; adding the file and rerunning the
first command renders it.

The module also holds the documentation's docstring check
(``missing_docstrings``): the public names of ``rlfat_tf`` (its ``_PUBLIC``
table) and the members their reference pages show, read from the source
without importing anything. ``docs/hooks.py`` fails ``mkdocs build`` on any
name it returns.

Nothing here imports TensorFlow at module level: the docstring check and the
block parser run without it; rendering a block imports ``rlfat_tf.report``.
"""

import ast
import dataclasses
import json
import os
import pathlib
import re
import shutil
import sys

from rlfat_tf import cli
from rlfat_tf import errors

ROOT = pathlib.Path(__file__).resolve().parents[1]
PAGES = ("README.md", "docs/*.md")
START = re.compile(r"^<!-- generated: ([a-z0-9_]+) -->$")
END = "<!-- end generated -->"
MISSING = "—"

# The machine every committed measurement ran on (the results files record
# its platform, cores and versions; this says what they cannot).
MACHINE = "the project's 2-core x86 CPU machine, no GPU"


def _read_json(path):
  with open(ROOT / path, encoding="utf-8") as f:
    return json.load(f)


def _exists(path):
  return (ROOT / path).is_file()


def _command(text):
  return ["```", text.strip("\n"), "```"]


def _hardware(result):
  """'Linux-..., 2 CPUs, TensorFlow 2.21.0, Keras 3.15.1' of a results file."""
  hw = result.data.get("hardware") or {}
  parts = [hw.get("platform", "")]
  if "cpu_count" in hw:
    parts.append(f"{hw['cpu_count']} CPUs")
  parts += [f"{name} {hw[key]}" for key, name in
            (("tensorflow", "TensorFlow"), ("keras", "Keras")) if key in hw]
  return ", ".join(p for p in parts if p) or "unrecorded"


def _machines(results):
  """The distinct hardware lines of several results files."""
  return "; ".join(dict.fromkeys(_hardware(r) for r in results))


def _minutes(seconds):
  return MISSING if seconds is None else f"{seconds / 60:.0f} min"


def _seconds(seconds):
  return MISSING if seconds is None else f"{seconds:,.0f} s"


# --- Table 1 with AutoAttack: the committed models under models/ -----------

MODELS = ("pgdat", "rbsat_p", "rlfat_p")
AUTOATTACK_FILES = tuple(f"results/c10_wrn10-2_{m}_autoattack.json"
                         for m in MODELS)
SENSITIVITY_FILES = tuple(f"results/c10_wrn10-2_{m}_sensitivity.json"
                          for m in MODELS)
AUTOATTACK_DATE = "2026-12-02"
AUTOATTACK_COMMAND = """
for m in pgdat rbsat_p rlfat_p; do
  python -m rlfat_tf.evaluate --model_dir=models/c10_wrn10-2_$m --data_dir=../shared/data --num_examples=1000 \\
      --attacks=pgd,autoattack --nochecks --salience_images=0 --noprogress \\
      --output=results/c10_wrn10-2_${m}_autoattack.json
done"""
AUTOATTACK_LOAD = ("each evaluation one single-threaded process pinned to its "
                   "own core (`taskset -c <core>`, `TF_NUM_INTRAOP_THREADS=1`),"
                   " two at a time")
COMPONENTS = ("apgd_ce", "apgd_t", "fab_t", "square")


def _load(paths):
  from rlfat_tf import report  # pylint: disable=import-outside-toplevel
  return report.load_results([str(ROOT / p) for p in paths])


def _relative(result):
  return os.path.relpath(result.path, ROOT)


def _autoattack_rows(results):
  from rlfat_tf import report  # pylint: disable=import-outside-toplevel
  rows = []
  for r in report.ordered(results):
    aa, pgd = r.accuracy("autoattack"), r.accuracy("pgd")
    gap = (MISSING if None in (aa, pgd)
           else f"{100 * (aa - pgd):+.1f}".replace("-", "−"))
    rows.append((r, aa, pgd, gap))
  return rows


def autoattack_headline():
  """README's table: clean, PGD-20 and AutoAttack of the committed models."""
  from rlfat_tf import report  # pylint: disable=import-outside-toplevel
  results = _load(AUTOATTACK_FILES)
  rows = [[f"{r.label} (`models/c10_wrn10-2_{r.method}`)",
           report.percent(r.accuracy("clean")), report.percent(pgd),
           f"**{report.percent(aa)}**", gap]
          for r, aa, pgd, gap in _autoattack_rows(results)]
  ev = results[0].data["eval"]
  lines = report.markdown_table(
      ["Model", "Clean", "PGD-20", "AutoAttack", "AutoAttack − PGD-20"], rows)
  lines += ["", f"Accuracy (%) on the first {ev['num_examples']:,} CIFAR-10 "
            f"test images, L∞ ε = {ev['epsilon']:g}, standard AutoAttack "
            "(APGD-CE, APGD-T, FAB-T, Square). WRN-10-2, 2,000 training "
            "steps on a CPU: a demonstration of the pipeline, not the "
            "paper's WRN-34-10 numbers. Measured on "
            f"{AUTOATTACK_DATE}, {MACHINE} ({_machines(results)}), "
            f"{AUTOATTACK_LOAD}; from "
            + ", ".join(f"`{_relative(r)}`" for r in report.ordered(results))
            + ", by:", ""]
  return lines + _command(AUTOATTACK_COMMAND)


def table1_autoattack():
  """The report's Table 1 of the AutoAttack files, and each component."""
  from rlfat_tf import report  # pylint: disable=import-outside-toplevel
  results = _load(AUTOATTACK_FILES)
  lines = report.table1(results) + [""]
  header = (["Model", "Clean", "PGD-20"]
            + [f"after {report.ATTACK_NAMES[c]}" for c in COMPONENTS]
            + ["AutoAttack − PGD-20", "seconds per component", "whole command"])
  rows = []
  for r, aa, pgd, gap in _autoattack_rows(results):
    after = [report.percent(r.metrics.get(f"{r.split}/autoattack/after_{c}"
                                          "_accuracy")) for c in COMPONENTS]
    after[-1] = f"**{after[-1]}**"
    entry = r.data["attacks"]["autoattack"]
    seconds = " / ".join(f"{entry[c]['seconds']:,.0f}" for c in COMPONENTS)
    rows.append([r.label, report.percent(r.accuracy("clean")),
                 report.percent(pgd)] + after
                + [gap, seconds, _minutes(r.data.get("time_seconds"))])
  lines += report.markdown_table(header, rows)
  lines += ["", "After each component: the accuracy left once it has run "
            "(the last is AutoAttack's). Seconds per component: APGD-CE / "
            "APGD-T / FAB-T / Square, as each results file records them; "
            "the whole command also measured PGD-20 and Table 2. Measured on "
            f"{AUTOATTACK_DATE}, {MACHINE} ({_machines(results)}), "
            f"{AUTOATTACK_LOAD}, by:", ""]
  lines += _command(AUTOATTACK_COMMAND)
  lines += ["", "Its report (Table 1 above, with the runs and figures):", ""]
  lines += _command("python -m rlfat_tf.report --output_dir=report --results="
                    + ",".join(AUTOATTACK_FILES))
  return lines


SENSITIVITY_COMMAND = """
for m in pgdat rbsat_p rlfat_p; do
  python -m rlfat_tf.evaluate --model_dir=models/c10_wrn10-2_$m --data_dir=../shared/data --num_examples=1000 \\
      --attacks=pgd --nochecks --salience_images=0 --output=results/c10_wrn10-2_${m}_sensitivity.json
done"""


def table2():
  """The report's Table 2 of the sensitivity files, with clean and PGD-20."""
  from rlfat_tf import report  # pylint: disable=import-outside-toplevel
  results = _load(SENSITIVITY_FILES)
  lines = report.table2(results) + [""]
  rows = [[r.label, report.percent(r.accuracy("clean")),
           report.percent(r.accuracy("pgd")),
           _seconds(r.data.get("time_seconds"))]
          for r in report.ordered(results)]
  lines += report.markdown_table(["Model", "Clean", "PGD-20", "time"], rows)
  lines += ["", f"The same evaluations, first {results[0].data['eval']['num_examples']:,} "
            f"CIFAR-10 test images. Measured on {AUTOATTACK_DATE}, {MACHINE} "
            f"({_machines(results)}): RBSAT_P's and RLFAT_P's with "
            "`TF_NUM_INTRAOP_THREADS=1` while a training run held the other "
            "core, PGDAT's with two threads and the machine otherwise idle; "
            "by:", ""]
  return lines + _command(SENSITIVITY_COMMAND)


# --- The robust-generalization study and its pilots --------------------------

STUDY = "results/study_cifar10_cpu"
STUDY_DATE = "2026-12-02"
STUDY_COMMAND = """
python -m rlfat_tf.study --train_flagfile=flags/study/cifar10_cpu_train.cfg --methods=pgdat,rlfat_p --seeds=0,1,2 \\
    --eval_attacks=pgd,apgd_ce --eval_examples=2000 --study_dir=studies/cifar10_cpu"""
STUDY_LOAD = ("as two processes, one per core (`TF_NUM_INTRAOP_THREADS=1`), "
              "each on its part of the grid, then the command below, which "
              "found every run done and wrote the files; test runs shared "
              "the machine at times")


def _study_tables(folder, caption, date, load, command):
  """A study's two tables as ``rlfat_tf.study`` writes them, between the
  ``caption(evaluation settings)`` of the first and the command."""
  from rlfat_tf import study  # pylint: disable=import-outside-toplevel
  data = _read_json(f"{folder}/study.json")
  lines = study.table(data["summary"]).splitlines()
  lines += ["", caption(data["evaluation"]), ""]
  comparisons = study.comparison_table(data["comparisons"])
  if comparisons:
    lines += comparisons.splitlines()
    lines += ["", "Each method against the method it builds on (RLFAT_P "
              "against PGDAT, RLFAT_T against TRADES): the difference of the "
              "means in points, Welch's t-test over seeds (t, degrees of "
              "freedom, two-sided p).", ""]
  lines += [f"Measured on {date}, {MACHINE}, {load}; from "
            f"`{folder}/study.json`, by:", ""]
  return lines + _command(command)


def study_summary():
  """The first study's two tables, as ``rlfat_tf.study`` wrote them."""
  return _study_tables(
      STUDY, lambda ev: (
          "Mean ± sample standard deviation over seeds (%; steps for best "
          "step and peak step). Final and best: the last checkpoint and the "
          "one with the best validation PGD, on the first "
          f"{ev['num_examples']:,} test images, robust = the per-image worst "
          f"case of {', '.join(ev['attacks'])}. Curves: every 125 steps on "
          "the training images and as many test images."),
      STUDY_DATE, STUDY_LOAD, STUDY_COMMAND)


STUDY_AUTOATTACK_COMMAND = """
python -m rlfat_tf.evaluate --model_dir=studies/cifar10_cpu/runs/<pgdat|rlfat_p>_n250_s0 --which=last \\
    --num_examples=2000 --batch_size=100 --attacks=pgd,autoattack --nochecks --brightness= --gamma= \\
    --salience_images=0 --output=<name>_last.json"""


def study_autoattack():
  """AutoAttack on the final checkpoints of seed 0 against the study's."""
  from rlfat_tf import report  # pylint: disable=import-outside-toplevel
  names = ("pgdat_n250_s0_last", "rlfat_p_n250_s0_last")
  results = _load([f"{STUDY}/autoattack/{n}.json" for n in names])
  studied = {n: _read_json(f"{STUDY}/evals/{n}.json") for n in names}
  rows = []
  for name, r in zip(names, results):
    ours = studied[name]["metrics"]["test/overall_worst_case_accuracy"]
    after = [f"{100 * r.metrics[f'{r.split}/autoattack/after_{c}_accuracy']:.2f}"
             for c in COMPONENTS]
    after[-1] = f"**{after[-1]}**"
    rows.append([r.label, f"{100 * r.accuracy('clean'):.2f}",
                 f"{100 * r.accuracy('pgd'):.2f}", f"{100 * ours:.2f}"]
                + after + [_seconds(r.data.get("time_seconds"))])
  lines = report.markdown_table(
      ["final checkpoint, seed 0", "clean", "PGD-20",
       "study's robust (" + ", ".join(
           report.ATTACK_NAMES.get(a, a) for a in
           _read_json(f"{STUDY}/study.json")["evaluation"]["attacks"]) + ")"]
      + [f"after {report.ATTACK_NAMES[c]}" for c in COMPONENTS] + ["time"],
      rows)
  lines += ["", f"Accuracy (%) on the study's {results[0].data['eval']['num_examples']:,} "
            "test images; the last \"after\" column is AutoAttack's. Measured "
            f"on {STUDY_DATE}, {MACHINE} ({_machines(results)}), one process "
            "on one core while other jobs ran on the other; from "
            f"`{STUDY}/autoattack/`, by:", ""]
  return lines + _command(STUDY_AUTOATTACK_COMMAND)


PILOTS = (("results/study_pilot_n1000", "flags/study/cifar10_cpu_pilot_n1000.cfg",
           "studies/pilot_n1000"),
          ("results/study_pilot_n250", "flags/study/cifar10_cpu_train.cfg",
           "studies/pilot_n250"))


def _pilot_runs():
  for folder, flagfile, study_dir in PILOTS:
    data = _read_json(f"{folder}/study.json")
    yield folder, flagfile, study_dir, data["runs"][0], data


def pilot_curves():
  """The pilots' robust curves, and their final and best checkpoints."""
  curve_rows, final_rows, steps = [], [], None
  for _, _, _, entry, data in _pilot_runs():
    points = entry["curves"]
    steps = steps or [p["step"] for p in points]
    size = entry["train_size"]
    for key, what in (("train_subset/pgd_ce_accuracy", "train"),
                      ("test_subset/pgd_ce_accuracy", "test"),
                      ("val/pgd_ce_accuracy", "validation")):
      if what == "validation" and size > 250:
        continue
      curve_rows.append([f"{size:,} images: {what}"]
                        + [f"{100 * p[key]:.1f}" if key in p else MISSING
                           for p in points])
    s = entry["summary"]
    final_rows.append([f"{size:,}", f"{100 * s['final/clean']:.1f}",
                       f"{100 * s['final/robust']:.1f}", str(s["best/step"]),
                       f"{100 * s['best/clean']:.1f}",
                       f"{100 * s['best/robust']:.1f}"])
    examples = data["evaluation"]["num_examples"]
  from rlfat_tf import report  # pylint: disable=import-outside-toplevel
  lines = report.markdown_table(["step"] + [str(s) for s in steps],
                                curve_rows)
  lines += ["", "Robust accuracy (%, PGD-5, BatchNorm in inference mode) as "
            "training goes: train on the images the run trains on (at most "
            "400 of them), test on as many test images, validation on the "
            "400 held-out images.", ""]
  lines += report.markdown_table(
      ["training images", "final clean", "final PGD-20",
       "best step (validation)", "best clean", "best PGD-20"], final_rows)
  lines += ["", f"Final and best checkpoint on the first {examples:,} test "
            f"images (%). Measured on {STUDY_DATE}, {MACHINE}, while other "
            "jobs shared it; from "
            + ", ".join(f"`{f}/study.json`" for f, _, _ in PILOTS)
            + ", by:", ""]
  return lines + _command("\n".join(
      f"python -m rlfat_tf.study --train_flagfile={flagfile} --methods=pgdat "
      f"--seeds=0 \\\n    --eval_attacks=pgd --eval_examples={examples} "
      f"--study_dir={study_dir}" for _, flagfile, study_dir in PILOTS))


# --- The study under AutoAttack: four methods, two training-set sizes -------

AA_STUDY = "results/study_cifar10_cpu_autoattack"
AA_STUDY_DATE = "2026-12-07"
AA_STUDY_COMMAND = """
python -m rlfat_tf.study --train_flagfile=flags/study/cifar10_cpu_train.cfg --methods=pgdat,rlfat_p,trades,rlfat_t \\
    --seeds=0,1,2 --train_sizes={sizes} --train_epochs=160 --eval_examples=1000 \\
    --study_dir=results/study_cifar10_cpu_autoattack"""
AA_STUDY_LOAD = ("as two processes, one per core (`TF_NUM_INTRAOP_THREADS=1`, "
                 "`taskset`), each running the command below with its part "
                 "of `--methods` and `--train_sizes`, over several sessions "
                 "(the study folder's `cells/` and `evals/` are in the "
                 "repository, so each resumed where the last stopped), then "
                 "the command whole, which found every cell done and wrote "
                 "the files; test runs shared the machine at times")


def _aa_study():
  data = _read_json(f"{AA_STUDY}/study.json")
  sizes = ",".join(str(n) for n in data["grid"]["train_sizes"]) or "250"
  methods = ",".join(data["grid"]["methods"])
  command = AA_STUDY_COMMAND.format(sizes=sizes).replace(
      "pgdat,rlfat_p,trades,rlfat_t", methods)
  return data, command


def aa_study_summary():
  """The study's two tables, as ``rlfat_tf.study`` writes them."""
  _, command = _aa_study()
  return _study_tables(
      AA_STUDY, lambda ev: (
          "Mean ± sample standard deviation over seeds (%; steps for best "
          "step and peak step). Final: the last checkpoint; best: the one "
          "with the best validation PGD-5. Both on the first "
          f"{ev['num_examples']:,} test images; robust is the per-image worst "
          "case of PGD-20 and the standard AutoAttack, followed by each "
          "alone. Curves: PGD-5 every 125 steps on 250 of the training "
          "images and on 250 test images."),
      AA_STUDY_DATE, AA_STUDY_LOAD, command)


def _test_cell(test):
  """A Welch comparison as "+1.9 (p 0.122)"."""
  if test is None:
    return MISSING
  text = f"{100 * test['difference']:+.1f}"
  if test["p"] is not None:
    text += (f" (p {test['p']:.3f})" if test["p"] >= 0.001
             else " (p < 0.001)")
  return text


def aa_study_verdicts():
  """Each comparison under AutoAttack beside PGD-20 on the same checkpoints."""
  from rlfat_tf import report  # pylint: disable=import-outside-toplevel
  data, _ = _aa_study()
  rows = []
  for row in data["comparisons"]:
    name = (f"{report.METHOD_NAMES[row['method']]} − "
            f"{report.METHOD_NAMES[row['baseline']]}, n={row['train_size']}")
    for which in ("final", "best"):
      rows.append([name, which] + [
          _test_cell(row.get(f"{which}/{key}"))
          for key in ("autoattack", "pgd", "robust", "clean")] + [
          _test_cell(row.get("curve/robust_gap_final")) if which == "final"
          else MISSING])
  lines = report.markdown_table(
      ["comparison", "checkpoint", "AutoAttack", "PGD-20",
       "worst case of both", "clean", "train − test robust gap (curves)"],
      rows)
  return lines + [
      "", "Difference of the means over seeds in points (Welch's two-sided "
      f"p), from `{AA_STUDY}/study.json`: the same checkpoints and test "
      "images under each attack. The gap is PGD-5 robust accuracy on the "
      "training images minus on the test images at the end of training."]


def aa_study_cost():
  """What each cell of the study cost, measured, and the whole."""
  from rlfat_tf import report  # pylint: disable=import-outside-toplevel
  cost = _read_json(f"{AA_STUDY}/cost.json")
  rows = []
  for row in cost["summary"]:
    rows.append([
        f"{row['display_name']}, n={row['train_size']}",
        str(len(row["seeds"])),
        *(MISSING if row.get(key) is None else
          f"{row[key]['mean'] / 60:.1f} ± {(row[key]['std'] or 0.0) / 60:.1f}"
          " min" for key in ("train_seconds", "eval_seconds"))])
  total = cost["total"]
  lines = report.markdown_table(
      ["cells", "seeds", "training, per cell",
       "evaluating both checkpoints, per cell"], rows)
  return lines + [
      "", f"In all: {total['train_seconds'] / 3600:.2f} hours of training "
      f"and {total['eval_seconds'] / 3600:.2f} hours of evaluation, each on "
      "one core. Training: wall-clock seconds from the runs' summary files; "
      "evaluation: the seconds of the attacks, from the results files. From "
      f"`{AA_STUDY}/cost.json`."]


SIZE_PILOT = "results/study_pilot_e160"
SIZE_PILOT_COMMAND = """
python -m rlfat_tf.study --train_flagfile=flags/study/cifar10_cpu_train.cfg --methods=pgdat --seeds=0 \\
    --train_sizes=500,1000 --train_epochs=160 --eval_attacks=pgd --eval_examples=1000 --study_dir=studies/pilot_e160"""
# The curves' columns: every size scores itself at these epochs (125 steps
# of batch 32 are 16 epochs of 250 images, 8 of 500 and 4 of 1,000).
PILOT_EPOCHS = tuple(range(16, 161, 16))


def _epochs(entry, step):
  return step * entry["train_record"]["batch_size"] / entry["train_size"]


def size_pilot():
  """PGDAT's robust curves at 250, 500 and 1,000 images, 160 epochs each."""
  from rlfat_tf import report  # pylint: disable=import-outside-toplevel
  from rlfat_tf import study  # pylint: disable=import-outside-toplevel
  pilot = _read_json(f"{SIZE_PILOT}/study.json")
  main, _ = _aa_study()
  entries = [e for e in main["runs"] if e["name"] == "pgdat_n250_s0"]
  entries += sorted(pilot["runs"], key=lambda e: e["train_size"])
  curve_rows, end_rows = [], []
  for entry in entries:
    points = {_epochs(entry, p["step"]): p for p in entry["curves"]}
    for key, what in ((study.TRAIN_ROBUST, "train"),
                      (study.TEST_ROBUST, "test")):
      curve_rows.append([f"{entry['train_size']:,} images: {what}"] + [
          f"{100 * points[e][key]:.1f}" if e in points else MISSING
          for e in PILOT_EPOCHS])
    s = entry["summary"]
    end_rows.append([
        f"{entry['train_size']:,}", f"{entry['train_record']['train_steps']:,}",
        f"{100 * s['curve/test_robust_peak']:.1f} (epoch "
        f"{_epochs(entry, s['curve/test_robust_peak_step']):.0f})",
        f"{100 * s['curve/test_robust_final']:.1f}",
        f"{100 * s['curve/train_robust_final']:.1f}",
        f"{100 * s['final/pgd']:.1f}",
        f"{100 * s['best/pgd']:.1f} (epoch "
        f"{_epochs(entry, s['best/step']):.0f})"])
  lines = report.markdown_table(
      ["epoch"] + [str(e) for e in PILOT_EPOCHS], curve_rows)
  lines += ["", "PGDAT, seed 0: robust accuracy (%, PGD-5, BatchNorm in "
            "inference mode) as training goes, on 250 of the images the run "
            "trains on (train) and on the first 250 test images (test).", ""]
  lines += report.markdown_table(
      ["training images", "steps", "test robust peak (curve)",
       "test robust end", "train robust end", "final PGD-20",
       "best PGD-20 (validation)"], end_rows)
  examples = pilot["evaluation"]["num_examples"]
  lines += ["", f"PGD-20 on the first {examples:,} test images (%) of the "
            "final checkpoint and of the one with the best validation PGD-5. "
            f"Measured on {AA_STUDY_DATE}, {MACHINE}, one process per size "
            "on its own core; the 250-image run is the study's "
            f"(`{AA_STUDY}/study.json`, its PGD-20 on the same images), the "
            f"others from `{SIZE_PILOT}/study.json`, by:", ""]
  return lines + _command(SIZE_PILOT_COMMAND)


# --- Benchmarks ------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Benchmark:
  """A benchmark's committed results file, its command and its date.

  Attributes:
    path: the JSON file ``python -m rlfat_tf.benchmark --output`` writes.
    command: the command that writes it.
    date: when it was measured (the file does not record it).
  """
  path: str
  command: str
  date: str


AUTOATTACK_BENCHMARK = Benchmark(
    "results/benchmark_autoattack.json",
    "python -m rlfat_tf.benchmark --mode=autoattack \\\n"
    "    --model_dir={model_dir} --data_dir=../shared/data \\\n"
    "    --num_examples={num_examples}{extra} --output=results/benchmark_autoattack.json",
    "2026-12-07")
TRAINING_BENCHMARK = Benchmark(
    "results/benchmark_training.json",
    "python -m rlfat_tf.benchmark --rounds=15 "
    "--output=results/benchmark_training.json", "unrecorded")
EVALUATION_BENCHMARK = Benchmark(
    "results/benchmark_evaluation.json",
    "python -m rlfat_tf.benchmark --mode=evaluation "
    "--model_dir=models/c10_wrn10-2_pgdat --data_dir=../shared/data \\\n"
    "    --num_examples=500 --eval_batch_size=500 "
    "--output=results/benchmark_evaluation.json", "unrecorded")


def _not_measured(benchmark, command=None):
  return ([f"Not measured yet: `{benchmark.path}` is not committed. It is "
           "written by", ""] + _command(command or benchmark.command)
          + ["", "after which `python -m rlfat_tf.pages` renders it here."])


def _load_text(start, end):
  return f"load average (1 min) {start:.2f} at the start, {end:.2f} at the end"


def _ratio(value):
  return MISSING if value is None else f"{value:.2f}"


def benchmark_autoattack():
  """The project's AutoAttack against the reference's, component by
  component (``rlfat_tf.aabench``)."""
  b = AUTOATTACK_BENCHMARK
  if not _exists(b.path):
    return _not_measured(b, b.command.format(
        model_dir="models/c10_wrn10-2_pgdat", num_examples=500, extra=""))
  from rlfat_tf import aabench  # pylint: disable=import-outside-toplevel
  from rlfat_tf import report  # pylint: disable=import-outside-toplevel
  data = _read_json(b.path)
  s, sec, v = data["settings"], data["seconds"], data["verdicts"]
  ours, theirs = data["project"], data["reference"]
  versions = theirs["versions"]
  passes = data.get("model_passes")
  rows = []
  for key, row in sec.items():
    name = aabench.COMPONENTS[key][1] if key in aabench.COMPONENTS else (
        "**total**")
    images = (f"{row['images']['project']} / {row['images']['reference']}"
              if "images" in row else "")
    rows.append([name, images, f"{row['project']:,.1f}",
                 f"{row['reference']:,.1f}", _ratio(row["ratio"])]
                + ([f"{passes['floor_seconds'][key]:,.1f}"] if passes else []))
  lines = report.markdown_table(
      ["component", "images attacked (rlfat_tf / reference)", "rlfat_tf s",
       f"pyautoattack {versions.get('pyautoattack', '?')} s",
       "reference / rlfat_tf"]
      + (["model passes alone s"] if passes else []), rows)
  if passes:
    costs, floor = passes["seconds_per_image"], passes["floor_seconds"]
    lines += ["", "The last column is what the model's passes alone cost the "
              "images each component attacked, if none broke "
              "(`aabench.model_passes`: APGD's iterations, each a "
              "forward-backward pass, for each APGD-T target; FAB-T's, each a "
              "forward-backward and a forward pass, for each target; Square's "
              "queries, each a forward pass), timed on the project's CPU and "
              f"thread after both sides ended: {1e3 * costs['forward']:.2f} "
              f"ms forward and {1e3 * costs['forward_backward']:.2f} ms "
              f"forward-backward per image at batch {costs['batch_size']}. "
              f"Both sides run the same model, so neither can go much below "
              f"it: rlfat_tf takes {sec['total']['project'] / floor['total']:.2f}"
              f" times it, the reference "
              f"{sec['total']['reference'] / floor['total']:.2f} times."]
  lines += ["", f"Standard AutoAttack, L∞ ε = {s['epsilon']:g}, "
            f"{s['num_examples']:,} images, batch {s['batch_size']}, seed "
            f"{s['seed']}; a ratio above 1 means the reference took longer. "
            f"Clean accuracy {ours['clean_accuracy']:.1%} / "
            f"{theirs['clean_accuracy']:.1%}, robust accuracy "
            f"{ours['robust_accuracy']:.1%} / {theirs['robust_accuracy']:.1%} "
            "(rlfat_tf / reference). Per-image verdicts differ on "
            f"{v['differing']} of {s['num_examples']:,} images "
            f"({v['robust_only_in_project']} robust only for rlfat_tf, "
            f"{v['robust_only_in_reference']} only for the reference)"
            + (f": indices {', '.join(str(i) for i in v['differing_indices'])}"
               if v["differing_indices"] else "")
            + f"; clean verdicts differ on {v.get('clean_differing', 0)}.", ""]
  if "run" in data and "machine" in data:
    r, m = data["run"], data["machine"]
    lines += [f"Model: {r['architecture']} {r['dataset']}, `{r['checkpoint']}`"
              f" (step {r['step']}). Machine: {m['cpu_model']}, {m['cores']} "
              f"cores, {m['platform']}; rlfat_tf on CPU {m['project_cpu']}, "
              f"the reference (pyautoattack {versions.get('pyautoattack', '?')}"
              f", torch {versions.get('torch', '?')}) on CPU "
              f"{m['reference_cpu']}, side by side, one thread each; "
              f"{_load_text(m['load_average_start'][0], m['load_average_end'][0])}; "
              f"TensorFlow {m['tensorflow']}, Keras {m['keras']}. Measured "
              f"on {b.date}, from `{b.path}`, by:", ""]
  extra = "".join(
      f" --{flag}={s[key]:g}" for flag, key, default in (
          ("batch_size", "batch_size", 100), ("seed", "seed", 0),
          ("epsilon", "epsilon", aabench.EPSILON)) if s[key] != default)
  return lines + _command(b.command.format(
      model_dir=data.get("run", {}).get("model_dir", "RUN"),
      num_examples=s["num_examples"], extra=extra))


def benchmark_training():
  """The training benchmark's table (``rlfat_tf.benchmark``)."""
  b = TRAINING_BENCHMARK
  if not _exists(b.path):
    return _not_measured(b)
  from rlfat_tf import report  # pylint: disable=import-outside-toplevel
  data = _read_json(b.path)
  s, m = data["settings"], data["machine"]
  rows = []
  for method, entry in data["methods"].items():
    for key in (k for k in entry if k.startswith("xla_")):
      e = entry[key]
      spread = (max(e["rates"]) - min(e["rates"])) / e["examples_per_second"]
      rows.append([method, key[4:], f"{e['examples_per_second']:.2f}",
                   f"{spread:.0%}", f"{e['seconds_per_step']:.2f}",
                   f"{entry['flops_per_step'] / 1e9:.1f}",
                   f"{e['flops_per_second'] / 1e9:.1f}",
                   f"{e['fraction_of_peak']:.0%}"])
  lines = report.markdown_table(
      ["method", "XLA", "ex/s", "spread", "s/step", "GFLOP/step", "GFLOP/s",
       "of conv peak"], rows)
  lines += ["", f"{data['model']['name']}, batch {s['batch_size']}, K = "
            f"{s['attack_steps']}, {s['mixed_precision']}, {s['rounds']} "
            "rounds; ex/s is the median of the rounds, spread (max − min) / "
            "median.", ""]
  if data["relative_cost"]:
    xla = s["xla"]
    lines += report.markdown_table(
        ["cost ratio"] + [f"XLA {x}" for x in xla]
        + ["pass count", "forward units", "FLOPs"],
        [[key] + [f"{rel['measured_xla_' + x]:.3f}" for x in xla]
         + [f"{rel['predicted_by_passes']:.3f}",
            f"{rel['predicted_by_forward_units']:.3f}",
            f"{rel['predicted_by_flops']:.3f}"]
         for key, rel in data["relative_cost"].items()])
    lines.append("")
  peak, pipe = data["conv_peak"], data["input_pipeline"]
  lines += [f"Conv peak (batch {peak['batch_size']}): "
            f"{peak['peak_flops_per_second'] / 1e9:.1f} GFLOP/s (XLA off "
            f"{peak['xla_off']['flops_per_second'] / 1e9:.1f}, on "
            f"{peak['xla_on']['flops_per_second'] / 1e9:.1f}). Input "
            f"pipeline: {pipe['examples_per_second']:,.0f} ex/s, "
            f"{pipe['times_fastest_training']:,.0f}× the fastest training "
            "step. Targets: " + "; ".join(
                f"{name}: {t['value']:.3f} ({'met' if t['met'] else 'NOT met'})"
                for name, t in data["targets"].items()) + ".", "",
            f"Machine: {m['cpus']} CPUs, {m['gpus']} GPUs, "
            f"{m.get('platform', 'platform unrecorded')}, TensorFlow "
            f"{m.get('tensorflow', '?')}, Keras {m.get('keras', '?')}; "
            f"{_load_text(m['load_average_start'], m['load_average_end'])}. "
            f"Measured on {b.date}, from `{b.path}`, by:", ""]
  return lines + _command(b.command)


def benchmark_evaluation():
  """APGD-CE against IBM ART's (``rlfat_tf.evalbench``)."""
  b = EVALUATION_BENCHMARK
  if not _exists(b.path):
    return _not_measured(b)
  from rlfat_tf import report  # pylint: disable=import-outside-toplevel
  data = _read_json(b.path)
  s, r, m = data["settings"], data["run"], data["machine"]
  rows = []
  for key, name in (("project", "rlfat_tf"),
                    ("art", f"ART {data['art']['version']}")):
    e = data[key]
    rows.append([name, str(e["attacked_images"]), f"{e['seconds']:.1f}",
                 f"{e['seconds_per_image']:.3f}",
                 MISSING if e["seconds_per_attacked_image"] is None
                 else f"{e['seconds_per_attacked_image']:.3f}",
                 f"{e['clean_accuracy']:.1%}", f"{e['robust_accuracy']:.1%}"])
  lines = report.markdown_table(
      [f"step {r['step']}", "attacked", "s", "s/image", "s/attacked image",
       "clean", "robust (APGD-CE)"], rows)
  target = data["target"]
  lines += ["", f"APGD-CE, {s['steps']} iterations, ε = {s['epsilon']:g}, "
            f"{s['num_examples']:,} images, batch {s['batch_size']}, "
            f"{r['architecture']} {r['dataset']}. Speed ratio (ART's seconds "
            f"/ rlfat_tf's) {data['speed_ratio']:.2f}; verdicts agree on "
            f"{data['robust_agreement']:.1%} of the images; {target['name']}:"
            f" {'met' if target['met'] else 'NOT met'}. Machine: "
            f"{m['cpus']} CPUs, {m['platform']}, TensorFlow {m['tensorflow']};"
            f" {_load_text(m['load_average_start'][0], m['load_average_end'][0])}. "
            f"Measured on {b.date}, from `{b.path}`, by:", ""]
  return lines + _command(b.command)


# --- The API reference -------------------------------------------------------

def public_names(root=None):
  """``rlfat_tf``'s ``_PUBLIC`` table, read from its source.

  Returns:
    Dict: public name -> (module, attribute or None for the module).
  """
  root = pathlib.Path(root or ROOT)
  tree = ast.parse((root / "rlfat_tf" / "__init__.py").read_text())
  for node in tree.body:
    if (isinstance(node, ast.Assign) and len(node.targets) == 1
        and getattr(node.targets[0], "id", None) == "_PUBLIC"):
      return ast.literal_eval(node.value)
  raise errors.UserError(f"{root / 'rlfat_tf' / '__init__.py'} has no "
                         "_PUBLIC table")


def reference_target(module, attribute):
  """The dotted path mkdocstrings documents for a public name."""
  return module if attribute is None else f"{module}.{attribute}"


def api_reference():
  """One section per public name of ``rlfat_tf``, rendered by mkdocstrings."""
  lines = []
  for name, (module, attribute) in sorted(public_names().items()):
    target = reference_target(module, attribute)
    what = "module" if attribute is None else "defined in"
    lines += [f"## `rlfat_tf.{name}`", "",
              f"*{what} `{module}`*", "",
              f"::: {target}", "    options:",
              "      show_root_heading: false", ""]
  return lines[:-1]


# --- The docstring check -----------------------------------------------------

def _module_file(root, module):
  base = root.joinpath(*module.split("."))
  for path in (base.with_suffix(".py"), base / "__init__.py"):
    if path.is_file():
      return path
  raise errors.UserError(f"no source file for module {module} under {root}")


def _defined(tree):
  """Top-level functions and classes of a module, by name."""
  return {n.name: n for n in tree.body
          if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef,
                            ast.ClassDef))}


def _public(name):
  return not name.startswith("_")


def _members(node):
  """A class's public methods and properties, defined in its body."""
  return [n for n in node.body
          if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
          and _public(n.name)]


def missing_docstrings(root=None):
  """Public names of ``rlfat_tf``, and what their pages show, lacking a
  docstring.

  Checked, from the source (nothing is imported): every name of the
  ``_PUBLIC`` table in ``rlfat_tf/__init__.py`` (a module's docstring, or a
  function's or class's); for a public module, its public top-level functions
  and classes; for a public class, its public methods and properties.

  Args:
    root: the repository (a folder holding ``rlfat_tf/``).

  Returns:
    Sorted dotted names, e.g. ``["rlfat_tf.rbs.RandomBlockShuffle.get_config"]``;
    empty when every one has a docstring.

  Raises:
    errors.UserError: a public name's module or attribute does not exist.
  """
  root = pathlib.Path(root or ROOT)
  missing = []
  for name, (module, attribute) in public_names(root).items():
    tree = ast.parse(_module_file(root, module).read_text())
    defined = _defined(tree)
    if attribute is None:
      if not ast.get_docstring(tree):
        missing.append(module)
      for member, node in defined.items():
        if _public(member) and not ast.get_docstring(node):
          missing.append(f"{module}.{member}")
      continue
    if attribute not in defined:
      raise errors.UserError(
          f"rlfat_tf.{name} names {module}.{attribute}, which {module} does "
          "not define")
    node = defined[attribute]
    if not ast.get_docstring(node):
      missing.append(f"{module}.{attribute}")
    if isinstance(node, ast.ClassDef):
      missing += [f"{module}.{attribute}.{m.name}" for m in _members(node)
                  if not ast.get_docstring(m)]
  return sorted(set(missing))


# --- Blocks and pages --------------------------------------------------------

GENERATORS = {
    "autoattack_headline": autoattack_headline,
    "table1_autoattack": table1_autoattack,
    "table2": table2,
    "study_summary": study_summary,
    "study_autoattack": study_autoattack,
    "pilot_curves": pilot_curves,
    "aa_study_summary": aa_study_summary,
    "aa_study_verdicts": aa_study_verdicts,
    "aa_study_cost": aa_study_cost,
    "size_pilot": size_pilot,
    "benchmark_autoattack": benchmark_autoattack,
    "benchmark_training": benchmark_training,
    "benchmark_evaluation": benchmark_evaluation,
    "api_reference": api_reference,
}

# Figures the pages show, copied into docs/ (which mkdocs serves alone).
FIGURES = {f"docs/figures/{prefix}_{name}.png": f"{folder}/{name}.png"
           for prefix, folder in (("study", STUDY), ("aa_study", AA_STUDY))
           for name in ("curves", "gap", "final")}


def pages(root=None):
  """The pages that may hold blocks: README.md and docs/*.md, sorted."""
  root = pathlib.Path(root or ROOT)
  found = []
  for pattern in PAGES:
    found += sorted(root.glob(pattern))
  return found


def split_blocks(text, where="page"):
  """Finds a page's generated blocks.

  Args:
    text: the page.
    where: the page's name, for errors.

  Returns:
    List of (name, start line index, end line index) of each block, the
    indices of its marker lines in ``text.split("\\n")``.

  Raises:
    errors.UserError: a block is not closed, is nested, or has an unknown
      name.
  """
  blocks, open_block = [], None
  for index, line in enumerate(text.split("\n")):
    match = START.match(line)
    if match:
      if open_block:
        raise errors.UserError(f"{where}:{index + 1}: block "
                               f"{match.group(1)} starts inside block "
                               f"{open_block[0]}: close it with {END}")
      if match.group(1) not in GENERATORS:
        raise errors.UserError(
            f"{where}:{index + 1}: unknown generated block "
            f"{match.group(1)!r}: use one of {', '.join(sorted(GENERATORS))}")
      open_block = (match.group(1), index)
    elif line == END:
      if not open_block:
        raise errors.UserError(f"{where}:{index + 1}: {END} without a "
                               "block to close")
      blocks.append((open_block[0], open_block[1], index))
      open_block = None
  if open_block:
    raise errors.UserError(f"{where}:{open_block[1] + 1}: block "
                           f"{open_block[0]} is not closed with {END}")
  return blocks


def render(text, where="page", cache=None):
  """The page with every block's body rewritten by its generator.

  Args:
    text: the page.
    where: its name, for errors.
    cache: dict of already rendered blocks by name (filled in).

  Returns:
    ``(new text, names of the blocks whose body changed)``.
  """
  cache = {} if cache is None else cache
  lines = text.split("\n")
  out, changed, last = [], [], 0
  for name, start, end in split_blocks(text, where):
    if name not in cache:
      cache[name] = "\n".join(GENERATORS[name]()).split("\n")
    body = cache[name]
    out += lines[last:start + 1] + body
    if lines[start + 1:end] != body:
      changed.append(name)
    last = end
  out += lines[last:]
  return "\n".join(out), changed


def stale(root=None):
  """Every block and figure that differs from what would be written now.

  Returns:
    List of "page: block" (and "figure path") strings; empty when current.
  """
  root = pathlib.Path(root or ROOT)
  found, cache = [], {}
  for page in pages(root):
    where = page.relative_to(root).as_posix()
    _, changed = render(page.read_text(encoding="utf-8"), where, cache)
    found += [f"{where}: {name}" for name in changed]
  for copy, source in FIGURES.items():
    if not (root / copy).is_file() or (
        (root / copy).read_bytes() != (root / source).read_bytes()):
      found.append(copy)
  return found


def write(root=None):
  """Rewrites every stale block and figure; returns what changed."""
  root = pathlib.Path(root or ROOT)
  written, cache = [], {}
  for page in pages(root):
    where = page.relative_to(root).as_posix()
    text = page.read_text(encoding="utf-8")
    new, changed = render(text, where, cache)
    if changed:
      page.write_text(new, encoding="utf-8")
      written += [f"{where}: {name}" for name in changed]
  for copy, source in FIGURES.items():
    target = root / copy
    if not target.is_file() or (
        target.read_bytes() != (root / source).read_bytes()):
      target.parent.mkdir(parents=True, exist_ok=True)
      shutil.copyfile(root / source, target)
      written.append(copy)
  return written


def main(argv=None):
  """Rewrites (or with --check, checks) the generated blocks."""
  parser = cli.ArgumentParser(
      prog="python -m rlfat_tf.pages",
      description="Writes the documentation's generated tables from the "
      "committed results files.")
  parser.add_argument("--check", action="store_true",
                      help="write nothing; exit 1 naming each stale block")
  args = parser.parse_args(argv)
  if args.check:
    found = stale()
    for item in found:
      print(f"stale: {item}")
    if found:
      print("run python -m rlfat_tf.pages to rewrite them", file=sys.stderr)
      return 1
    print("every generated block is current")
    return None
  written = write()
  for item in written:
    print(f"wrote {item}")
  if not written:
    print("every generated block is current")
  return None


if __name__ == "__main__":
  cli.call(main)
