"""Tests of scripts/side_venv.sh, the shared steps of the scripts that make
the ART and reference-AutoAttack environments: the check that a side
environment resolves the main one's numpy, scipy, TensorFlow and Keras."""

import subprocess
import sys

from helpers import ROOT


def _check_shared(venv):
  return subprocess.run(
      ["bash", "-c", 'set -euo pipefail; source "$0"; '
       'v="$(side_venv_check_shared "$1" "$2")"; echo "shared: $v"',
       str(ROOT / "scripts" / "side_venv.sh"), str(venv), sys.executable],
      capture_output=True, text=True, check=False, timeout=120)


def _venv(tmp_path, python):
  (tmp_path / "bin").mkdir()
  (tmp_path / "bin" / "python").write_text(python)
  (tmp_path / "bin" / "python").chmod(0o755)
  return tmp_path


def test_an_environment_with_the_same_versions_passes(tmp_path):
  venv = _venv(tmp_path, f'#!/bin/sh\nexec {sys.executable} "$@"\n')
  result = _check_shared(venv)
  assert result.returncode == 0, result.stderr
  (line,) = result.stdout.splitlines()
  assert line.startswith("shared: numpy==") and " keras==" in line


def test_other_versions_stop_the_script_with_one_line(tmp_path):
  venv = _venv(tmp_path, "#!/bin/sh\necho numpy==1.0 scipy==1.0 "
               "tensorflow==1.0 keras==1.0\n")
  result = _check_shared(venv)
  assert result.returncode == 1 and result.stdout == ""
  (line,) = result.stderr.splitlines()
  assert line.startswith(f"error: {venv} resolves numpy==1.0 scipy==1.0 "
                         "tensorflow==1.0 keras==1.0, the main environment "
                         "numpy==")
  assert line.endswith(f"delete {venv} and run this script again")
