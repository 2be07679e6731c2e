"""Shared pytest set-up: quiet TensorFlow on the CPU, and one smoke run.

The smoke run (flags/smoke.cfg: a WRN-10-1 trained 6 steps, checkpoints at
steps 3 and 6) is trained once per session and shared by every module that
needs a trained model. It is trained in a subprocess, as a user would train
it, so that no test's outcome depends on whether another module happened to
train it first in the same process (the trainer sets the global random seeds).
"""

import os
import shutil

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

# pylint: disable=wrong-import-position
import helpers
import pytest


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
  """The trained smoke run's folder (a pathlib.Path); tests must not change it.

  A test that writes into a run folder (resumes it, damages it, evaluates
  with --watch) takes ``run_copy`` instead.
  """
  path = tmp_path_factory.mktemp("session") / "smoke"
  proc = helpers.run_module("rlfat_tf.train", f"--flagfile={helpers.SMOKE}",
                            f"--model_dir={path}", "--noprogress",
                            timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return path


@pytest.fixture
def run_copy(smoke_run, tmp_path):
  """A fresh copy of the smoke run, ``tmp_path / "run"``, to change at will."""
  path = tmp_path / "run"
  shutil.copytree(smoke_run, path)
  return path
