"""The documentation's generated tables and its docstring check (rlfat_tf.pages).

The first test is the one that matters day to day: every block of README.md
and docs/*.md is what ``python -m rlfat_tf.pages`` writes now from the
committed results files, so a results file or a table edited by hand fails
it. The others edit copies of the pages and results files and check that each
kind of drift is caught, and that the docstring check and the strict mkdocs
build fail where they should.
"""

import importlib.util
import json
import os
import shutil
import subprocess
import sys

import pytest

from helpers import ROOT
from rlfat_tf import errors
from rlfat_tf import pages


def test_every_generated_block_is_current():
  assert pages.stale() == [], (
      "a generated block differs from its results file: run "
      "python -m rlfat_tf.pages (and commit the pages), or undo the hand edit")


@pytest.fixture
def root(tmp_path, monkeypatch):
  """A copy of the pages, results files and package source to edit."""
  for name in ("README.md", "mkdocs.yml"):
    shutil.copy(ROOT / name, tmp_path / name)
  for name in ("docs", "results"):
    shutil.copytree(ROOT / name, tmp_path / name)
  shutil.copytree(ROOT / "rlfat_tf", tmp_path / "rlfat_tf",
                  ignore=shutil.ignore_patterns("__pycache__", "assets"))
  monkeypatch.setattr(pages, "ROOT", tmp_path)
  return tmp_path


def _edit_json(path, edit):
  data = json.loads(path.read_text())
  edit(data)
  path.write_text(json.dumps(data))


def test_a_results_file_edited_by_hand_makes_its_blocks_stale(root):
  def lower(data):
    data["metrics"]["test/autoattack_accuracy"] = 0.123
  _edit_json(root / "results/c10_wrn10-2_pgdat_autoattack.json", lower)
  assert pages.stale() == ["README.md: autoattack_headline",
                           "docs/results.md: table1_autoattack"]
  pages.write()
  assert pages.stale() == []
  assert "**12.3**" in (root / "README.md").read_text()


def test_a_table_edited_by_hand_is_stale_and_rewritten(root):
  page = root / "docs" / "study.md"
  text = page.read_text()
  assert "| 35.5 ± 0.7 |" in text
  page.write_text(text.replace("| 35.5 ± 0.7 |", "| 37.5 ± 0.7 |", 1))
  assert pages.stale() == ["docs/study.md: study_summary"]
  assert pages.write() == ["docs/study.md: study_summary"]
  assert page.read_text() == text


def test_a_study_file_edited_by_hand_is_stale(root):
  def shift(data):
    data["summary"][0]["final/clean"]["mean"] += 0.01
  _edit_json(root / "results/study_cifar10_cpu/study.json", shift)
  assert pages.stale() == ["docs/study.md: study_summary"]


def test_a_changed_figure_is_stale_and_copied(root):
  (root / "results/study_cifar10_cpu/gap.png").write_bytes(b"not a png")
  assert pages.stale() == ["docs/figures/study_gap.png"]
  pages.write()
  assert (root / "docs/figures/study_gap.png").read_bytes() == b"not a png"


def _welch(difference, p):
  return {"difference": difference, "t": 1.0, "df": 4.0, "p": p}


def test_the_study_verdicts_and_costs_are_its_files_numbers(root):
  def hand_made(data):
    data["grid"]["train_sizes"] = [250, 1000]
    data["comparisons"] = [{
        "method": "rlfat_t", "baseline": "trades", "train_size": 1000,
        "final/autoattack": _welch(0.019, 0.1224),
        "final/pgd": _welch(0.043, 0.0004), "final/robust": _welch(0.02, 0.2),
        "final/clean": _welch(-0.005, 0.9),
        "curve/robust_gap_final": _welch(-0.44, 0.0004),
        "best/autoattack": _welch(-0.015, 0.413)}]

  def spent(cost):
    cost["summary"][0].update(
        train_seconds={"mean": 180.0, "std": 6.0, "n": 3},
        eval_seconds={"mean": 600.0, "std": None, "n": 1})
    cost["total"] = {"train_seconds": 7200.0, "eval_seconds": 1800.0}
  _edit_json(root / pages.AA_STUDY / "study.json", hand_made)
  _edit_json(root / pages.AA_STUDY / "cost.json", spent)
  verdicts = pages.aa_study_verdicts()
  assert verdicts[0] == ("| comparison | checkpoint | AutoAttack | PGD-20 | "
                         "worst case of both | clean | train − test robust "
                         "gap (curves) |")
  assert verdicts[2:4] == [
      "| RLFAT_T − TRADES, n=1000 | final | +1.9 (p 0.122) | +4.3 (p < "
      "0.001) | +2.0 (p 0.200) | -0.5 (p 0.900) | -44.0 (p < 0.001) |",
      "| RLFAT_T − TRADES, n=1000 | best | -1.5 (p 0.413) | — | — | — | — |"]
  cost = pages.aa_study_cost()
  assert cost[2].endswith("| 3.0 ± 0.1 min | 10.0 ± 0.0 min |")
  assert ("In all: 2.00 hours of training and 0.50 hours of evaluation"
          in cost[-1])
  assert "--train_sizes=250,1000" in "\n".join(pages.aa_study_summary())


def test_the_size_pilot_lines_runs_up_by_epoch(root):
  from rlfat_tf import study  # pylint: disable=import-outside-toplevel

  def mark(data):
    (run,) = [r for r in data["runs"] if r["train_size"] == 1000]
    # 500 steps of 32 images are 16 epochs of 1,000 (of 250 they are 64).
    (point,) = [p for p in run["curves"] if p["step"] == 500]
    point[study.TEST_ROBUST] = 0.999
  _edit_json(root / pages.SIZE_PILOT / "study.json", mark)
  lines = pages.size_pilot()
  assert lines[0].startswith("| epoch | 16 | 32 |")
  (row,) = [l for l in lines if l.startswith("| 1,000 images: test |")]
  assert row.startswith("| 1,000 images: test | 99.9 |")
  assert pages.stale() == ["docs/study.md: size_pilot"]


def test_check_exits_1_naming_the_stale_block(root, capsys):
  page = root / "README.md"
  page.write_text(page.read_text().replace("| 46.1 |", "| 47.1 |", 1))
  assert pages.main(["--check"]) == 1
  assert capsys.readouterr().out == "stale: README.md: autoattack_headline\n"
  assert pages.main([]) is None
  assert pages.main(["--check"]) is None


def _aabench_results():
  """A results file as ``aabench.run`` writes it, for 4 images."""
  from rlfat_tf import aabench  # pylint: disable=import-outside-toplevel
  seconds = {"apgd_ce": 2.0, "apgd_t": 4.0, "fab_t": 5.0, "square": 8.0}
  names = {stage: name for stage, (name, _) in aabench.COMPONENTS.items()}
  ours = {"components": {s: {"seconds": t, "images": 3}
                         for s, t in seconds.items()}, "total_seconds": 20.0}
  theirs = {"components": {names[s]: {"seconds": 2 * t, "images": 3}
                           for s, t in seconds.items()},
            "total_seconds": 50.0}
  verdicts = aabench.compare_verdicts([True, False, True, False],
                                      [True, False, False, False])
  verdicts["clean_differing"] = 0
  return {
      "settings": {"num_examples": 4, "epsilon": 0.03, "norm": "Linf",
                   "version": "standard", "batch_size": 100, "seed": 0},
      "seconds": aabench.timing_table(ours, theirs),
      "verdicts": verdicts,
      "project": {"clean_accuracy": 0.75, "robust_accuracy": 0.5},
      "reference": {"clean_accuracy": 0.75, "robust_accuracy": 0.25,
                    "versions": {"pyautoattack": "0.2.0", "torch": "2.13.0"}},
      "run": {"model_dir": "models/c10_wrn10-2_pgdat",
              "checkpoint": "models/c10_wrn10-2_pgdat/checkpoints/ckpt-2000",
              "step": 2000, "dataset": "cifar10",
              "architecture": "WRN-10-2"},
      "machine": {"cpu_model": "Test CPU", "cores": 2, "platform": "Linux",
                  "project_cpu": 0, "reference_cpu": 1,
                  "load_average_start": [0.5, 0.4, 0.3],
                  "load_average_end": [2.0, 1.0, 0.5],
                  "tensorflow": "2.21.0", "keras": "3.15.1"}}


def test_autoattack_benchmark_is_not_measured_until_its_file_exists(root):
  path = root / pages.AUTOATTACK_BENCHMARK.path
  blocks = ["docs/performance.md: benchmark_autoattack",
            "docs/results.md: benchmark_autoattack"]
  committed = path.exists()
  path.unlink(missing_ok=True)
  absent = "\n".join(pages.benchmark_autoattack())
  assert absent.startswith("Not measured yet: "
                           "`results/benchmark_autoattack.json`")
  assert "--mode=autoattack" in absent
  # Before the file is committed the pages say so; after, removing it shows.
  assert pages.stale() == (blocks if committed else [])
  path.write_text(json.dumps(_aabench_results()))
  assert pages.stale() == blocks
  pages.write()
  text = (root / "docs" / "performance.md").read_text()
  # Per component, both sides' seconds and the reference / project ratio.
  assert "| APGD-T | 3 / 3 | 4.0 | 8.0 | 2.00 |" in text
  assert "| **total** |  | 20.0 | 50.0 | 2.50 |" in text
  assert ("Per-image verdicts differ on 1 of 4 images (1 robust only for "
          "rlfat_tf, 0 only for the reference): indices 2") in text
  assert "load average (1 min) 0.50 at the start, 2.00 at the end" in text
  assert "--num_examples=4 --output=results/benchmark_autoattack.json" in text
  assert pages.stale() == []
  # With the model passes' floor, a column and the two sides against it.
  data = _aabench_results()
  data["model_passes"] = {
      "seconds_per_image": {"forward": 0.001, "forward_backward": 0.002,
                            "batch_size": 100, "repeats": 20},
      "floor_seconds": {"apgd_ce": 1.0, "apgd_t": 2.0, "fab_t": 3.0,
                        "square": 4.0, "total": 10.0}}
  path.write_text(json.dumps(data))
  pages.write()
  text = (root / "docs" / "performance.md").read_text()
  assert "| APGD-T | 3 / 3 | 4.0 | 8.0 | 2.00 | 2.0 |" in text
  assert "| **total** |  | 20.0 | 50.0 | 2.50 | 10.0 |" in text
  assert ("1.00 ms forward and 2.00 ms forward-backward per image at batch "
          "100. Both sides run the same model, so neither can go much below "
          "it: rlfat_tf takes 2.00 times it, the reference 5.00 times.") in text


def test_training_benchmark_renders_its_table_and_targets(root):
  data = {
      "settings": {"batch_size": 4, "attack_steps": 1, "rounds": 2,
                   "mixed_precision": "float32", "xla": ["off"]},
      "machine": {"cpus": 2, "gpus": 0, "load_average_start": 0.1,
                  "load_average_end": 0.2},
      "model": {"name": "wrn-10-1"},
      "methods": {"pgdat": {"flops_per_step": 2e9, "xla_off": {
          "rates": [9.0, 11.0], "examples_per_second": 10.0,
          "seconds_per_step": 0.4, "flops_per_second": 5e9,
          "fraction_of_peak": 0.5}}},
      "relative_cost": {},
      "conv_peak": {"batch_size": 4, "peak_flops_per_second": 1e10,
                    "xla_off": {"flops_per_second": 1e10},
                    "xla_on": {"flops_per_second": 8e9}},
      "input_pipeline": {"examples_per_second": 300.0,
                         "times_fastest_training": 30.0},
      "targets": {"input pipeline / fastest training >= 20": {
          "value": 30.0, "met": True}}}
  (root / pages.TRAINING_BENCHMARK.path).write_text(json.dumps(data))
  text = "\n".join(pages.benchmark_training())
  assert "| pgdat | off | 10.00 | 20% | 0.40 | 2.0 | 5.0 | 50% |" in text
  assert "input pipeline / fastest training >= 20: 30.000 (met)" in text
  assert "load average (1 min) 0.10 at the start, 0.20 at the end" in text


@pytest.mark.parametrize("text, message", [
    ("<!-- generated: nope -->\n<!-- end generated -->\n",
     "page:1: unknown generated block 'nope'"),
    ("<!-- generated: table2 -->\n", "page:1: block table2 is not closed"),
    ("<!-- end generated -->\n", "page:1: <!-- end generated --> without"),
    ("<!-- generated: table2 -->\n<!-- generated: table2 -->\n",
     "page:2: block table2 starts inside block table2"),
])
def test_malformed_blocks_are_refused_naming_the_line(text, message):
  with pytest.raises(errors.UserError, match=message):
    pages.split_blocks(text)


def test_text_outside_blocks_is_kept():
  text = "before\n<!-- generated: api_reference -->\nold\n<!-- end generated -->\nafter"
  new, changed = pages.render(text)
  assert changed == ["api_reference"]
  assert new.startswith("before\n<!-- generated: api_reference -->\n## ")
  assert new.endswith("\n<!-- end generated -->\nafter")


# --- The API reference and the docstring check -------------------------------

def test_the_reference_lists_every_public_name():
  import rlfat_tf  # pylint: disable=import-outside-toplevel
  text = (ROOT / "docs" / "reference.md").read_text()
  assert set(pages.public_names()) == set(rlfat_tf.__all__)
  for name, (module, attribute) in pages.public_names().items():
    assert f"## `rlfat_tf.{name}`" in text
    assert f"\n::: {pages.reference_target(module, attribute)}\n" in text


def test_every_public_name_has_a_docstring():
  assert pages.missing_docstrings() == []


def test_a_public_function_without_a_docstring_is_named(root):
  assert pages.missing_docstrings(root) == []
  # A public function of a public module, with no docstring at all.
  with open(root / "rlfat_tf/methods.py", "a", encoding="utf-8") as f:
    f.write("\n\ndef undocumented(x):\n  return x\n")
  assert pages.missing_docstrings(root) == ["rlfat_tf.methods.undocumented"]


def test_a_public_name_and_a_method_without_docstrings_are_named(root):
  source = root / "rlfat_tf" / "keras_trainer.py"
  text = source.read_text()
  start = text.index("class AdversarialTrainer")
  body = text.index('"""', start)
  end = text.index('"""', body + 3) + 3
  source.write_text(text[:body] + "pass\n\n  def extra(self):\n    return 1"
                    + text[end:])
  missing = pages.missing_docstrings(root)
  assert "rlfat_tf.keras_trainer.AdversarialTrainer" in missing
  assert "rlfat_tf.keras_trainer.AdversarialTrainer.extra" in missing


def test_a_public_module_without_a_docstring_is_named(root):
  source = root / "rlfat_tf" / "models" / "__init__.py"
  text = source.read_text()
  end = text.index('"""', 3) + 3
  source.write_text(text[end:])
  assert pages.missing_docstrings(root) == ["rlfat_tf.models"]


def test_a_public_name_of_a_missing_attribute_is_refused(root):
  init = root / "rlfat_tf" / "__init__.py"
  init.write_text(init.read_text().replace(
      '("rlfat_tf.classifier", "load")', '("rlfat_tf.classifier", "gone")'))
  with pytest.raises(errors.UserError, match="rlfat_tf.load_model names "
                     "rlfat_tf.classifier.gone, which rlfat_tf.classifier "
                     "does not define"):
    pages.missing_docstrings(root)


# --- The strict mkdocs build -------------------------------------------------

def _build(root):
  return subprocess.run(
      [sys.executable, "-m", "mkdocs", "build", "--strict",
       "--site-dir", str(root / "site")], cwd=root, capture_output=True,
      text=True, check=False, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})


needs_mkdocs = pytest.mark.skipif(
    importlib.util.find_spec("mkdocs") is None,
    reason="pip install -r requirements-docs.txt for the mkdocs tests")


@needs_mkdocs
def test_the_strict_build_passes_on_the_committed_docs(root):
  result = _build(root)
  assert result.returncode == 0, result.stdout + result.stderr


@needs_mkdocs
def test_the_strict_build_fails_on_a_missing_docstring(root):
  with open(root / "rlfat_tf/methods.py", "a", encoding="utf-8") as f:
    f.write("\n\ndef undocumented(x):\n  return x\n")
  result = _build(root)
  assert result.returncode != 0
  assert ("1 public name(s) of rlfat_tf without a docstring: "
          "rlfat_tf.methods.undocumented") in result.stdout + result.stderr


@needs_mkdocs
@pytest.mark.parametrize("edit, message", [
    (lambda r: (r / "docs/training.md").write_text(
        (r / "docs/training.md").read_text() + "\n[gone](gone.md)\n"),
     "contains a link 'gone.md'"),
    (lambda r: (r / "docs/training.md").write_text(
        (r / "docs/training.md").read_text() + "\n[gone](results.md#nowhere)\n"),
     "does not contain an anchor '#nowhere'"),
    (lambda r: (r / "docs/extending.md").unlink(),
     "'extending.md' is included in the 'nav' configuration"),
    (lambda r: (r / "docs/extra.md").write_text("# Extra\n"),
     "extra.md"),
])
def test_the_strict_build_fails_on_a_broken_link_or_page(root, edit, message):
  edit(root)
  result = _build(root)
  assert result.returncode != 0
  assert message in result.stdout + result.stderr
