"""Tests of `python -m rlfat_tf.report` on synthetic results files."""

import json
import pathlib
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest

from rlfat_tf import errors
from rlfat_tf import figures
from rlfat_tf import report
from rlfat_tf import saliency

from helpers import ENV
from helpers import ROOT


ALL_ATTACKS = {
    "pgd": {"steps": 20, "step_size": 0.0075, "restarts": 1, "loss": "ce"},
    "cw": {"steps": 20, "step_size": 0.0075, "restarts": 1, "loss": "cw",
           "confidence": 50},
    "apgd_ce": {"steps": 100, "restarts": 1, "momentum": 0.75},
    "apgd_dlr": {"steps": 100, "restarts": 1, "momentum": 0.75},
    "nattack": {"num_examples": 1500, "population": 300, "sigma": 0.1,
                "learning_rate": 0.008, "iterations": 200},
    "autoattack": {
        "components": ["apgd_ce", "apgd_t", "fab_t", "square"],
        "apgd_ce": {"steps": 100, "restarts": 1, "seconds": 4.0,
                    "images_per_second": 250.0},
        "apgd_t": {"steps": 100, "target_classes": 9, "restarts": 1},
        "fab_t": {"steps": 100, "target_classes": 9, "restarts": 1},
        "square": {"queries": 5000, "p_init": 0.8, "restarts": 1},
        "seconds": 20.0, "images_per_second": 50.0},
}
PASSED = {"logits": {"passed": True, "detail": "outputs are logits"}}


def _accuracies(clean, pgd, cw, apgd_ce, apgd_dlr, worst, nattack,
                autoattack):
  return {"test/clean_accuracy": clean, "test/pgd_accuracy": pgd,
          "test/cw_accuracy": cw, "test/apgd_ce_accuracy": apgd_ce,
          "test/apgd_dlr_accuracy": apgd_dlr,
          "test/worst_case_accuracy": worst, "test/nattack_accuracy": nattack,
          "test/autoattack_accuracy": autoattack}


def _write_result(folder, dataset, method, metrics, attacks, checks,
                  salience_images=None):
  """Writes a results.json (and salience.npz) like rlfat_tf.evaluate's."""
  folder.mkdir(parents=True)
  salience = None
  if salience_images is not None:
    images, labels = salience_images
    maps = np.random.default_rng(len(method)).random(images.shape[:3])
    saliency.save_maps(str(folder / "salience.npz"), images, labels, maps)
    salience = {"file": "salience.npz", "noise_level": 0.1, "samples": 50,
                "num_images": len(images)}
  content = {
      "schema_version": 1,
      "run": {"model_dir": f"runs/{method}", "checkpoint": "ckpt-6",
              "which": "last", "dataset": dataset, "method": method,
              "architecture": "WRN-10-1", "depth": 10, "width": 1,
              "train_flags": {}},
      "eval": {"split": "test", "num_examples": 1000, "epsilon": 0.03,
               "batch_size": 100, "seed": 0, "sensitivity_inputs": "pgd",
               "sensitivity_attack": {
                   "epsilon": 0.03, "step_size": 0.0075, "steps": 10,
                   "loss": "ce", "start": "uniform", "bn_mode": "eval"}},
      "attacks": attacks, "metrics": metrics, "checks": checks,
      "salience": salience, "time_seconds": 12.5,
      "hardware": {"platform": "Linux", "cpu_count": 2,
                   "devices": ["/device:CPU:0"], "tensorflow": "2.21.0"},
  }
  path = folder / "results.json"
  path.write_text(json.dumps(content))
  return str(path)


@pytest.fixture(scope="module")
def results_files(tmp_path_factory):
  root = tmp_path_factory.mktemp("results")
  rng = np.random.default_rng(0)
  cifar = (rng.random((3, 8, 8, 3)).astype(np.float32), np.array([3, 8, 0]))
  stl = (rng.random((2, 12, 12, 3)).astype(np.float32), np.array([1, 2]))
  sensitivity = {"sensitivity/brightness_-0.15": 1.2345,
                 "sensitivity/gamma_0.8": 1.1}
  paper_only = {k: v for k, v in ALL_ATTACKS.items()
                if k not in ("nattack", "autoattack")}
  return [
      _write_result(root / "c10_pgdat", "cifar10", "pgdat",
                    {**_accuracies(.81, .45, .44, .43, .44, .42, .55, .40),
                     **sensitivity}, ALL_ATTACKS, PASSED, cifar),
      _write_result(root / "c10_rlfat_p", "cifar10", "rlfat_p",
                    {**_accuracies(.84, .48, .47, .46, .47, .453, .6, .43),
                     "sensitivity/brightness_-0.15": 0.5},
                    ALL_ATTACKS,
                    {**PASSED, "black_box_beats_white_box": {
                        "passed": False,
                        "detail": "N attack 60.0% > PGD 48.0%"}}, cifar),
      _write_result(root / "c10_rbsat_p", "cifar10", "rbsat_p",
                    {k: v for k, v in _accuracies(
                        .83, .47, .46, .45, .46, .44, 0, 0).items()
                     if k not in ("test/nattack_accuracy",
                                  "test/autoattack_accuracy")},
                    paper_only, PASSED, cifar),
      _write_result(root / "stl_trades", "stl10", "trades",
                    {"test/clean_accuracy": .6, "test/pgd_accuracy": .3},
                    {"pgd": {**ALL_ATTACKS["pgd"], "steps": 7,
                             "seconds": 3.25}}, PASSED,
                    stl),
  ]


@pytest.fixture(scope="module")
def cli_run(results_files, tmp_path_factory):
  out = tmp_path_factory.mktemp("report")
  proc = subprocess.run(
      [sys.executable, "-m", "rlfat_tf.report",
       f"--results={','.join(results_files)}", f"--output_dir={out}",
       "--rbs_images=3", "--rbs_blocks=2,4"],
      capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=300,
      check=False)
  return proc, out


def _lines(out):
  return (out / "report.md").read_text().splitlines()


def test_cli_writes_the_report_and_figures(cli_run):
  proc, out = cli_run
  # A results file has a failed check: the report is written, the exit is 3.
  assert proc.returncode == 3, proc.stderr
  assert proc.stdout.strip() == f"wrote {out / 'report.md'}"
  assert sorted(p.name for p in out.iterdir()) == [
      "ablation.png", "rbs.png", "report.md", "salience.png",
      "salience_2.png"]


def test_table1_rows_in_paper_order_with_percentages(cli_run):
  lines = _lines(cli_run[1])
  # No results file ran APGD-T, FAB-T or Square on its own: no columns.
  header = ("| Dataset | Model | Clean | PGD-k | CW-20 | APGD-CE | APGD-DLR | "
            "Worst case | N attack (1500) | AutoAttack |")
  start = lines.index(header)
  assert lines[start + 2:start + 6] == [
      "| STL-10 | TRADES | 60.0 | 30.0 | — | — | — | — | — | — |",
      "| CIFAR-10 | PGDAT | 81.0 | 45.0 | 44.0 | 43.0 | 44.0 | 42.0 | 55.0 | "
      "40.0 |",
      "| CIFAR-10 | RLFAT_P **(check FAILED)** | 84.0 | 48.0 | 47.0 | 46.0 | "
      "47.0 | 45.3 | 60.0 | 43.0 |",
      "| CIFAR-10 | RBSAT_P | 83.0 | 47.0 | 46.0 | 45.0 | 46.0 | 44.0 | — | "
      "— |",
  ]
  text = "\n".join(lines)
  assert ("AutoAttack runs APGD-CE, APGD-T, FAB-T, Square in turn, each on "
          "the images still robust, and counts an image as robust only if "
          "all of them failed." in lines)
  # A composite attack's settings: its components in order, then each
  # one's, without timings.
  assert ("AutoAttack: components apgd_ce, apgd_t, fab_t, square, apgd_ce "
          "(steps 100, restarts 1), apgd_t (steps 100, restarts 1, "
          "target_classes 9), fab_t (steps 100, restarts 1, target_classes "
          "9), square (p_init 0.8, queries 5000, restarts 1)" in text)
  assert "seconds" not in text
  # The PGD steps differ between rows, so each settings group is stated.
  assert ("- STL-10 TRADES: ε = 0.03 (7.65/255), 1000 test images; PGD: "
          "steps 7, loss ce, restarts 1, step_size 0.0075." in text)
  assert ("N attack: iterations 200, learning_rate 0.008, num_examples "
          "1500, population 300, sigma 0.1; AutoAttack: " in text)


def test_table2_rows_are_methods_and_columns_settings(cli_run):
  lines = _lines(cli_run[1])
  start = lines.index(
      "| Model | CIFAR-10 brightness -0.15 | CIFAR-10 gamma 0.8 |")
  assert lines[start + 2:start + 5] == [
      "| PGDAT | 1.2345 | 1.1000 |",
      "| RLFAT_P | 0.5000 | — |",
      "| RBSAT_P | — | — |",
  ]
  assert lines[start + 8] == (
      "Inputs: the PGD-10 output of every image (ε 0.03, step 0.0075), for "
      "every model. The official code measures on the PGD output of every "
      "test image, with its training k.")


@pytest.mark.parametrize("recorded, words", [
    ({"sensitivity_inputs": "pgd", "sensitivity_attack": {
        "epsilon": 0.03, "step_size": 0.0075, "steps": 7}},
     "the PGD-7 output of every image (ε 0.03, step 0.0075)"),
    ({"sensitivity_inputs": "pgd"},
     "PGD examples that keep the clean image of every misclassified example "
     "(an older evaluation: re-evaluate)"),
    ({"sensitivity_inputs": "clean", "sensitivity_attack": None},
     "the clean images"),
    ({}, "unrecorded images"),
])
def test_sensitivity_inputs_say_how_they_were_made(recorded, words):
  result = report.Result("r.json", {"eval": {"epsilon": 0.03, **recorded}})
  assert report.sensitivity_inputs(result) == words


def test_failed_check_is_loud_in_report_and_stderr(cli_run, results_files):
  proc, out = cli_run
  lines = _lines(out)
  assert ("> **WARNING: 1 INTEGRITY CHECK(S) FAILED.** See [Integrity "
          "checks](#integrity-checks).") in lines
  start = lines.index("## Integrity checks")
  assert lines[start + 2:start + 5] == [
      "**1 OF 5 CHECK(S) FAILED.** The numbers of these models are not "
      "trustworthy until the cause is fixed:",
      "",
      f"- **FAILED** CIFAR-10 RLFAT_P ({results_files[1]}): "
      "black_box_beats_white_box: N attack 60.0% > PGD 48.0%"]
  assert (f"INTEGRITY CHECK FAILED: CIFAR-10 RLFAT_P ({results_files[1]}): "
          "black_box_beats_white_box: N attack 60.0% > PGD 48.0%"
          in proc.stderr.splitlines())


def test_integrity_says_when_all_passed_or_none_ran(results_files, tmp_path):
  lines, failures = report.integrity(
      report.load_results([results_files[0], results_files[3]]))
  assert lines == ["All 2 check(s) of 2 results file(s) passed."]
  assert failures == []
  # A TRADES result with an empty "checks" object.
  unchecked = _broken(tmp_path, lambda c: c["run"].update(method="trades"))
  lines, _ = report.integrity(
      report.load_results([results_files[0], unchecked]))
  assert lines[0] == "All 1 check(s) of 1 results file(s) passed."
  assert lines[-1] == (f"- **NO CHECKS RECORDED** for CIFAR-10 TRADES "
                       f"({unchecked}).")


def test_figures_are_linked_and_drawn(cli_run):
  out = cli_run[1]
  text = (out / "report.md").read_text()
  for name in ("ablation.png", "salience.png", "salience_2.png", "rbs.png"):
    assert f"]({name})" in text
  assert "**The salience maps are of 2 different image sets**" in text
  # Three CIFAR-10 models share images: 3 rows, the image and 3 maps.
  with Image.open(out / "salience.png") as image:
    assert image.size == figures.grid_size(3, 4)
    assert np.asarray(image.convert("L")).var() > 0
  # The STL-10 model's maps are of other images: a figure of their own.
  with Image.open(out / "salience_2.png") as image:
    assert image.size == figures.grid_size(2, 2)
  with Image.open(out / "rbs.png") as image:
    assert image.size == figures.grid_size(3, 3)
  with Image.open(out / "ablation.png") as image:
    assert image.size == figures.ablation_size(1)


def test_ablation_is_skipped_without_pairs(results_files, tmp_path):
  results = report.load_results([results_files[0], results_files[3]])
  lines = report.ablation(results, str(tmp_path))
  assert lines[0].startswith("Skipped: no dataset has both an RBSAT and an "
                             "RLFAT result")
  assert "CIFAR-10 PGDAT, STL-10 TRADES" in lines[0]
  assert not list(tmp_path.iterdir())


def test_ablation_rows_follow_each_framework(results_files, tmp_path,
                                             monkeypatch):
  drawn = []
  monkeypatch.setattr(report.figures, "ablation_bars",
                      lambda rows, path: drawn.append((rows, path)))
  report.ablation(report.load_results(results_files), str(tmp_path))
  (rows, path), = drawn
  assert path == str(tmp_path / "ablation.png")
  # TRADES has no RBSAT_T / RLFAT_T pair, so STL-10 has no panel.
  assert [(r["dataset"], r["method"]) for r in rows] == [
      ("CIFAR-10", "PGDAT"), ("CIFAR-10", "RBSAT_P"), ("CIFAR-10", "RLFAT_P")]
  assert rows[0]["accuracy"] == {"Clean": .81, "PGD-k": .45,
                                 "Worst case": .42}


def test_missing_salience_file_is_reported_not_fatal(results_files, tmp_path,
                                                     capsys):
  folder = tmp_path / "run"
  folder.mkdir()
  content = json.loads(pathlib.Path(results_files[3]).read_text())
  path = folder / "results.json"
  path.write_text(json.dumps(content))  # its salience.npz is not copied
  lines = report.salience(report.load_results([str(path)]), str(tmp_path))
  assert lines[0].startswith("- **NOT SHOWN**: STL-10 TRADES: salience file")
  assert "Skipped: no results file has salience maps" not in lines[0]
  assert "warning: salience file" in capsys.readouterr().err


def test_same_dataset_and_method_get_distinct_labels(results_files,
                                                     tmp_path):
  copy = tmp_path / "again.json"
  copy.write_text(pathlib.Path(results_files[0]).read_text())
  results = report.load_results([results_files[0], str(copy)])
  assert [r.label for r in results] == [f"PGDAT ({results_files[0]})",
                                        f"PGDAT ({copy})"]


def _broken(tmp_path, edit):
  content = json.loads(_sample_content())
  edit(content)
  path = tmp_path / "results.json"
  path.write_text(json.dumps(content))
  return str(path)


def _sample_content():
  return json.dumps({
      "schema_version": 1,
      "run": {"dataset": "cifar10", "method": "pgdat",
              "architecture": "WRN-10-1"},
      "eval": {"epsilon": 0.03, "num_examples": 10},
      "attacks": {}, "metrics": {"test/clean_accuracy": 0.5},
      "checks": {}})


@pytest.mark.parametrize("edit, message", [
    (lambda c: c.update(schema_version=2), "schema_version 2"),
    (lambda c: c["run"].pop("method"), "required key run.method"),
    (lambda c: c.pop("checks"), "required 'checks' object"),
    (lambda c: c["metrics"].clear(), "required key metrics.test/clean_acc"),
    (lambda c: c["metrics"].update({"test/pgd_accuracy": 45.0}),
     "outside [0, 1]"),
])
def test_bad_results_are_one_line_errors(tmp_path, edit, message):
  path = _broken(tmp_path, edit)
  with pytest.raises(errors.UserError, match=message.replace("[", r"\[")) as e:
    report.load_result(path)
  assert "\n" not in str(e.value) and "rlfat_tf.evaluate" in str(e.value)


def test_cli_error_exits_2_and_writes_nothing(tmp_path):
  path = _broken(tmp_path, lambda c: c.update(schema_version=7))
  out = tmp_path / "out"
  proc = subprocess.run(
      [sys.executable, "-m", "rlfat_tf.report", f"--results={path}",
       f"--output_dir={out}"],
      capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=300,
      check=False)
  assert proc.returncode == 2
  # TensorFlow's start-up lines go to stderr too; the error is our one line.
  assert "Traceback" not in proc.stderr
  assert [l for l in proc.stderr.splitlines() if l.startswith("error")] == [
      f"error: {path} has schema_version 7, but this report reads version 1: "
      "rewrite it with this version's rlfat_tf.evaluate"]
  assert not out.exists()
