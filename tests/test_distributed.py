"""Multi-replica and multi-worker training, each run in its own processes.

Devices and clusters are set up once per process, so every run here is a
subprocess: `python -m rlfat_tf.train` for the replica tests, and
`tests/train_worker.py` (which also saves the worker's final weights) for the
multi-worker tests, one process per worker on 127.0.0.1.
"""

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

import helpers
from helpers import ENV
from helpers import ROOT
from helpers import SMOKE

WORKER = str(ROOT / "tests" / "train_worker.py")
TIMEOUT = 240

# A few steps of rlfat_p, whose per-batch RBS must be the same on every
# replica, with checkpoints every 2 steps so a kill lands between two.
MULTI_WORKER_FLAGS = [
    f"--flagfile={SMOKE}", "--strategy=multi_worker", "--sync_batch_norm",
    "--deterministic", "--val_size=0", "--train_steps=12",
    "--steps_per_loop=2", "--checkpoint_every=2", "--keep_checkpoints=30",
    "--noprogress"]


def _start_workers(model_dir, out_dir, extra=()):
  """Starts a two-worker cluster; returns the processes and their logs."""
  ports = helpers.free_ports(2)
  cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
  procs = []
  for index in range(2):
    env = dict(ENV, TF_CONFIG=json.dumps(
        {"cluster": cluster, "task": {"type": "worker", "index": index}}))
    log = open(out_dir / f"worker{index}.log", "w")
    procs.append(subprocess.Popen(
        [sys.executable, WORKER, str(out_dir / f"worker{index}.npz"),
         *MULTI_WORKER_FLAGS, f"--model_dir={model_dir}", *extra],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT))
  return procs


def _wait(procs, timeout=TIMEOUT):
  deadline = time.time() + timeout
  for proc in procs:
    proc.wait(timeout=max(1.0, deadline - time.time()))
  return [proc.returncode for proc in procs]


def _kill(procs):
  for proc in procs:
    if proc.poll() is None:
      proc.kill()
      proc.wait()


def _run_workers(model_dir, out_dir):
  """Runs a two-worker cluster to the end; asserts both workers exit 0."""
  procs = _start_workers(model_dir, out_dir)
  try:
    codes = _wait(procs)
  finally:
    _kill(procs)
  assert codes == [0, 0], _log(out_dir, 0) + _log(out_dir, 1)


def _log(out_dir, index):
  return (out_dir / f"worker{index}.log").read_text()


def _weights(out_dir, index):
  with np.load(out_dir / f"worker{index}.npz") as f:
    return {k: f[k] for k in f.files}


def test_sync_batch_norm_step_matches_the_single_device_step(tmp_path):
  # One SGD step on the same global batch: the default strategy, two
  # replicas with cross-replica BatchNorm, and two replicas without it.
  common = [f"--flagfile={SMOKE}", "--method=rlfat_p", "--train_steps=1",
            "--checkpoint_every=1", "--val_size=0", "--optimizer=sgd",
            "--momentum=0", "--learning_rate=0.5", "--noprogress"]
  runs = {"single": [], "sync": ["--sync_batch_norm"], "split": []}
  procs = {}
  try:
    for name, extra in runs.items():
      replicas = ([] if name == "single"
                  else ["--strategy=mirrored", "--cpu_devices=2"])
      procs[name] = subprocess.Popen(
          [sys.executable, "-m", "rlfat_tf.train", *common, *replicas,
           *extra, f"--model_dir={tmp_path / name}"], cwd=ROOT, env=ENV,
          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    for name, proc in procs.items():
      _, err = proc.communicate(timeout=TIMEOUT)
      assert proc.returncode == 0, f"{name}: {err}"
  finally:
    _kill(procs.values())
  values = {name: helpers.checkpoint_values(
      str(tmp_path / name / "checkpoints" / "ckpt-1")) for name in runs}
  single, sync, split = values["single"], values["sync"], values["split"]
  assert set(single) == set(sync) == set(split)
  # Weights and BatchNorm moving statistics, which only agree when the
  # replicas normalise with the statistics of the whole batch.
  for key in single:
    np.testing.assert_allclose(sync[key], single[key], rtol=0, atol=1e-5,
                               err_msg=key)
  worst = max(np.abs(split[k] - single[k]).max() for k in single)
  assert worst > 1e-3


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  """A two-worker run trained straight to the end."""
  out_dir = tmp_path_factory.mktemp("uninterrupted")
  model_dir = out_dir / "run"
  _run_workers(model_dir, out_dir)
  return out_dir, model_dir


def test_two_workers_end_with_identical_weights(uninterrupted):
  out_dir, model_dir = uninterrupted
  chief, other = _weights(out_dir, 0), _weights(out_dir, 1)
  assert chief.keys() == other.keys() and len(chief) > 10
  for key in chief:
    np.testing.assert_array_equal(chief[key], other[key], err_msg=key)
  for index in range(2):
    assert "trained to step 12" in _log(out_dir, index)


def test_only_the_chief_writes_the_run(uninterrupted):
  _, model_dir = uninterrupted
  assert sorted(os.listdir(model_dir)) == [
      "checkpoints", "history.json", "metrics.json", "run.json", "summaries"]
  assert tf.train.latest_checkpoint(
      str(model_dir / "checkpoints")).endswith("ckpt-12")
  with open(model_dir / "metrics.json") as f:
    assert json.load(f)["step"] == 12


def test_killed_worker_resumes_from_the_chiefs_checkpoint(uninterrupted,
                                                          tmp_path):
  model_dir = tmp_path / "run"
  procs = _start_workers(model_dir, tmp_path)
  try:
    helpers.wait_for_checkpoint(
        model_dir / "checkpoints", 4,
        lambda: all(p.poll() is None for p in procs), timeout=TIMEOUT)
    procs[1].kill()
    procs[1].wait()
    # The chief cannot go on without its peer: it stops with one clear line.
    assert _wait(procs[:1], timeout=60) == [2]
  finally:
    _kill(procs)
  errors = [l for l in _log(tmp_path, 0).splitlines()
            if l.startswith("error:")]
  assert len(errors) == 1 and "restart every worker" in errors[0]
  assert not (model_dir / "checkpoints" / "ckpt-12.index").exists(), (
      "the run finished before it could be killed")
  resume_from = tf.train.latest_checkpoint(str(model_dir / "checkpoints"))

  _run_workers(model_dir, tmp_path)
  for index in range(2):
    assert f"resuming from {resume_from}" in _log(tmp_path, index)
  # Both workers, and the chief's last checkpoint, hold exactly what the
  # uninterrupted run ended with.
  reference_dir, reference_run = uninterrupted
  reference = _weights(reference_dir, 0)
  for index in range(2):
    weights = _weights(tmp_path, index)
    for key in reference:
      np.testing.assert_array_equal(weights[key], reference[key],
                                    err_msg=key)
  final = helpers.checkpoint_values(
      str(model_dir / "checkpoints" / "ckpt-12"))
  expected = helpers.checkpoint_values(
      str(reference_run / "checkpoints" / "ckpt-12"))
  for key in expected:
    np.testing.assert_array_equal(final[key], expected[key], err_msg=key)
