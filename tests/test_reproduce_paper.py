"""Tests of scripts/reproduce_paper.sh, the paper-scale protocol.

Nothing is trained: most tests read the script's dry run, and the ones that
follow a real run point $PYTHON at a stand-in that logs each command, writes
the results file an evaluation would write, and fails when told to.
"""

import os
import re
import shlex
import shutil
import subprocess

import pytest

from helpers import ROOT

SCRIPT = ROOT / "scripts" / "reproduce_paper.sh"
# Written out rather than read from the script: the paper's order, datasets
# first, the RBSAT ablations after the four methods of Table 1.
DATASETS = ("cifar10", "cifar100", "stl10")
METHODS = ("pgdat", "trades", "rlfat_p", "rlfat_t", "rbsat_p", "rbsat_t")
PAPER = [f"{d}_{m}" for d in DATASETS for m in METHODS]
# Stands in for the interpreter: logs "<cwd> <args>", writes the --output of
# an evaluation (making its folder, as rlfat_tf.evaluate does) and exits with $FAKE_STATUS when its arguments contain
# $FAKE_FAIL.
FAKE_PYTHON = """#!/usr/bin/env bash
echo "$PWD $*" >>"$FAKE_LOG"
if [[ -n "${FAKE_FAIL:-}" && "$*" == *"$FAKE_FAIL"* ]]; then
  exit "$FAKE_STATUS"
fi
for arg in "$@"; do
  case "$arg" in
    --output=*) mkdir -p "$(dirname "${arg#*=}")"; echo '{}' >"${arg#*=}" ;;
  esac
done
"""


def _run(*args, cwd=ROOT, script=SCRIPT, env=None):
  full_env = {k: v for k, v in os.environ.items() if k != "PYTHON"}
  full_env.update(env or {})
  return subprocess.run(["bash", str(script), *args], cwd=cwd, env=full_env,
                        capture_output=True, text=True, check=False)


def _dry_run(*args, **kwargs):
  result = _run("--dry_run", *args, **kwargs)
  assert result.returncode == 0, result.stderr
  assert result.stderr == ""
  return result.stdout.splitlines()


def _commands(lines):
  """The command lines of a dry run, split into arguments."""
  return [shlex.split(line) for line in lines
          if not line.startswith(("skip:", "summary:"))]


def _header_hours(name, flags_dir=ROOT / "flags"):
  """The runtime estimate ("= N h.") in an experiment file's header."""
  text = (flags_dir / f"{name}.cfg").read_text()
  found = [float(h) for line in text.splitlines() if line.startswith("#")
           for h in re.findall(r"= (\d+(?:\.\d+)?) h\.", line)]
  assert len(found) == 1, name
  return found[0]


def _summary(lines):
  """(training runs, GPU-hours, evaluations to run, skipped) of a dry run."""
  assert lines[-1].startswith("summary:")
  match = re.fullmatch(
      r"summary: (\d+) training runs, ([\d.]+) GPU-hours of training "
      r"\(sum of the flagfile estimates\); evaluations: (\d+) to run, "
      r"(\d+) skipped; 1 report", lines[-1])
  assert match, lines[-1]
  runs, hours, to_run, skipped = match.groups()
  return int(runs), float(hours), int(to_run), int(skipped)


def _expected_commands(names, runs="runs/paper", results="results/paper",
                       report="report/paper"):
  return (
      [["cd", str(ROOT)]]
      + [["python", "-m", "rlfat_tf.train", f"--flagfile=flags/{n}.cfg",
          f"--model_dir={runs}/{n}"] for n in names]
      + [["python", "-m", "rlfat_tf.evaluate", f"--model_dir={runs}/{n}",
          f"--output={results}/{n}.json"] for n in names]
      + [["python", "-m", "rlfat_tf.report",
          "--results=" + ",".join(f"{results}/{n}.json" for n in names),
          f"--output_dir={report}"]])


def _copy_tree(tmp_path):
  """A copy of the script and flags/, to break without touching the repo."""
  root = tmp_path / "repo"
  (root / "scripts").mkdir(parents=True)
  shutil.copy(SCRIPT, root / "scripts")
  shutil.copytree(ROOT / "flags", root / "flags")
  return root


def test_paper_list_is_every_experiment_flagfile():
  on_disk = sorted(p.stem for p in (ROOT / "flags").glob("*_*.cfg"))
  assert on_disk == sorted(PAPER)


def test_default_dry_run_trains_all_then_evaluates_then_reports():
  lines = _dry_run()
  assert _commands(lines) == _expected_commands(PAPER)
  assert _summary(lines)[0] == 18


def test_gpu_hours_are_the_sum_of_the_headers():
  # 12 CIFAR runs of 5.7 to 9.4 h and 6 STL-10 runs of 0.9 to 1.2 h: the
  # bounds catch a pattern that misses the numbers.
  expected = sum(_header_hours(n) for n in PAPER)
  assert 90 < expected < 110
  _, hours, _, _ = _summary(_dry_run())
  assert hours == pytest.approx(expected, abs=0.05)


def test_subset_runs_in_the_given_order_and_sums_its_hours():
  lines = _dry_run("--datasets=stl10,cifar100", "--methods=rlfat_t,pgdat")
  names = ["stl10_rlfat_t", "stl10_pgdat", "cifar100_rlfat_t",
           "cifar100_pgdat"]
  assert _commands(lines) == _expected_commands(names)
  runs, hours, to_run, skipped = _summary(lines)
  assert (runs, to_run, skipped) == (4, 4, 0)
  assert hours == pytest.approx(sum(_header_hours(n) for n in names),
                                abs=0.05)


def test_data_dir_goes_to_training_only(tmp_path):
  commands = _commands(_dry_run("--datasets=cifar10", "--methods=pgdat",
                                "--data_dir=data", cwd=tmp_path))
  assert commands[1][-1] == f"--data_dir={tmp_path}/data"
  assert [c for c in commands if any("--data_dir" in a for a in c)] == [
      commands[1]]


@pytest.mark.parametrize("args,message", [
    (["--datasets=imagenet"], "error: unknown dataset 'imagenet' in "
     "--datasets; choose from cifar10, cifar100, stl10"),
    (["--methods=rlfat"], "error: unknown method 'rlfat' in --methods; choose "
     "from pgdat, rbsat_p, rbsat_t, rlfat_p, rlfat_t, trades"),
    (["--datasets=cifar10,,stl10"], "error: unknown dataset '' in "
     "--datasets; choose from cifar10, cifar100, stl10"),
    (["--methods="], "error: --methods is empty; choose from pgdat, rbsat_p, "
     "rbsat_t, rlfat_p, rlfat_t, trades"),
    (["--methods=pgdat,trades,pgdat"], "error: --methods lists 'pgdat' twice"),
    (["--runs"], "error: unknown option '--runs'; options are --name=value, "
     "see --help"),
    (["--dry_run=1"], "error: unknown option '--dry_run=1'; options are "
     "--name=value, see --help"),
    (["--results_dir=/a,b"], "error: --results_dir=/a,b has a comma, which "
     "the report's --results list cannot hold"),
])
def test_bad_option_is_one_line_and_exit_2(args, message):
  result = _run("--dry_run", *args)
  assert (result.returncode, result.stdout) == (2, "")
  assert result.stderr.splitlines() == [message]


def test_existing_results_file_is_skipped(tmp_path):
  (tmp_path / "cifar10_trades.json").write_text("{}")
  lines = _dry_run("--datasets=cifar10", "--methods=pgdat,trades",
                   f"--results_dir={tmp_path}")
  expected = [" ".join(c) for c in _expected_commands(
      ["cifar10_pgdat", "cifar10_trades"], results=tmp_path)]
  expected[4] = (f"skip: exists: {tmp_path}/cifar10_trades.json "
                 "(evaluation of cifar10_trades)")
  assert lines[:-1] == expected
  assert _summary(lines)[2:] == (1, 1)


def test_runs_from_another_directory(tmp_path):
  # Defaults stay relative to the repository root; a relative folder given
  # on the command line is the caller's.
  assert _dry_run(cwd=tmp_path) == _dry_run()
  lines = _dry_run("--datasets=stl10", "--methods=trades", "--runs_dir=r",
                   "--results_dir=out", "--report_dir=rep", cwd=tmp_path)
  assert _commands(lines) == _expected_commands(
      ["stl10_trades"], runs=tmp_path / "r", results=tmp_path / "out",
      report=tmp_path / "rep")


def test_help_lists_every_option():
  result = _run("--help", cwd="/")
  assert result.returncode == 0
  for option in ("--data_dir", "--runs_dir", "--results_dir", "--report_dir",
                 "--datasets", "--methods", "--dry_run", "--help"):
    assert option in result.stdout


@pytest.mark.parametrize("header,line", [
    ("#   ... = 917 PFLOP.\n", "no estimate"),
    ("#   ... = 917 PFLOP = 8.5 h.\n#   resumed: = 1.0 h.\n", "two estimates"),
])
def test_header_without_one_estimate_fails(tmp_path, header, line):
  root = _copy_tree(tmp_path)
  path = root / "flags" / "cifar100_trades.cfg"
  path.write_text(header + "--flagfile=flags/common.cfg\n")
  result = _run("--dry_run", "--methods=trades", script=root / "scripts" /
                "reproduce_paper.sh")
  assert (result.returncode, result.stdout) == (1, ""), line
  assert result.stderr.splitlines() == [
      "error: flags/cifar100_trades.cfg: the header must state exactly one "
      "runtime estimate '= N h.' (cost model: flags/common.cfg)"]


def test_missing_experiment_file_is_named(tmp_path):
  root = _copy_tree(tmp_path)
  (root / "flags" / "stl10_rbsat_t.cfg").unlink()
  result = _run("--dry_run", "--datasets=stl10", script=root / "scripts" /
                "reproduce_paper.sh")
  assert (result.returncode, result.stdout) == (2, "")
  assert result.stderr.splitlines() == [
      "error: flags/stl10_rbsat_t.cfg does not exist: no experiment for "
      "stl10 rbsat_t"]


def _fake_run(tmp_path, fail="", status=0):
  """Runs two CIFAR-10 experiments for real with the stand-in interpreter."""
  fake = tmp_path / "python"
  fake.write_text(FAKE_PYTHON)
  fake.chmod(0o755)
  log = tmp_path / "log"
  if log.exists():
    log.unlink()
  result = _run("--datasets=cifar10", "--methods=pgdat,trades", "--runs_dir=r",
                "--results_dir=out", "--report_dir=rep", cwd=tmp_path,
                env={"PYTHON": str(fake), "FAKE_LOG": str(log),
                     "FAKE_FAIL": fail, "FAKE_STATUS": str(status)})
  calls = log.read_text().splitlines() if log.exists() else []
  return result, calls


def _call(*args):
  return " ".join([str(ROOT), "-m", *args])


def test_real_run_order_and_resume(tmp_path):
  names = ["cifar10_pgdat", "cifar10_trades"]
  train = [_call("rlfat_tf.train", f"--flagfile=flags/{n}.cfg",
                 f"--model_dir={tmp_path}/r/{n}") for n in names]
  evaluate = [_call("rlfat_tf.evaluate", f"--model_dir={tmp_path}/r/{n}",
                    f"--output={tmp_path}/out/{n}.json") for n in names]
  report = [_call("rlfat_tf.report", "--results=" + ",".join(
      f"{tmp_path}/out/{n}.json" for n in names), f"--output_dir={tmp_path}/rep")]
  result, calls = _fake_run(tmp_path)
  assert result.returncode == 0, result.stderr
  assert calls == train + evaluate + report
  assert result.stdout.splitlines()[0] == (
      "== 2 training runs, about "
      f"{_header_hours(names[0]) + _header_hours(names[1]):.1f} GPU-hours of "
      "training (flagfile estimates)")
  # A rerun trains again (the trainer resumes, here from the end) and
  # evaluates nothing.
  result, calls = _fake_run(tmp_path)
  assert result.returncode == 0, result.stderr
  assert calls == train + report
  assert result.stdout.count("skip: exists:") == 2


@pytest.mark.parametrize("fail,status,what,calls", [
    ("rlfat_tf.train --flagfile=flags/cifar10_trades.cfg", 7,
     "training cifar10_trades", 2),
    ("rlfat_tf.evaluate --model_dir=", 3, "evaluation of cifar10_pgdat", 3),
    ("rlfat_tf.report", 1, "report", 5),
])
def test_failure_stops_with_its_status(tmp_path, fail, status, what, calls):
  result, logged = _fake_run(tmp_path, fail=fail, status=status)
  assert result.returncode == status
  assert result.stderr.splitlines() == [
      f"error: {what} failed with exit status {status}"]
  assert len(logged) == calls
  assert fail in logged[-1]
