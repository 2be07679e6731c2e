"""Tests of graceful stops on SIGTERM and Ctrl-C, and of the cluster-wide
stop vote."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import tensorflow as tf

from rlfat_tf import preemption
from rlfat_tf import runs

import helpers
from helpers import ENV
from helpers import ROOT
from helpers import SMOKE

TIMEOUT = 240
FIRST = "received SIGTERM: saving a checkpoint at the next step boundary\n"
FIRST_SIGINT = ("received SIGINT: saving a checkpoint at the next step "
                "boundary (SIGINT again stops at once and keeps the previous "
                "one)")
ABORT = ("received SIGINT again: stopping at once, without saving; run the "
         "same command again to resume from the last checkpoint")


def _run(script, **env):
  return subprocess.run([sys.executable, "-c", script], capture_output=True,
                        text=True, cwd=ROOT, timeout=TIMEOUT, check=False,
                        env=dict(ENV, **env))


def _counting_handler(signum):
  """Installs a Python handler of ``signum`` that counts its calls."""
  calls = []
  previous = signal.signal(signum, lambda signum, frame: calls.append(signum))
  yield calls
  signal.signal(signum, previous)


@pytest.fixture(name="sentinel")
def _sentinel():
  """A Python SIGTERM handler installed around the test, counting calls."""
  yield from _counting_handler(signal.SIGTERM)


@pytest.fixture(name="interrupt_sentinel")
def _interrupt_sentinel():
  """The same for SIGINT, so that a stray one cannot end the test session."""
  yield from _counting_handler(signal.SIGINT)


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


def test_sigint_sets_requested_and_says_a_second_one_stops_at_once(
    interrupt_sentinel, capfd):
  before = signal.getsignal(signal.SIGINT)
  with preemption.PreemptionWatcher() as watcher:
    os.kill(os.getpid(), signal.SIGINT)
    assert watcher.received == signal.SIGINT
  assert capfd.readouterr().err == FIRST_SIGINT + "\n"
  assert interrupt_sentinel == []
  assert signal.getsignal(signal.SIGINT) is before


def test_an_evaluation_says_it_saves_its_progress(sentinel,
                                                  interrupt_sentinel, capfd):
  with preemption.PreemptionWatcher(wording=preemption.PROGRESS):
    os.kill(os.getpid(), signal.SIGINT)
    os.kill(os.getpid(), signal.SIGTERM)
  assert capfd.readouterr().err == (
      "received SIGINT: saving the evaluation's progress at the next batch "
      "boundary (SIGINT again stops at once and keeps the batches saved "
      "before)\nreceived SIGTERM again: the progress is still being saved "
      "(SIGKILL stops at once and keeps the batches saved before)\n")
  assert interrupt_sentinel == sentinel == []


def test_a_second_sigint_ends_the_process_at_once_with_130():
  # The main thread sleeps in C, as it does in a compiled loop: the abort
  # may not wait for it.
  result = _run(
      "import os, signal, time\n"
      "from rlfat_tf import preemption\n"
      "with preemption.PreemptionWatcher():\n"
      "  os.kill(os.getpid(), signal.SIGINT)\n"
      "  os.kill(os.getpid(), signal.SIGINT)\n"
      "  time.sleep(600)\n"
      "print('survived', flush=True)\n")
  assert result.returncode == 130, result.stderr
  assert result.stdout == ""
  assert result.stderr.endswith(f"{FIRST_SIGINT}\n{ABORT}\n")


def test_a_sigterm_during_a_stop_on_sigint_changes_nothing(
    interrupt_sentinel, sentinel, capfd):
  with preemption.PreemptionWatcher() as watcher:
    os.kill(os.getpid(), signal.SIGINT)
    os.kill(os.getpid(), signal.SIGTERM)
  assert watcher.received == signal.SIGINT
  assert capfd.readouterr().err == (
      f"{FIRST_SIGINT}\nreceived SIGTERM again: the checkpoint is still being "
      f"saved (SIGKILL stops at once and keeps the previous one)\n")
  assert interrupt_sentinel == sentinel == []


def test_stopped_carries_the_signal_status_and_one_line():
  error = preemption.Stopped(signal.SIGTERM, "at step 350",
                             "the checkpoint runs/x/checkpoints/ckpt-350")
  assert error.status == 143
  assert str(error) == (
      "stopped at step 350 on SIGTERM, with the checkpoint "
      "runs/x/checkpoints/ckpt-350 saved: run the same command again to "
      "resume")
  assert preemption.Stopped(signal.SIGUSR1, "here", "it").status == 138
  assert preemption.Stopped(signal.SIGINT, "here", "it").status == 130


def _start_training(*argv):
  return subprocess.Popen(
      [sys.executable, "-m", "rlfat_tf.train", *argv], env=ENV, cwd=ROOT,
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _read_until(stream, text):
  """Reads ``stream`` line by line up to one that contains ``text``."""
  seen = []
  while text not in (line := stream.readline()):
    assert line, f"no line with {text!r} in:\n{''.join(seen)}"
    seen.append(line)
  return seen + [line]


def _reported(err):
  """The lines of stderr that a stop or an error writes."""
  return [line for line in err.splitlines()
          if line.startswith(("received", "stopped", "error:", "Traceback"))]


def test_ctrl_c_saves_a_checkpoint_exits_130_and_the_same_command_resumes(
    run_copy):
  # The smoke run resumed from step 6, stopping after every step: Ctrl-C
  # while its first loop is traced stops it at the next boundary.
  command = [f"--flagfile={SMOKE}", f"--model_dir={run_copy}",
             "--train_steps=12", "--steps_per_loop=1", "--noprogress"]
  proc = _start_training(*command)
  try:
    _read_until(proc.stdout, "resuming from")
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=TIMEOUT)
  finally:
    proc.kill()
  assert proc.returncode == 130, err
  stopped = _reported(err)[-1]
  step = int(stopped.split()[3])
  assert 6 < step < 12, out
  checkpoint = str(run_copy / "checkpoints" / f"ckpt-{step}")
  assert _reported(err) == [
      FIRST_SIGINT,
      f"stopped at step {step} on SIGINT, with the checkpoint {checkpoint} "
      f"saved: run the same command again to resume"]
  assert runs.checkpoint_path(str(run_copy)) == checkpoint
  assert not (run_copy / ".lock").exists()

  result = helpers.run_module("rlfat_tf.train", *command, timeout=TIMEOUT)
  assert result.returncode == 0, result.stderr
  assert f"resuming from {checkpoint} (step {step})" in result.stdout
  assert "trained to step 12" in result.stdout
  assert _reported(result.stderr) == []


def test_a_second_ctrl_c_ends_training_at_once_and_keeps_the_checkpoints(
    run_copy):
  # One loop of 100,000 steps: a stop at its end would take hours.
  command = [f"--flagfile={SMOKE}", f"--model_dir={run_copy}",
             "--train_steps=100000", "--steps_per_loop=100000",
             "--checkpoint_every=100000", "--noprogress"]
  proc = _start_training(*command)
  try:
    _read_until(proc.stdout, "resuming from")
    proc.send_signal(signal.SIGINT)
    _read_until(proc.stderr, FIRST_SIGINT)
    # Well inside the first loop.
    time.sleep(2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
  finally:
    proc.kill()
  assert proc.returncode == 130, err
  assert _reported(err) == [ABORT], out
  last = str(run_copy / "checkpoints" / "ckpt-6")
  assert runs.checkpoint_path(str(run_copy)) == last

  # The run resumes from the checkpoint it had; asked for no more steps, it
  # ends there.
  result = helpers.run_module("rlfat_tf.train", *command[:2],
                              "--train_steps=6", "--noprogress",
                              timeout=TIMEOUT)
  assert result.returncode == 0, result.stderr
  assert f"resuming from {last} (step 6)" in result.stdout
  assert _reported(result.stderr) == []


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
