"""Tests of progress reporting: a bar on a terminal, plain lines otherwise."""

import io
import re
import subprocess
import sys

import keras
import pytest

from rlfat_tf import cli
from rlfat_tf import evaluate
from rlfat_tf import export
from rlfat_tf import progress
from rlfat_tf import runs
from rlfat_tf import train

import helpers
from helpers import SMOKE


class _Clock:
  """Returns the given times in turn, one per call."""

  def __init__(self, *times):
    self._times = list(times)

  def __call__(self):
    return self._times.pop(0)


class _Terminal(io.StringIO):

  def isatty(self):
    return True


def test_lines_come_every_tenth_or_ten_seconds_and_at_the_end():
  stream = io.StringIO()
  # Made at 0 s, then one time per update.
  lines = progress.Lines(100, unit_name="image", stateful_metrics=["robust"],
                         stream=stream,
                         clock=_Clock(0.0, 1.0, 2.0, 3.0, 14.0, 15.0, 75.0))
  lines.update(5, [("robust", 1.0), ("loss", 2.0)])
  lines.update(10, [("robust", 0.9), ("loss", 1.0)])
  lines.update(15)
  lines.update(18, [("loss", 0.5)])
  lines.add(2)
  lines.update(100, [("robust", 0.0005), ("loss", 0.1)])
  # 10: a tenth of 100 since the start; the time per image counts from the
  # first update, (2 - 1) / (10 - 5). loss is averaged over the images:
  # (2 * 5 + 1 * 5) / 10. 18: 12 s after the line at 2 s; loss
  # (15 + 0.5 * 3) / 13, time (14 - 1) / 13. 20 is neither. 100: the end,
  # (75 - 1) / 95 = 0.779 s per image, and the final values as given.
  assert stream.getvalue().splitlines() == [
      "image 10/100 (10%) - 2s elapsed - 200ms/image - robust: 0.9000 - "
      "loss: 1.5000",
      "image 18/100 (18%) - 14s elapsed - 1s/image - robust: 0.9000 - "
      "loss: 1.2692",
      "image 100/100 (100%) - 1:15 elapsed - 779ms/image - robust: "
      "5.0000e-04 - loss: 0.1000"]


def test_lines_without_a_total_and_of_long_runs():
  stream = io.StringIO()
  lines = progress.Lines(None, stream=stream, clock=_Clock(0.0, 12.0, 3726.0))
  lines.update(7)
  lines.update(9, finalize=True)
  # 7: ten seconds since the start; 9: the end, (3726 - 12) / 2 s per step.
  assert stream.getvalue() == ("step 7 - 12s elapsed\n"
                               "step 9 - 1:02:06 elapsed - 1857s/step\n")


def test_off_a_terminal_the_reporter_writes_whole_lines_only():
  stream = io.StringIO()
  bar = progress.progbar(3, unit_name="batch", stream=stream)
  assert isinstance(bar, progress.Lines)
  for _ in range(3):
    bar.add(1, [("loss", 0.5)])
  out = stream.getvalue()
  assert len(out.splitlines()) == 3
  assert out.endswith("\n") and "\r" not in out and "\x1b" not in out
  assert out.splitlines()[-1].startswith("batch 3/3 (100%) - 0s elapsed - ")


def test_each_mode_gives_its_display(capsys):
  for stream, verbose, kind in (
      (_Terminal(), progress.Mode.AUTO, keras.utils.Progbar),
      (io.StringIO(), progress.Mode.AUTO, progress.Lines),
      (io.StringIO(), True, progress.Lines),
      (io.StringIO(), progress.Mode.BAR, keras.utils.Progbar),
      (_Terminal(), progress.Mode.OFF, keras.utils.Progbar)):
    bar = progress.progbar(2, verbose, stream=stream)
    assert type(bar) is kind, (stream, verbose)
    bar.update(2, [("loss", 1.0)])
    assert stream.getvalue() == ("step 2/2 (100%) - 0s elapsed - loss: "
                                 "1.0000\n" if kind is progress.Lines else "")
  # The bar draws on stdout: forced, even off a terminal; never when off.
  drawn = capsys.readouterr().out
  assert drawn.count("2/2") == 2 and "\x1b" in drawn
  progress.progbar(2, False).update(2)
  assert capsys.readouterr().out == ""


@pytest.mark.parametrize("module,argv", [
    (train, ["--model_dir=run"]),
    (evaluate, ["--model_dir=run"]),
    (export, ["--model_dir=run", "--export_dir=out"])])
def test_the_flags_force_either_display_and_default_to_auto(module, argv):
  for words, mode in (([], progress.Mode.AUTO),
                      (["--progress"], progress.Mode.BAR),
                      (["--noprogress"], progress.Mode.OFF)):
    parsed = cli.parse_argv(module.define_flags, ["cmd", *argv, *words])
    assert progress.from_flag(parsed["progress"].value) == mode
    assert progress.flag_argv(parsed["progress"].value) == words


def test_a_run_records_the_default_display_as_null_and_reads_old_records(
    tmp_path):
  _, record = train.values_from_argv(
      ["train", f"--flagfile={SMOKE}", f"--model_dir={tmp_path}"])
  assert record.progress is None
  content = record.to_json()
  assert runs.RunRecord.from_json(content, "run.json").progress is None
  # Records written before the default held a bool.
  for value in (True, False):
    assert runs.RunRecord.from_json({**content, "progress": value},
                                    "run.json").progress is value


def test_training_into_a_log_file_writes_plain_progress_lines(run_copy,
                                                              tmp_path):
  log = tmp_path / "train.log"
  with open(log, "w") as stdout:
    result = subprocess.run(
        [sys.executable, "-m", "rlfat_tf.train", f"--flagfile={SMOKE}",
         f"--model_dir={run_copy}", "--train_steps=9"], stdout=stdout,
        stderr=subprocess.PIPE, text=True, env=helpers.ENV, cwd=helpers.ROOT,
        timeout=600, check=False)
  assert result.returncode == 0, result.stderr
  assert not [l for l in result.stderr.splitlines() if l.startswith("error:")]
  text = log.read_text()
  assert "\r" not in text and "\x1b" not in text
  steps = [line for line in text.splitlines() if line.startswith("step ")]
  # The step resumed from (6 of 9 is past a tenth of the run), then the end.
  assert len(steps) == 2, text
  assert re.fullmatch(r"step 6/9 \(66%\) - \ds elapsed", steps[0])
  assert steps[1].startswith("step 9/9 (100%) - ")
  assert " - loss: " in steps[1] and " - val_pgd_ce_accuracy: " in steps[1]
  assert "trained to step 9" in text
