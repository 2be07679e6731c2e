"""Shared pytest set-up: quiet TensorFlow on the CPU, and one smoke run.

The smoke run (flags/smoke.cfg: a WRN-10-1 trained 6 steps, checkpoints at
steps 3 and 6) is trained once per session and shared by every module that
needs a trained model. It is trained in a subprocess, as a user would train
it, so that no test's outcome depends on whether another module happened to
train it first in the same process (the trainer sets the global random seeds).
Under pytest-xdist (pytest.ini runs two workers) each worker is a session of
its own; the workers still share one smoke run (``smoke_run``).
"""

import fcntl
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
  worker = os.environ.get("PYTEST_XDIST_WORKER")
  if worker is None:
    path = tmp_path_factory.mktemp("session") / "smoke"
    _train_smoke(path)
    return path
  # The parent of a worker's base folder is the run's, common to its workers
  # and to no other run. Training twice would cost each worker the CPU the
  # other needs; the first worker to ask trains while the others wait.
  root = tmp_path_factory.getbasetemp().parent
  path = root / "smoke"
  with open(root / "smoke.lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if not path.exists():
      # Renamed only once trained: a worker whose training failed leaves no
      # half-written run for the next one to take as the smoke run.
      partial = root / f"smoke-{worker}"
      _train_smoke(partial)
      partial.rename(path)
  return path


def _train_smoke(path):
  proc = helpers.run_module("rlfat_tf.train", f"--flagfile={helpers.SMOKE}",
                            f"--model_dir={path}", "--noprogress",
                            timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.fixture
def run_copy(smoke_run, tmp_path):
  """A fresh copy of the smoke run, ``tmp_path / "run"``, to change at will."""
  path = tmp_path / "run"
  shutil.copytree(smoke_run, path)
  return path
