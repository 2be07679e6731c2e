"""Fault injection: each command, on a damaged run folder or an unusable
path, ends in one line and loses or half-writes nothing.

Where only the message matters, the test calls the command's own function in
this process (``_refusal``: its ``errors.UserError`` is the command's one
line); where the exit status, the line itself or a signal matters, it runs
the command as a user would, as a process.

The session's smoke run (conftest.py; checkpoints at steps 3 and 6) is trained
once; each test damages a copy of it (``run_copy``). Running as root, chmod
cannot make a folder unwritable, so an unwritable path is one under a regular
file (NotADirectoryError) or under /proc, where no file can be made.
"""

import errno
import filecmp
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest
import tensorflow as tf

from rlfat_tf import errors
from rlfat_tf import evaluate
from rlfat_tf import runs
from rlfat_tf import train
from rlfat_tf import trainer

import helpers
from helpers import ENV
from helpers import ROOT
from helpers import SMOKE

# The cheapest evaluation that still attacks: 20 images, PGD-2, nothing else.
EVAL = ("--num_examples=20", "--batch_size=20", "--attacks=pgd",
        "--pgd_steps=2", "--nochecks", "--brightness=", "--gamma=",
        "--salience_images=0", "--noprogress")
UNWRITABLE = "/proc/rlfat_tf_faults/out"
LAST = "checkpoints/ckpt-6"
PREVIOUS = "checkpoints/ckpt-3"
DATA = ".data-00000-of-00001"


def _cli(command, *argv):
  return helpers.run_module(f"rlfat_tf.{command}", *argv, timeout=900)


def _error_line(proc):
  """The one ``error:`` line of a command that failed on bad input."""
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
  # TensorFlow's start-up lines may go to stderr too; ours is the one line.
  lines = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
  assert len(lines) == 1, proc.stderr[-3000:]
  return lines[0]


def _refusal(run, *args):
  """The message of the ``errors.UserError`` a command's own function raises
  on bad input: what its command prints as its one error line (the line
  itself is checked on the commands run as processes here and in
  test_cli.py)."""
  with pytest.raises(errors.UserError) as caught:
    run(*args)
  return str(caught.value)


def _train_values(*argv):
  return train.values_from_argv(["train", f"--flagfile={SMOKE}", *argv])


def _warning_lines(proc):
  return [l for l in proc.stderr.splitlines() if l.startswith("warning:")]


def _listing(folder):
  """Every file under ``folder`` with its size, to compare before and after."""
  return {str(p.relative_to(folder)): p.stat().st_size
          for p in pathlib.Path(folder).rglob("*") if p.is_file()}


def _truncate(path):
  with open(path, "r+b") as f:
    f.truncate(100)


@pytest.mark.parametrize("damage", ["truncate_data", "delete_index"])
def test_evaluate_uses_the_previous_checkpoint_when_the_last_is_damaged(
    run_copy, tmp_path, damage):
  if damage == "truncate_data":
    _truncate(run_copy / (LAST + DATA))
  else:
    os.remove(run_copy / (LAST + ".index"))
  output = tmp_path / "results.json"
  proc = _cli("evaluate", f"--model_dir={run_copy}", f"--output={output}",
              *EVAL)
  assert proc.returncode == 0, proc.stderr[-3000:]
  (warning,) = _warning_lines(proc)
  assert f"{run_copy / LAST} is damaged" in warning, warning
  assert f"using {run_copy / PREVIOUS} instead" in warning, warning
  assert json.loads(output.read_text())["run"]["checkpoint"] == str(
      run_copy / PREVIOUS)


def test_training_resumes_from_the_previous_checkpoint(run_copy, smoke_run):
  os.remove(run_copy / (LAST + DATA))
  proc = _cli("train", f"--flagfile={SMOKE}", f"--model_dir={run_copy}",
              "--noprogress")
  assert proc.returncode == 0, proc.stderr[-3000:]
  (warning,) = _warning_lines(proc)
  assert f"{run_copy / LAST} is damaged" in warning, warning
  assert f"resuming from {run_copy / PREVIOUS} (step 3)" in proc.stdout
  # Step 6 was trained again and saved whole; step 3 was left as it was.
  assert (run_copy / (LAST + DATA)).stat().st_size == (
      smoke_run / (LAST + DATA)).stat().st_size
  assert filecmp.cmp(run_copy / (PREVIOUS + DATA),
                     smoke_run / (PREVIOUS + DATA), shallow=False)


def test_export_uses_the_previous_checkpoint_and_records_it(run_copy,
                                                            tmp_path):
  _truncate(run_copy / (LAST + DATA))
  proc = _cli("export", f"--model_dir={run_copy}",
              f"--export_dir={tmp_path / 'exports'}", "--model_name=m",
              "--tflite=none", "--eval_examples=10", "--pgd_steps=1",
              "--noprogress")
  assert proc.returncode == 0, proc.stderr[-3000:]
  (warning,) = _warning_lines(proc)
  assert f"{run_copy / LAST} is damaged" in warning, warning
  manifest = json.loads(
      (tmp_path / "exports" / "m" / "1" / "export.json").read_text())
  assert manifest["source"]["checkpoint"] == str(run_copy / PREVIOUS)


def test_no_intact_checkpoint_is_one_error_line(run_copy, tmp_path):
  _truncate(run_copy / (LAST + DATA))
  _truncate(run_copy / (PREVIOUS + DATA))
  before = _listing(run_copy)
  for line in (
      _refusal(evaluate.run, helpers.evaluate_values(
          f"--model_dir={run_copy}", f"--output={tmp_path / 'r.json'}",
          *EVAL)),
      _refusal(train.run, *_train_values(f"--model_dir={run_copy}",
                                         "--noprogress"))):
    assert f"checkpoint in {run_copy / 'checkpoints'} is damaged" in line
    assert str(run_copy / LAST) in line
  # Training did not start afresh over the damaged run.
  assert _listing(run_copy) == before
  assert not (tmp_path / "r.json").exists()


@pytest.mark.parametrize("command, flag, where", [
    ("train", "--model_dir", "under_a_file"), ("evaluate", "--output", "proc"),
    ("export", "--export_dir", "under_a_file"),
    ("report", "--output_dir", "proc")])
def test_unwritable_paths_fail_first_with_one_line(run_copy, tmp_path,
                                                   command, flag, where):
  blocker = tmp_path / "a_file"
  blocker.write_text("")
  target = str(blocker / "out") if where == "under_a_file" else UNWRITABLE
  results = tmp_path / "results.json"
  results.write_text("{}")
  argv = {
      "train": [f"--flagfile={SMOKE}", f"--model_dir={target}"],
      "evaluate": [f"--model_dir={run_copy}", f"--output={target}/r.json",
                   *EVAL],
      "export": [f"--model_dir={run_copy}", f"--export_dir={target}"],
      "report": [f"--results={results}", f"--output_dir={target}"],
  }[command]
  before = _listing(run_copy)
  line = _error_line(_cli(command, *argv))
  assert line.startswith("error: cannot write to ") and flag in line, line
  assert _listing(run_copy) == before
  assert sorted(os.listdir(tmp_path)) == ["a_file", "results.json", "run"]


def test_folder_as_output_fails_before_the_evaluation(run_copy, tmp_path):
  folder = tmp_path / "results"
  folder.mkdir()
  line = _refusal(evaluate.run, helpers.evaluate_values(
      f"--model_dir={run_copy}", f"--output={folder}", *EVAL))
  assert f"{folder} is a folder" in line and "--output" in line, line
  assert os.listdir(folder) == []
  assert sorted(os.listdir(tmp_path)) == ["results", "run"]


@pytest.mark.parametrize("edit, needle", [
    (lambda text: text[:40], "is not valid JSON"),
    (lambda text: json.dumps({**json.loads(text), "depth": 16}),
     "does not hold the WRN-16-1"),
    (lambda text: json.dumps({**json.loads(text), "width": 0}),
     "make no WideResNet"),
])
def test_edited_run_record_is_one_error_line(run_copy, edit, needle):
  record = run_copy / "run.json"
  record.write_text(edit(record.read_text()))
  before = _listing(run_copy)
  line = _refusal(evaluate.run,
                  helpers.evaluate_values(f"--model_dir={run_copy}", *EVAL))
  assert needle in line, line
  assert _listing(run_copy) == before


def test_legacy_flags_file_that_is_not_json_is_one_error_line(run_copy):
  os.remove(run_copy / "run.json")
  (run_copy / "flags.json").write_bytes(b"\xff\xfe not json")
  line = _refusal(evaluate.run,
                  helpers.evaluate_values(f"--model_dir={run_copy}", *EVAL))
  assert "flags.json is not UTF-8 text" in line, line


def test_batch_past_the_host_memory_is_refused_before_anything(tmp_path):
  model_dir = tmp_path / "huge"
  # 64 KiB of the first activation per image: 6 TiB, past any host.
  line = _refusal(train.run, *_train_values(
      f"--model_dir={model_dir}", "--batch_size=100000000", "--noprogress"))
  assert "--batch_size=100000000 cannot fit in memory" in line, line
  assert not model_dir.exists()


def test_running_out_of_memory_is_one_line_and_locks_nothing(tmp_path,
                                                            monkeypatch):
  # A real out-of-memory error cannot be provoked safely on a shared machine
  # (under an address-space limit TensorFlow may crash instead of raising),
  # so the training loop raises the error TensorFlow raises then.
  def exhausted(unused_self):
    raise tf.errors.ResourceExhaustedError(
        None, None, "OOM when allocating tensor with shape[32,32,32,16]")

  monkeypatch.setattr(trainer.Trainer, "train", exhausted)
  model_dir = tmp_path / "oom"
  with pytest.raises(errors.UserError,
                     match="ran out of memory at --batch_size=32: use a "
                     "smaller --batch_size"):
    train.run(*_train_values(f"--model_dir={model_dir}", "--noprogress"))
  # No record, checkpoint or metrics: the folder is free for other flags.
  assert _listing(model_dir) == {}


@pytest.mark.parametrize("error", ["tensorflow", "python"])
def test_a_full_disk_is_named_and_its_partial_checkpoint_removed(
    tmp_path, monkeypatch, error):
  model_dir = tmp_path / "full"
  partial = model_dir / "checkpoints" / "ckpt-6_temp"
  data_file = partial / "part-00000-of-00001.data-00000-of-00001"

  # What TensorFlow raised on a 2 MB tmpfs as --model_dir: the save of
  # ckpt-6 filled the disk. A Python write (metrics.json) raises OSError.
  def full(unused_self):
    partial.mkdir(parents=True)
    data_file.write_bytes(b"half")
    if error == "tensorflow":
      raise tf.errors.ResourceExhaustedError(
          None, None,
          "{{function_node __wrapped__SaveV2_dtypes_89_device_/job:localhost"
          f"/replica:0/task:0/device:CPU:0}}}} {data_file}.tempstate1561363519"
          "3078143174; No space left on device [Op:SaveV2]")
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(data_file))

  monkeypatch.setattr(trainer.Trainer, "train", full)
  with pytest.raises(errors.UserError) as e:
    train.run(*_train_values(f"--model_dir={model_dir}", "--noprogress"))
  assert str(e.value) == (
      f"no space left on device while writing {data_file}: free space or use "
      f"another --model_dir; the checkpoints on disk are intact")
  assert not partial.exists()


def test_partial_checkpoints_are_removed_and_intact_ones_kept(tmp_path):
  for folder in ("checkpoints", "best"):
    (tmp_path / folder / "ckpt-4_temp").mkdir(parents=True)
    (tmp_path / folder / "ckpt-4_temp" / "part").write_text("x")
    (tmp_path / folder / "ckpt-3.index").write_text("x")
  (tmp_path / "other_temp").mkdir()
  removed = runs.remove_partial_checkpoints(str(tmp_path))
  assert removed == [str(tmp_path / f / "ckpt-4_temp")
                     for f in ("checkpoints", "best")]
  assert sorted(_listing(tmp_path)) == ["best/ckpt-3.index",
                                        "checkpoints/ckpt-3.index"]
  assert (tmp_path / "other_temp").is_dir()


def test_a_second_trainer_on_a_folder_is_refused_with_one_line(tmp_path):
  run = tmp_path / "run"
  common = [f"--flagfile={SMOKE}", "--method=pgdat", "--val_size=0",
            "--train_steps=400", "--steps_per_loop=1", "--checkpoint_every=2",
            "--noprogress", f"--model_dir={run}"]
  first = subprocess.Popen(
      [sys.executable, "-m", "rlfat_tf.train", *common], env=ENV, cwd=ROOT,
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  try:
    index = run / "checkpoints" / "ckpt-2.index"
    deadline = time.time() + 240
    while (not index.exists() and time.time() < deadline and
           first.poll() is None):
      time.sleep(0.01)
    record = (run / "run.json").read_bytes()
    second = _cli("train", *common)
    assert second.returncode == 2
    line = _error_line(second)
    assert line.startswith(f"error: {run} is in use by pid {first.pid} on "
                           f"host "), line
    assert (run / "run.json").read_bytes() == record
  finally:
    first.send_signal(signal.SIGTERM)
    _, err = first.communicate(timeout=240)
  assert first.returncode == 143, err
  # The stop released the lock: the same command resumes.
  assert not (run / ".lock").exists()
