"""Tests of `python -m rlfat_tf.study`: the grid, its summaries, a tiny study
run whole and run with a kill in the middle."""

import contextlib
import json
import shutil
import signal
import subprocess
import sys

from absl import flags
import numpy as np
import pytest

from rlfat_tf import errors
from rlfat_tf import preemption
from rlfat_tf import study

import helpers
from helpers import ENV
from helpers import ROOT
from helpers import SMOKE

TRAIN_STEPS = 12


def _values(tmp_path, **overrides):
  values = {"study_dir": str(tmp_path / "study"),
            "train_flagfile": str(tmp_path / "train.cfg"),
            "methods": ["pgdat"], "seeds": ["0"], "train_sizes": [],
            "eval_attacks": ["pgd", "autoattack"], "eval_examples": 16,
            "train_epochs": None, "eval_batch_size": 16, "eval_checks": False,
            "progress": False, "write_outputs": True}
  values.update(overrides)
  return values


def _train_flagfile(path):
  # The smoke run, monitored at every checkpoint, bit-exact on resume.
  path.write_text("\n".join([
      f"--flagfile={SMOKE}", f"--train_steps={TRAIN_STEPS}",
      "--checkpoint_every=3", "--eval_every=3", "--keep_checkpoints=10",
      "--monitor_examples=20", "--deterministic", ""]))
  return path


def _study_argv(tmp_path, study_dir):
  return [f"--train_flagfile={_train_flagfile(tmp_path / 'train.cfg')}",
          "--methods=pgdat", "--seeds=0", "--eval_attacks=pgd,autoattack",
          "--eval_examples=16", "--eval_batch_size=16", "--noprogress",
          f"--study_dir={study_dir}"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
  """A tiny study run to the end in one go: (its folder, study.json)."""
  tmp_path = tmp_path_factory.mktemp("study")
  study_dir = tmp_path / "study"
  result = helpers.run_module("rlfat_tf.study",
                              *_study_argv(tmp_path, study_dir))
  assert result.returncode == 0, result.stderr[-3000:]
  with open(study_dir / "study.json") as f:
    return study_dir, json.load(f)


def test_grid_is_method_major_with_seeds_fastest(tmp_path):
  _train_flagfile(tmp_path / "train.cfg")
  values = _values(tmp_path, methods=["pgdat", "rlfat_p"], seeds=["0", "1"],
                   train_sizes=["500", "1000"])
  names = [study.run_name(study.run_record(values, cell)[1])
           for cell in study.grid(values)]
  assert names == [
      "pgdat_n500_s0", "pgdat_n500_s1", "pgdat_n1000_s0", "pgdat_n1000_s1",
      "rlfat_p_n500_s0", "rlfat_p_n500_s1", "rlfat_p_n1000_s0",
      "rlfat_p_n1000_s1"]
  model_dir, record = study.run_record(values, study.grid(values)[0])
  assert model_dir == str(tmp_path / "study" / "runs" / "pgdat_n500_s0")
  assert (record.method, record.seed, record.train_size) == ("pgdat", 0, 500)
  # Without --train_sizes, the train flagfile's size names the run.
  (tmp_path / "sized.cfg").write_text(f"--flagfile={SMOKE}\n--train_size=64\n")
  values = _values(tmp_path, train_flagfile=str(tmp_path / "sized.cfg"))
  (cell,) = study.grid(values)
  assert study.run_name(study.run_record(values, cell)[1]) == "pgdat_n64_s0"


def test_train_epochs_sets_each_sizes_steps(tmp_path):
  _train_flagfile(tmp_path / "train.cfg")
  values = _values(tmp_path, train_sizes=["250", "1000", "100"],
                   train_epochs=160)
  steps = [study.run_record(values, cell)[1].train_steps
           for cell in study.grid(values)]
  # Batch 32: 160 x 250 / 32 = 1,250 and 160 x 1,000 / 32 = 5,000; 100
  # images make 500 steps exactly too, and 3 epochs of them 9.375, so 10.
  assert steps == [1250, 5000, 500]
  values = dict(values, train_sizes=["100"], train_epochs=3)
  (cell,) = study.grid(values)
  assert study.run_record(values, cell)[1].train_steps == 10
  # Without it every size keeps the flagfile's steps.
  values = dict(values, train_epochs=None)
  assert study.run_record(values, cell)[1].train_steps == TRAIN_STEPS
  # The whole training set has no size the study can count epochs of.
  values = dict(values, train_sizes=[], train_epochs=3)
  with pytest.raises(errors.UserError, match=(
      "--train_epochs needs each run's training-set size: pass "
      "--train_sizes, or set --train_size in .*train.cfg")):
    study.run_record(values, study.grid(values)[0])


def test_training_seconds_sum_each_processs_summary_file(tmp_path):
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  summaries = tmp_path / "run" / "summaries"
  summaries.mkdir(parents=True)
  # Two processes: 100 to 130 s, a pause, then 500 to 520 s: 30 + 20.
  for name, stamps in (("1", [100.0, 105.0, 130.0]), ("2", [500.0, 520.0])):
    with tf.io.TFRecordWriter(
        str(summaries / f"events.out.tfevents.{name}")) as writer:
      for stamp in stamps:
        writer.write(tf.compat.v1.Event(wall_time=stamp).SerializeToString())
  assert study.training_seconds(tmp_path / "run") == 50.0
  assert study.training_seconds(tmp_path / "none") is None


def test_cost_report_sums_and_averages_the_runs_costs():
  entries = [{"name": f"{m}_n250_s{s}", "method": m, "seed": s,
              "train_size": 250} for m, s in (("pgdat", 0), ("pgdat", 1),
                                              ("rlfat_p", 0))]
  costs = [{"train_seconds": 100.0, "eval_seconds": 300.0},
           {"train_seconds": 140.0, "eval_seconds": 500.0},
           {"train_seconds": None, "eval_seconds": 50.0}]
  report = study.cost_report(entries, costs)
  assert report["runs"][1] == {"name": "pgdat_n250_s1", "method": "pgdat",
                               "seed": 1, "train_size": 250,
                               "train_seconds": 140.0, "eval_seconds": 500.0}
  pgdat, rlfat = report["summary"]
  # Mean 120, sample std sqrt((20^2 + 20^2) / 1) = 28.28.
  assert pgdat["train_seconds"] == {"mean": 120.0,
                                    "std": pytest.approx(28.28427), "n": 2}
  assert pgdat["eval_seconds"]["mean"] == 400.0
  # A run without summary files has no training seconds to average.
  assert "train_seconds" not in rlfat and rlfat["seeds"] == [0]
  assert report["total"] == {"train_seconds": 240.0, "eval_seconds": 850.0}


def test_curve_summary_finds_the_peak_and_the_final_gap():
  points = [
      {"step": 10, study.TRAIN_ROBUST: 0.20, study.TEST_ROBUST: 0.18},
      {"step": 20, study.TRAIN_ROBUST: 0.40, study.TEST_ROBUST: 0.30},
      {"step": 30, study.TRAIN_ROBUST: 0.60, study.TEST_ROBUST: 0.30},
      {"step": 40, study.TRAIN_ROBUST: 0.80, study.TEST_ROBUST: 0.25},
      {"step": 45, "val/clean_accuracy": 0.5}]
  assert study.curve_summary(points) == pytest.approx({
      "curve/test_robust_peak": 0.30, "curve/test_robust_peak_step": 20,
      "curve/test_robust_final": 0.25, "curve/test_robust_drop": 0.05,
      "curve/train_robust_final": 0.80, "curve/robust_gap_final": 0.55})
  assert study.curve_summary([{"step": 5, "val/clean_accuracy": 0.5}]) == {}


def test_mean_std_uses_the_sample_standard_deviation():
  # 0.2, 0.4, 0.6: mean 0.4, squared deviations 0.04 + 0 + 0.04 over n-1=2.
  assert study.mean_std([0.2, 0.4, 0.6]) == pytest.approx(
      {"mean": 0.4, "std": 0.2, "n": 3})
  assert study.mean_std([0.3]) == {"mean": 0.3, "std": None, "n": 1}


def _entry(method, seed, final_robust, points):
  return {"method": method, "seed": seed, "train_size": None,
          "curves": points,
          "summary": {"final/robust": final_robust,
                      **study.curve_summary(points)}}


def test_seeds_are_summarised_per_method_over_common_steps():
  a = [{"step": 3, study.TRAIN_ROBUST: 0.2, study.TEST_ROBUST: 0.1},
       {"step": 6, study.TRAIN_ROBUST: 0.4, study.TEST_ROBUST: 0.3}]
  b = [{"step": 3, study.TRAIN_ROBUST: 0.4, study.TEST_ROBUST: 0.3}]
  entries = [_entry("pgdat", 0, 0.25, a), _entry("pgdat", 1, 0.35, b),
             _entry("rlfat_p", 0, 0.5, a)]
  summary = study.summarise(entries)
  assert [(r["display_name"], r["seeds"]) for r in summary] == [
      ("PGDAT", [0, 1]), ("RLFAT_P", [0])]
  assert summary[0]["final/robust"]["mean"] == pytest.approx(0.30)
  assert summary[0]["final/robust"]["std"] == pytest.approx(
      np.std([0.25, 0.35], ddof=1))
  # Seed 1 stopped at step 3: the mean curve has only the step both have.
  (pgdat, rlfat) = study.mean_curves(entries, study._gap)
  assert pgdat["steps"] == [3]
  assert pgdat["mean"] == pytest.approx([0.1])
  assert pgdat["std"] == pytest.approx([0.0])
  assert rlfat["steps"] == [3, 6] and rlfat["std"] == [0.0, 0.0]
  for row in summary:
    row["best/step"] = study.mean_std([250, 500] if row["method"] == "pgdat"
                                      else [500])
  table = study.table(summary)
  assert "| PGDAT | 2 | 30.0 ± 7.1 | 375 ± 177 |" in table
  assert "| RLFAT_P | 1 | 50.0 | 500 |" in table


def test_each_attacks_own_accuracy_is_summarised_and_compared():
  def entry(method, seed, pgd, autoattack):
    return {"method": method, "seed": seed, "train_size": 250,
            "summary": {"final/robust": min(pgd, autoattack),
                        "final/pgd": pgd, "final/autoattack": autoattack}}

  entries = [entry("pgdat", 0, 0.10, 0.08), entry("pgdat", 1, 0.12, 0.10),
             entry("rlfat_p", 0, 0.16, 0.10), entry("rlfat_p", 1, 0.18, 0.08)]
  assert study.attack_keys(entries) == ("final/pgd", "final/autoattack")
  assert study.attack_keys([]) == ()
  summary = study.summarise(entries)
  assert summary[1]["final/pgd"]["mean"] == pytest.approx(0.17)
  assert summary[1]["final/autoattack"]["mean"] == pytest.approx(0.09)
  table = study.table(summary).splitlines()
  assert table[0] == ("| model | seeds | final robust | final PGD | "
                      "final AutoAttack |")
  assert table[2] == "| PGDAT, n=250 | 2 | 9.0 ± 1.4 | 11.0 ± 1.4 | 9.0 ± 1.4 |"
  # Under PGD alone RLFAT_P leads by 6 points; under AutoAttack by none.
  (row,) = study.compare(entries)
  assert row["final/pgd"]["difference"] == pytest.approx(0.06)
  assert row["final/autoattack"]["difference"] == pytest.approx(0.0)
  measures = [line.split(" | ")[1]
              for line in study.comparison_table([row]).splitlines()[2:]]
  assert measures == ["final/robust", "final/pgd", "final/autoattack"]


def test_curves_are_drawn_over_epochs_one_panel_per_size():
  def entry(method, size):
    return {"method": method, "train_size": size,
            "train_record": {"batch_size": 32}}

  curve = {"method": "rlfat_p", "train_size": 1000, "steps": [125, 5000]}
  drawn, xlabel = study._drawn([entry("pgdat", 250), entry("rlfat_p", 1000)])
  # 125 steps of 32 images are 4 epochs of 1,000 images; 5,000 are 160.
  assert xlabel == "epoch"
  assert drawn(curve, "a label", dashed=True) == {
      **curve, "label": "a label", "dashed": True, "x": [4.0, 160.0],
      "group": "RLFAT_P", "panel": "1,000 training images"}
  # One size: one panel; the whole training set: over steps.
  drawn, xlabel = study._drawn([entry("rlfat_p", 1000)])
  assert drawn(curve, "a", dashed=False)["panel"] is None
  drawn, xlabel = study._drawn([entry("rlfat_p", None)])
  assert xlabel == "training step"
  whole = dict(curve, train_size=None)
  assert drawn(whole, "a", dashed=False)["x"] == [125, 5000]


def test_welch_t_test_by_hand():
  # Means 5 and 2; sample variances 1 and 1; standard error
  # sqrt(1/3 + 1/3); Welch-Satterthwaite df (2/3)^2 / (2 * (1/3)^2 / 2) = 4.
  test = study.welch([4.0, 5.0, 6.0], [1.0, 2.0, 3.0])
  assert test["difference"] == pytest.approx(3.0)
  assert test["t"] == pytest.approx(3.0 / np.sqrt(2.0 / 3.0))
  assert test["df"] == pytest.approx(4.0)
  # Student's t with 4 df: P(|T| > 2.776445) = 0.05 (the table's value).
  half = 2.776445 * np.sqrt(2.0 / 3.0) / 2.0
  at_table = study.welch([2.0 + half - 1, 2.0 + half, 2.0 + half + 1],
                         [2.0 - half - 1, 2.0 - half, 2.0 - half + 1])
  assert at_table["t"] == pytest.approx(2.776445)
  assert at_table["p"] == pytest.approx(0.05, abs=1e-6)
  # Unequal variances: df falls below n1 + n2 - 2.
  uneven = study.welch([0.0, 10.0, 20.0], [1.0, 1.5, 2.0])
  assert uneven["df"] < 3
  # One seed, or no spread at all: no estimate of seed noise.
  assert study.welch([0.3], [0.1, 0.2]) == {
      "difference": pytest.approx(0.15), "t": None, "df": None, "p": None}
  assert study.welch([0.3, 0.3], [0.1, 0.1])["p"] is None


def test_each_method_is_compared_with_its_baseline_over_seeds():
  entries = [
      {"method": "pgdat", "seed": s, "train_size": 250,
       "summary": {"final/robust": r, "final/clean": 0.4}}
      for s, r in enumerate([0.10, 0.12, 0.14])] + [
      {"method": "rlfat_p", "seed": s, "train_size": 250,
       "summary": {"final/robust": r, "final/clean": 0.4}}
      for s, r in enumerate([0.15, 0.16, 0.17])] + [
      # No baseline at this size, and a baseline has nothing to compare with.
      {"method": "rlfat_p", "seed": 0, "train_size": 500,
       "summary": {"final/robust": 0.2}}]
  (row,) = study.compare(entries)
  assert (row["method"], row["baseline"], row["train_size"]) == (
      "rlfat_p", "pgdat", 250)
  assert set(row) - {"method", "baseline", "train_size"} == {
      "final/robust", "final/clean"}
  robust = row["final/robust"]
  assert robust == study.welch([0.15, 0.16, 0.17], [0.10, 0.12, 0.14])
  assert robust["difference"] == pytest.approx(0.04)
  assert row["final/clean"]["p"] is None
  table = study.comparison_table([row])
  assert (f"| RLFAT_P − PGDAT, n=250 | final/robust | +4.0 | "
          f"{robust['t']:.2f} | {robust['df']:.1f} | {robust['p']:.3f} |"
          in table)
  assert "| RLFAT_P − PGDAT, n=250 | final/clean | +0.0 |  |  |  |" in table
  # A p-value below what three decimals show is not printed as 0.
  row["final/robust"] = study.welch([0.50, 0.51, 0.52], [0.10, 0.11, 0.12])
  assert row["final/robust"]["p"] < 1e-3
  assert "| +40.0 | 48.99 | 4.0 | < 0.001 |" in study.comparison_table([row])
  assert study.comparison_table([]) == ""


def test_tiny_study_records_curves_evaluations_and_figures(finished):
  study_dir, payload = finished
  (run,) = payload["runs"]
  assert run["name"] == "pgdat_nall_s0" and run["model_dir"] == (
      "runs/pgdat_nall_s0")
  assert run["train_record"]["train_steps"] == TRAIN_STEPS
  assert run["train_record"]["monitor_examples"] == 20
  assert [p["step"] for p in run["curves"]] == list(range(3, 13, 3))
  for point in run["curves"]:
    for clean, robust in ((study.TRAIN_CLEAN, study.TRAIN_ROBUST),
                          (study.TEST_CLEAN, study.TEST_ROBUST)):
      assert 0.0 <= point[robust] <= point[clean] <= 1.0
  # The smoke run holds out a validation split: its best checkpoint is
  # evaluated too, and the numbers are those of the results files.
  assert set(run["evaluations"]) == {"final", "best"}
  for key, evaluation in run["evaluations"].items():
    with open(study_dir / evaluation["file"]) as f:
      results = json.load(f)
    assert results["eval"]["num_examples"] == 16
    assert run["summary"][f"{key}/robust"] == (
        results["metrics"][study.ROBUST])
    # Evaluated with the standard AutoAttack too, each attack's own
    # accuracy is kept beside the per-image worst case.
    assert results["attacks"]["autoattack"]["components"] == [
        "apgd_ce", "apgd_t", "fab_t", "square"]
    for attack in ("pgd", "autoattack"):
      assert run["summary"][f"{key}/{attack}"] == (
          results["metrics"][f"test/{attack}_accuracy"])
      assert run["summary"][f"{key}/robust"] <= run["summary"][
          f"{key}/{attack}"]
  assert run["evaluations"]["final"]["step"] == TRAIN_STEPS
  # What the run cost, in a file of its own: its training's seconds from
  # its summary file, and the seconds of both evaluations' attacks.
  with open(study_dir / study.COST_FILE) as f:
    cost = json.load(f)
  (spent,) = cost["runs"]
  assert spent["name"] == "pgdat_nall_s0"
  assert 0 < spent["train_seconds"] == study.training_seconds(
      study_dir / run["model_dir"])
  eval_seconds = 0.0
  for evaluation in run["evaluations"].values():
    with open(study_dir / evaluation["file"]) as f:
      eval_seconds += sum(a["seconds"] for a in json.load(f)[
          "attacks"].values())
  assert spent["eval_seconds"] == pytest.approx(eval_seconds) and (
      eval_seconds > 0)
  (row,) = cost["summary"]
  assert row["train_seconds"] == {"mean": spent["train_seconds"],
                                  "std": None, "n": 1}
  assert cost["total"] == {"train_seconds": spent["train_seconds"],
                           "eval_seconds": spent["eval_seconds"]}
  (row,) = payload["summary"]
  assert row["final/robust"] == {"mean": run["summary"]["final/robust"],
                                 "std": None, "n": 1}
  # One method without its baseline: nothing to compare.
  assert payload["comparisons"] == []
  assert (study_dir / "study.md").read_text().startswith("| model | seeds |")
  for name in ("curves.png", "gap.png", "final.png"):
    assert (study_dir / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


class _StopOnceSaved(contextlib.nullcontext):
  """A stand-in for ``preemption.PreemptionWatcher``: asks to stop, as on a
  SIGTERM, once the evaluation state ``folder`` holds a batch of AutoAttack's
  first component."""

  received = signal.SIGTERM

  def __init__(self, folder):
    super().__init__(self)
    self.folder = folder

  @property
  def requested(self):
    return any(self.folder.glob("*_autoattack_apgd_ce/*.npz"))


def test_a_killed_and_stopped_study_resumes_to_the_same_results(
    finished, tmp_path, monkeypatch):
  _, expected = finished
  study_dir = tmp_path / "study"
  argv = _study_argv(tmp_path, study_dir)
  proc = subprocess.Popen([sys.executable, "-m", "rlfat_tf.study", *argv],
                          env=ENV, cwd=ROOT, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
  checkpoints = study_dir / "runs" / "pgdat_nall_s0" / "checkpoints"
  assert helpers.wait_for_checkpoint(
      checkpoints, 3, lambda: proc.poll() is None, timeout=300), (
          proc.stderr.read()[-3000:] if proc.poll() is not None
          else "no checkpoint in 300 s")
  proc.send_signal(signal.SIGKILL)
  proc.communicate()
  assert not (study_dir / "study.json").exists()
  # Resumed here, it trains to the end and is stopped, as by a SIGTERM,
  # once its first evaluation has saved PGD's batch and AutoAttack's first.
  state = study_dir / "evals" / "pgdat_nall_s0_last_state"
  monkeypatch.setattr(preemption, "PreemptionWatcher",
                      lambda **_: _StopOnceSaved(state))
  with pytest.raises(preemption.Stopped, match="stopped after batch 1 of 1 "
                     "of autoattack/apgd_ce on SIGTERM"):
    study.run(_values(tmp_path), log=lambda _: None)
  monkeypatch.undo()
  assert len(list(state.glob("*/*.npz"))) == 2
  result = helpers.run_module("rlfat_tf.study", *argv)
  assert result.returncode == 0, result.stderr[-3000:]
  assert f"resuming from {state} (2 batches saved)" in result.stdout
  assert not state.exists()
  with open(study_dir / "study.json") as f:
    assert json.load(f) == expected
  # Nothing is redone on a finished study (in this process: the same
  # settings as argv, through the command's own function).
  logged = []
  assert study.run(_values(tmp_path), log=logged.append) == expected
  assert logged and not any(
      line.startswith(("== training", "== evaluating")) for line in logged)
  # Nor on one kept without its checkpoints: the cells it recorded are
  # all it reports.
  with open(study_dir / study.COST_FILE) as f:
    cost = json.load(f)
  shutil.rmtree(study_dir / "runs")
  logged = []
  assert study.run(_values(tmp_path), log=logged.append) == expected
  assert not (study_dir / "runs").exists() and not any(
      line.startswith(("== training", "== evaluating")) for line in logged)
  with open(study_dir / study.COST_FILE) as f:
    assert json.load(f) == cost


def test_a_recorded_cell_trained_otherwise_is_refused(finished, tmp_path):
  study_dir, _ = finished
  _train_flagfile(tmp_path / "train.cfg")
  cells = tmp_path / "study" / study.CELLS_DIR
  cells.mkdir(parents=True)
  with open(study_dir / study.CELLS_DIR / "pgdat_nall_s0.json") as f:
    cell = json.load(f)
  # A resumed run may train longer; a finished cell reports the steps it
  # was trained for, so another number is not that cell.
  cell["entry"]["train_record"]["train_steps"] = 99
  (cells / "pgdat_nall_s0.json").write_text(json.dumps(cell))
  with pytest.raises(errors.UserError, match=(
      r"cells/pgdat_nall_s0.json records a run trained with "
      r"--train_steps=99, not 12: pass the study's train flags, or use a "
      r"new --study_dir")):
    study.run(_values(tmp_path), log=lambda _: None)
  assert not (tmp_path / "study" / "runs").exists()
  # Where the data is read from, how progress shows and how many
  # checkpoints are kept are not what the cell computed.
  cell["entry"]["train_record"].update(
      train_steps=TRAIN_STEPS, data_dir="/elsewhere",
      tfds_data_dir="/elsewhere/tfds", memory_budget_gib=1.5,
      progress=not cell["entry"]["train_record"]["progress"],
      keep_checkpoints=cell["entry"]["train_record"]["keep_checkpoints"] + 7)
  (cells / "pgdat_nall_s0.json").write_text(json.dumps(cell))
  _, record = study.run_record(_values(tmp_path),
                               study.grid(_values(tmp_path))[0])
  assert study.recorded_cell(_values(tmp_path), record) == cell


def test_a_partial_grid_records_its_cells_and_leaves_the_studys_files(
    finished, tmp_path):
  study_dir, expected = finished
  _train_flagfile(tmp_path / "train.cfg")
  copy = tmp_path / "study"
  for name in (study.CELLS_DIR, "evals"):
    shutil.copytree(study_dir / name, copy / name)
  shutil.copy(study_dir / study.EVAL_SETTINGS_FILE, copy)
  # The files a whole-grid command wrote before stay as they were.
  (copy / "study.json").write_text("{}")
  logged = []
  assert study.run(_values(tmp_path, write_outputs=False),
                   log=logged.append) is None
  assert logged[-1] == (f"study: cells recorded in {copy / study.CELLS_DIR}; "
                        "the whole grid's command writes study.json from them")
  assert (copy / "study.json").read_text() == "{}"
  assert not any((copy / name).exists() for name in (
      "study.md", study.COST_FILE, "curves.png", "gap.png", "final.png"))
  assert study.run(_values(tmp_path), log=lambda _: None) == expected
  with open(copy / "study.json") as f:
    assert json.load(f) == expected


def test_changed_evaluation_settings_are_refused(tmp_path):
  values = _values(tmp_path)
  (tmp_path / "study").mkdir()
  study._check_eval_settings(values)
  study._check_eval_settings(values)
  with pytest.raises(errors.UserError, match=(
      r"was evaluated with num_examples = 16, not 32: rerun with the "
      r"study's evaluation flags, or use a new --study_dir")):
    study._check_eval_settings(dict(values, eval_examples=32))


def test_a_missing_train_flagfile_is_one_line(tmp_path):
  with pytest.raises(errors.UserError, match="--train_flagfile=.* does not "
                     "exist: pass a flagfile of rlfat_tf.train"):
    study.run_record(_values(tmp_path), study.grid(_values(tmp_path))[0])


def test_a_bad_train_flag_names_the_flagfile(tmp_path):
  (tmp_path / "train.cfg").write_text("--depth=ten\n")
  with pytest.raises(errors.UserError, match="--train_flagfile=.*train.cfg: "
                     ".*depth"):
    study.run_record(_values(tmp_path), study.grid(_values(tmp_path))[0])


@pytest.mark.parametrize("argv, needle", [
    (["--methods=pgdat,mart"], "--methods must be distinct names from"),
    (["--methods=pgdat,pgdat"], "--methods must be distinct names from"),
    (["--seeds=0,x"], "--seeds must be distinct non-negative integers"),
    (["--seeds=-1"], "--seeds must be distinct non-negative integers"),
    (["--train_sizes=0"], "--train_sizes must be distinct positive"),
    (["--train_epochs=0"], "--train_epochs=0: 0 is not a positive integer"),
    (["--eval_attacks=pgd,deepfool"], "--eval_attacks must be a non-empty"),
])
def test_bad_flags_are_refused(argv, needle):
  parsed = flags.FlagValues()
  study.define_flags(parsed)
  with pytest.raises(flags.IllegalFlagValueError, match=needle):
    parsed(["study", "--study_dir=s", "--train_flagfile=t", *argv])


def test_a_bad_flag_exits_2_with_one_line_and_no_folder(tmp_path):
  result = helpers.run_module(
      "rlfat_tf.study", f"--study_dir={tmp_path / 'study'}",
      f"--train_flagfile={_train_flagfile(tmp_path / 'train.cfg')}",
      "--methods=pgdat,mart")
  assert result.returncode == 2
  (line,) = [l for l in result.stderr.splitlines() if l.startswith("error:")]
  assert "--methods must be distinct names from" in line
  assert not (tmp_path / "study").exists()


def test_help_documents_the_study():
  # --help prints the module docstring and its flags' help.
  flag_values = flags.FlagValues()
  study.define_flags(flag_values)
  text = study.__doc__ + flag_values.module_help(study)
  for needle in ("--study_dir", "--train_flagfile", "--methods", "--seeds",
                 "--train_sizes", "--train_epochs", "--eval_attacks",
                 "study.json", "final/autoattack",
                 "--monitor_examples", "curves.png", "continues where it "
                 "stopped"):
    assert needle in text, needle


def test_a_stop_ends_the_study_with_its_line_and_status(monkeypatch, capsys):
  def stopped(values):
    del values
    raise preemption.Stopped(signal.SIGINT, "at step 3", "the checkpoint c")

  monkeypatch.setattr(study, "parsed_values", dict)
  monkeypatch.setattr(study, "run", stopped)
  assert study.main() == 130
  assert capsys.readouterr().err == (
      "stopped at step 3 on SIGINT, with the checkpoint c saved: run the same "
      "command again to resume\n")
