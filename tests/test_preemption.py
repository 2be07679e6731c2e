"""Tests of graceful stops on SIGTERM and of the cluster-wide stop vote."""

import json
import os
import signal
import subprocess
import sys

import pytest
import tensorflow as tf

from rlfat_tf import preemption

import helpers
from helpers import ENV
from helpers import ROOT

TIMEOUT = 240
FIRST = "received SIGTERM: saving a checkpoint at the next step boundary\n"


def _run(script, **env):
  return subprocess.run([sys.executable, "-c", script], capture_output=True,
                        text=True, cwd=ROOT, timeout=TIMEOUT, check=False,
                        env=dict(ENV, **env))


@pytest.fixture(name="sentinel")
def _sentinel():
  """A Python SIGTERM handler installed around the test, counting calls."""
  calls = []
  previous = signal.signal(signal.SIGTERM, lambda signum, frame: calls.append(
      signum))
  yield calls
  signal.signal(signal.SIGTERM, previous)


def test_sigterm_sets_requested_and_the_handler_comes_back(sentinel, capfd):
  before = signal.getsignal(signal.SIGTERM)
  with preemption.PreemptionWatcher() as watcher:
    assert not watcher.requested
    os.kill(os.getpid(), signal.SIGTERM)
    assert watcher.requested and watcher.received == signal.SIGTERM
  assert capfd.readouterr().err == FIRST
  assert sentinel == []
  assert signal.getsignal(signal.SIGTERM) is before
  os.kill(os.getpid(), signal.SIGTERM)
  assert sentinel == [signal.SIGTERM]


def test_a_second_sigterm_is_announced_and_changes_nothing(sentinel, capfd):
  with preemption.PreemptionWatcher(
      signals=(signal.SIGTERM, signal.SIGUSR1)) as watcher:
    os.kill(os.getpid(), signal.SIGUSR1)
    os.kill(os.getpid(), signal.SIGTERM)
    assert watcher.received == signal.SIGUSR1
  assert capfd.readouterr().err == (
      "received SIGUSR1: saving a checkpoint at the next step boundary\n"
      "received SIGTERM again: the checkpoint is still being saved (SIGKILL "
      "stops at once and keeps the previous one)\n")
  assert sentinel == []


def test_handlers_come_back_on_exceptions_and_entering_twice_fails(sentinel):
  before = signal.getsignal(signal.SIGTERM)
  watcher = preemption.PreemptionWatcher()
  with pytest.raises(ValueError):
    with watcher:
      with pytest.raises(RuntimeError, match="already entered"):
        watcher.__enter__()
      raise ValueError("boom")
  assert signal.getsignal(signal.SIGTERM) is before
  with watcher:
    assert signal.getsignal(signal.SIGTERM) == watcher._handle
  assert sentinel == []


def test_a_handler_python_did_not_install_comes_back_as_the_default(
    sentinel, monkeypatch):
  # signal.getsignal says None for a handler installed outside Python.
  getsignal = signal.getsignal
  monkeypatch.setattr(signal, "getsignal", lambda signum: None)
  with preemption.PreemptionWatcher():
    pass
  assert getsignal(signal.SIGTERM) == signal.SIG_DFL


def test_outside_the_watcher_sigterm_ends_the_process():
  result = _run(
      "import os, signal\n"
      "from rlfat_tf import preemption\n"
      "with preemption.PreemptionWatcher() as watcher:\n"
      "  os.kill(os.getpid(), signal.SIGTERM)\n"
      "  print(watcher.requested, flush=True)\n"
      "os.kill(os.getpid(), signal.SIGTERM)\n"
      "print('survived', flush=True)\n")
  assert result.returncode == -signal.SIGTERM, result.stderr
  assert result.stdout == "True\n"
  assert result.stderr.endswith(FIRST)


def test_stopped_carries_the_signal_status_and_one_line():
  error = preemption.Stopped(signal.SIGTERM, 350, "runs/x/checkpoints/ckpt-350")
  assert error.status == 143
  assert str(error) == (
      "stopped at step 350 on SIGTERM, with the checkpoint "
      "runs/x/checkpoints/ckpt-350 saved: run the same command again to "
      "resume")
  assert preemption.Stopped(signal.SIGUSR1, 1, "c").status == 138


def test_the_default_strategy_votes_its_own_answer():
  strategy = tf.distribute.get_strategy()
  assert preemption.any_requested(strategy, True) is True
  assert preemption.any_requested(strategy, False) is False


def test_two_replicas_agree_with_their_process():
  # Logical devices are configured once per process: a fresh one.
  result = _run(
      "from rlfat_tf import preemption, strategies\n"
      "strategies.split_cpu(2)\n"
      "s = strategies.create('mirrored')\n"
      "print(s.num_replicas_in_sync, preemption.any_requested(s, False),"
      " preemption.any_requested(s, True))\n")
  assert result.returncode == 0, result.stderr
  assert result.stdout.split() == ["2", "False", "True"]


def test_every_worker_stops_when_one_asks():
  # Two workers: the first asks to stop, then neither does.
  script = (
      "import sys\n"
      "from rlfat_tf import preemption, strategies\n"
      "s = strategies.create('multi_worker')\n"
      "first = sys.argv[1] == '1'\n"
      "print(preemption.any_requested(s, first),"
      " preemption.any_requested(s, False), flush=True)\n")
  ports = helpers.free_ports(2)
  cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
  procs = []
  try:
    for index in range(2):
      tf_config = json.dumps(
          {"cluster": cluster, "task": {"type": "worker", "index": index}})
      procs.append(subprocess.Popen(
          [sys.executable, "-c", script, str(int(index == 0))], cwd=ROOT,
          env=dict(ENV, TF_CONFIG=tf_config), stdout=subprocess.PIPE,
          stderr=subprocess.PIPE, text=True))
    outputs = [proc.communicate(timeout=TIMEOUT) for proc in procs]
  finally:
    for proc in procs:
      if proc.poll() is None:
        proc.kill()
        proc.wait()
  for proc, (out, err) in zip(procs, outputs):
    assert proc.returncode == 0, err
    assert out.split() == ["True", "False"], err
