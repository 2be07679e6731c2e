"""Tests of rlfat_tf.cli: every command's exit status and error line."""

import os
import subprocess
import sys

import pytest

from rlfat_tf import cli
from rlfat_tf import errors

from helpers import ENV
from helpers import ROOT


def _exit(capsys, main, *args):
  with pytest.raises(SystemExit) as e:
    cli.call(main, *args)
  captured = capsys.readouterr()
  return e.value.code, captured.err.splitlines()


def test_user_error_is_one_line_and_status_2(capsys):
  def main(name):
    raise errors.UserError(f"--dataset={name} is unknown: use cifar10")
  code, err = _exit(capsys, main, "mnist")
  assert (code, err) == (2, ["error: --dataset=mnist is unknown: use cifar10"])


def test_a_wrapped_message_still_prints_as_one_line(capsys):
  def main():
    raise errors.UserError("first part\n  second part")
  assert _exit(capsys, main) == (2, ["error: first part second part"])


def test_status_of_main_is_the_exit_status(capsys):
  assert _exit(capsys, lambda: cli.CHECK_FAILED) == (3, [])
  assert _exit(capsys, lambda: None) == (0, [])


def test_other_exceptions_are_not_hidden():
  def main():
    raise ValueError("a bug")
  with pytest.raises(ValueError, match="a bug"):
    cli.call(main)


def test_argparse_errors_become_user_errors():
  parser = cli.ArgumentParser(prog="tool")
  parser.add_argument("--n", type=int, required=True)
  with pytest.raises(errors.UserError,
                     match="the following arguments are required: --n"):
    parser.parse_args([])
  with pytest.raises(errors.UserError, match="argument --n: invalid int"):
    parser.parse_args(["--n", "x"])


def _define(flag_values):
  from absl import flags  # pylint: disable=import-outside-toplevel
  flags.DEFINE_integer("cli_test_depth", 10, "d", lower_bound=1,
                       flag_values=flag_values)
  flags.DEFINE_string("cli_test_name", "x", "n", flag_values=flag_values)
  flags.DEFINE_string("cli_test_other", "o", "of another module",
                      flag_values=flag_values, module_name="elsewhere")


def test_parse_argv_parses_fresh_flags_and_leaves_the_global_ones():
  from absl import flags  # pylint: disable=import-outside-toplevel
  parsed = cli.parse_argv(_define, ["prog", "--cli_test_depth=3"])
  assert (parsed.cli_test_depth, parsed.cli_test_name,
          parsed.cli_test_other) == (3, "x", "o")
  assert "cli_test_depth" not in flags.FLAGS
  with pytest.raises(flags.Error):
    cli.parse_argv(_define, ["prog", "--cli_test_depth=0"])
  with pytest.raises(flags.Error):
    cli.parse_argv(_define, ["prog", "--cli_test_unknown"])


def test_module_values_are_only_the_defining_modules_flags():
  parsed = cli.parse_argv(_define, ["prog", "--cli_test_name=y",
                                     "--cli_test_other=p"])
  assert cli.module_values(__name__, parsed) == {"cli_test_depth": 10,
                                                 "cli_test_name": "y"}
  assert cli.module_values("elsewhere", parsed) == {"cli_test_other": "p"}


def test_importing_it_loads_neither_tensorflow_nor_absl():
  script = ("import sys; from rlfat_tf import cli; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & "
            "{'tensorflow', 'keras', 'absl'}))")
  result = subprocess.run([sys.executable, "-c", script], capture_output=True,
                          text=True, cwd=ROOT, env=ENV, check=True,
                          timeout=60)
  assert result.stdout.strip() == "[]"


# One bad command line per entry point, each kind of flag error at least once;
# none gets as far as loading data or building a model.
@pytest.mark.parametrize("command, argv, needle", [
    ("train", ["--model_dir=unused", "--epsilon=8"],
     "--epsilon must be in (0, 1]"),
    ("evaluate", ["--model_dir=unused", "--no_such_flag=1"], "no_such_flag"),
    ("export", ["--model_dir=unused"], "--export_dir"),
    ("report", ["--results=a.json", "--output_dir=unused", "stray"],
     "unexpected arguments stray"),
    ("benchmark", ["--rounds=many"], "--rounds"),
    ("edge_eval", ["--tflite=a.tflite", "--data=b.npz", "--num_threads=0"],
     "--num_threads"),
])
def test_bad_command_line_exits_2_with_one_error_line(command, argv, needle,
                                                      tmp_path):
  result = subprocess.run([sys.executable, "-m", f"rlfat_tf.{command}", *argv],
                          capture_output=True, text=True, env=ENV,
                          cwd=tmp_path, timeout=300, check=False)
  assert result.returncode == 2, result.stderr
  assert "Traceback" not in result.stderr
  # TensorFlow's start-up lines may go to stderr too; ours is the one line.
  lines = [l for l in result.stderr.splitlines() if l.startswith("error:")]
  assert len(lines) == 1 and needle in lines[0], result.stderr
  assert os.listdir(tmp_path) == []
