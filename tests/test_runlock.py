"""Tests of the run-folder lock: one trainer per folder, stale locks reclaimed."""

import errno
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys

import pytest

from rlfat_tf import errors
from rlfat_tf import runlock

from helpers import ENV
from helpers import ROOT


# Takes the lock of the folder in argv[1], says so, and sleeps until killed.
HOLDER = (
    "import sys, time\n"
    "from rlfat_tf import runlock\n"
    "runlock.RunLock(sys.argv[1]).acquire()\n"
    "print('held', flush=True)\n"
    "time.sleep(600)\n")
# Takes the flock of argv[1]/.lock but writes no record, as a trainer caught
# between its flock and its write would be.
FLOCK_ONLY = (
    "import fcntl, os, sys, time\n"
    "fd = os.open(os.path.join(sys.argv[1], '.lock'), os.O_RDWR | os.O_CREAT)\n"
    "fcntl.flock(fd, fcntl.LOCK_EX)\n"
    "print('held', flush=True)\n"
    "time.sleep(600)\n")


@pytest.fixture(name="spawn")
def _spawn():
  """Starts a Python script that holds a lock; kills it at the end."""
  procs = []

  def spawn(script, folder):
    proc = subprocess.Popen(
        [sys.executable, "-c", script, str(folder)], cwd=ROOT, env=ENV,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    procs.append(proc)
    assert proc.stdout.readline() == "held\n", proc.stderr.read()
    return proc

  yield spawn
  for proc in procs:
    if proc.poll() is None:
      proc.kill()
    proc.wait()


def _write_record(folder, **changes):
  """Writes a lock record of this process, with ``changes``."""
  record = {"host": socket.gethostname(), "pid": os.getpid(),
            "start": runlock.process_start(os.getpid()),
            "command": "python -m rlfat_tf.train --model_dir=x",
            "acquired": "2026-12-02 02:51:07", **changes}
  folder.mkdir(exist_ok=True)
  (folder / ".lock").write_text(json.dumps(record))


def _refusal(folder):
  """The one-line message of a refused acquisition."""
  with pytest.raises(errors.UserError) as error:
    runlock.RunLock(str(folder)).acquire()
  message = str(error.value)
  assert "\n" not in message
  return message


def test_a_second_trainer_is_refused_with_one_line_naming_the_holder(
    tmp_path, spawn):
  run = tmp_path / "run"
  holder = spawn(HOLDER, run)
  record = json.loads((run / ".lock").read_text())
  assert record["pid"] == holder.pid
  assert record["host"] == socket.gethostname()
  assert record["start"] == runlock.process_start(holder.pid)
  assert record["command"].startswith("python")
  assert _refusal(run) == (
      f"{run} is in use by pid {holder.pid} on host {socket.gethostname()} "
      f"(since {record['acquired']}, {record['command']}): wait for it to "
      f"finish or stop it, or pass another --model_dir")
  assert holder.poll() is None
  assert json.loads((run / ".lock").read_text()) == record


def test_a_holder_still_writing_its_record_is_respected(tmp_path, spawn):
  # Only the flock tells this holder apart from a crashed one.
  run = tmp_path / "run"
  run.mkdir()
  spawn(FLOCK_ONLY, run)
  assert "is in use by another trainer, which is still writing" in (
      _refusal(run))


def test_a_killed_holders_lock_is_taken_over_with_one_line(tmp_path, spawn,
                                                           capsys):
  run = tmp_path / "run"
  holder = spawn(HOLDER, run)
  holder.send_signal(signal.SIGKILL)
  holder.wait()
  assert (run / ".lock").exists()
  with runlock.RunLock(str(run)):
    assert json.loads((run / ".lock").read_text())["pid"] == os.getpid()
  assert capsys.readouterr().err == (
      f"taking over the lock of pid {holder.pid} on host "
      f"{socket.gethostname()}, which is no longer running\n")
  assert not (run / ".lock").exists()


def test_a_record_of_a_running_process_is_refused_without_a_flock(tmp_path):
  # File systems where flock does not reach other processes: the record of
  # a process that runs is enough to refuse.
  run = tmp_path / "run"
  _write_record(run)
  assert f"in use by pid {os.getpid()}" in _refusal(run)


def test_a_reused_pid_counts_as_stale(tmp_path, capsys):
  run = tmp_path / "run"
  _write_record(run, start=runlock.process_start(os.getpid()) + "0")
  with runlock.RunLock(str(run)):
    pass
  assert "taking over the lock of pid" in capsys.readouterr().err


def test_another_hosts_lock_is_never_taken_over(tmp_path):
  run = tmp_path / "run"
  dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                        capture_output=True, text=True, check=True)
  _write_record(run, host="elsewhere", pid=int(dead.stdout))
  message = _refusal(run)
  assert message.startswith(f"{run} is in use by pid {int(dead.stdout)} on "
                            f"host elsewhere")
  assert "which this host cannot check and never takes over" in message
  assert f"delete {run / '.lock'}" in message
  assert json.loads((run / ".lock").read_text())["host"] == "elsewhere"


def test_a_truncated_record_is_taken_over(tmp_path, capsys):
  run = tmp_path / "run"
  run.mkdir()
  (run / ".lock").write_text('{"host": "h", "pi')
  with runlock.RunLock(str(run)):
    assert json.loads((run / ".lock").read_text())["pid"] == os.getpid()
  assert capsys.readouterr().err == (
      f"taking over the unreadable lock file {run / '.lock'}, left by a "
      f"trainer that stopped while writing it\n")


def test_the_lock_is_released_on_exceptions(tmp_path, capsys):
  run = tmp_path / "run"
  with pytest.raises(ValueError):
    with runlock.RunLock(str(run)):
      assert (run / ".lock").exists()
      raise ValueError("boom")
  assert not (run / ".lock").exists()
  with runlock.RunLock(str(run)):
    pass
  assert capsys.readouterr().err == ""


def test_one_object_cannot_enter_twice_but_a_second_one_is_refused(tmp_path):
  run = tmp_path / "run"
  lock = runlock.RunLock(str(run))
  with lock:
    with pytest.raises(RuntimeError, match="already taken"):
      lock.acquire()
    assert f"in use by pid {os.getpid()}" in _refusal(run)
  with lock:
    pass


def test_a_lock_released_while_being_taken_is_taken_on_the_new_file(
    tmp_path, monkeypatch):
  run = tmp_path / "run"
  first = runlock.RunLock(str(run))
  first.acquire()
  flock = fcntl.flock

  def release_first_then_flock(fd, operation):
    # The first holder leaves between the second's open and its flock.
    first.release()
    monkeypatch.setattr(fcntl, "flock", flock)
    flock(fd, operation)

  monkeypatch.setattr(fcntl, "flock", release_first_then_flock)
  second = runlock.RunLock(str(run))
  with second:
    assert json.loads((run / ".lock").read_text())["pid"] == os.getpid()
    assert "in use by pid" in _refusal(run)


def test_without_flock_the_record_still_guards(tmp_path, monkeypatch, capsys):
  def no_locks(fd, operation):
    raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

  monkeypatch.setattr(fcntl, "flock", no_locks)
  run = tmp_path / "run"
  with runlock.RunLock(str(run)):
    assert f"in use by pid {os.getpid()}" in _refusal(run)
  warnings = capsys.readouterr().err.splitlines()
  assert len(warnings) == 2
  assert all(w.startswith(f"warning: {run / '.lock'} cannot be locked on "
                          f"this file system") for w in warnings)


def test_other_flock_errors_propagate(tmp_path, monkeypatch):
  def broken(fd, operation):
    raise OSError(errno.EIO, os.strerror(errno.EIO))

  monkeypatch.setattr(fcntl, "flock", broken)
  with pytest.raises(OSError, match="Input/output error"):
    runlock.RunLock(str(tmp_path / "run")).acquire()


def test_bucket_paths_are_not_locked_and_say_so(capsys):
  with runlock.RunLock("gs://bucket/run"):
    pass
  assert capsys.readouterr().err == (
      "warning: gs://bucket/run is not on a local or mounted file system, so "
      "it cannot be locked against a second trainer: make sure only one "
      "trainer uses it\n")
  assert runlock.is_local("file:///tmp/run") and runlock.is_local("runs/x")


def test_file_urls_lock_the_local_folder(tmp_path):
  with runlock.RunLock(f"file://{tmp_path}/run"):
    assert (tmp_path / "run" / ".lock").exists()


def test_process_start_reads_field_22_past_any_parenthesis(tmp_path,
                                                           monkeypatch):
  proc = tmp_path / "proc"
  (proc / "self").mkdir(parents=True)
  (proc / "sys/kernel/random").mkdir(parents=True)
  (proc / "sys/kernel/random/boot_id").write_text("boot-1\n")
  (proc / "42").mkdir()
  # Fields 3 to 21 are 3..21, then the start time, then more fields.
  fields = " ".join(str(i) for i in range(3, 22))
  (proc / "42" / "stat").write_bytes(
      f"42 (a) b (c)) {fields} 777 23 24".encode())
  monkeypatch.setattr(runlock, "PROC", str(proc))
  assert runlock.process_start(42) == "boot-1/777"
  assert runlock.process_start(43) is None


def test_process_start_without_proc_uses_psutil_or_the_pid(monkeypatch):
  gone = subprocess.Popen([sys.executable, "-c", "pass"])
  gone.wait()
  monkeypatch.setattr(runlock, "PROC", "/nonexistent")
  if runlock.psutil is not None:
    assert runlock.process_start(os.getpid()) == repr(
        runlock.psutil.Process().create_time())
    assert runlock.process_start(gone.pid) is None
  monkeypatch.setattr(runlock, "psutil", None)
  assert runlock.process_start(os.getpid()) == ""
  assert runlock.process_start(gone.pid) is None
