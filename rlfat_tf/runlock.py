"""One trainer per run folder: an exclusive lock held for the whole run.

Two trainers on one run folder would both write checkpoints, ``best/``,
``best.json`` and ``metrics.json``, the last writer winning file by file, so
the chief trainer holds ``RUN/.lock`` while it runs and a second one is
refused with one line naming the holder.

How the lock works on a local or network file system:

- The lock is ``fcntl.flock`` on ``RUN/.lock``, kept open for the whole run.
  The kernel drops it when the holder exits in any way (SIGKILL, a crash, an
  out-of-memory kill), so a dead trainer never leaves a live lock behind, and
  two trainers starting at the same moment cannot both get it.
- The file also holds a record of the holder: host, pid, process start time
  (the boot id and start tick of ``/proc/<pid>/stat`` on Linux, psutil's
  creation time elsewhere), command line and the time the lock was taken.
  It names the holder in the refusal, and it guards file systems where flock
  does not reach other processes (NFS mounted with ``nolock`` only locks
  within one host, some FUSE file systems not at all): a lock obtained over a
  record whose holder is still running on this host is refused all the same,
  and a record from another host, whose processes cannot be checked from
  here, is never taken over; the refusal names the file to delete when the
  user knows that trainer is gone.
- A record whose holder is no longer running (its pid is gone, or now belongs
  to a process that started at another time) is taken over with one line on
  stderr. So is an unreadable record that nobody holds the flock on: the
  trainer that was writing it stopped mid-write. An unreadable record under a
  held flock is a trainer still writing it, and is refused.
- On release the file is deleted. A trainer that opened the file just before
  the deletion finds, once it has the flock, that the path no longer leads to
  the file it locked, and starts again on the new file.

Non-local paths (``gs://``, ``s3://``, ``hdfs://``, ...) are not locked:
``tf.io.gfile`` has no atomic create-if-absent, so a check-then-write lock
would let two trainers that start together both pass, and a lock left by a
preempted VM would block the automatic resume on its replacement, which runs
on another host. A trainer on such a path prints one warning line instead.
"""

import errno
import fcntl
import json
import os
import shlex
import socket
import sys
import time

from rlfat_tf import errors

LOCK_FILE = ".lock"
# Where process start times come from on Linux; tests point it elsewhere to
# exercise the other sources.
PROC = "/proc"
# Errors of flock on file systems that do not support it (NFS without a lock
# daemon, some FUSE file systems): the record alone then guards the folder.
_NO_FLOCK = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)
_FIELDS = ("host", "pid", "start", "command", "acquired")
_COMMAND_CHARS = 160

try:
  import psutil
except ImportError:
  psutil = None


def is_local(path):
  """Whether ``path`` is on a file system that the OS mounts (not a URL)."""
  return "://" not in path or path.startswith("file://")


def process_start(pid):
  """An opaque token of when process ``pid`` started.

  Two processes that have had the same pid get different tokens, so a pid
  that was reused since a record was written is told apart from the process
  it names.

  Args:
    pid: a process id on this host.

  Returns:
    The token, "" when this system offers no start times (neither
    ``/proc`` nor psutil; then only the pid is compared), or None when no
    process ``pid`` is running.
  """
  if os.path.isdir(os.path.join(PROC, "self")):
    try:
      with open(os.path.join(PROC, str(pid), "stat"), "rb") as f:
        stat = f.read()
      with open(os.path.join(PROC, "sys/kernel/random/boot_id")) as f:
        boot = f.read().strip()
    except (FileNotFoundError, ProcessLookupError):
      return None
    except PermissionError:
      # Hidden by the /proc mount's hidepid option: it runs, start unknown.
      return ""
    # Field 22 is the start time in clock ticks since boot. The file name in
    # field 2 may hold spaces and parentheses, so fields are counted from the
    # last ")": field 3 comes first after it.
    ticks = stat.rsplit(b")", 1)[1].split()[22 - 3].decode()
    return f"{boot}/{ticks}"
  if psutil is not None:
    try:
      return repr(psutil.Process(pid).create_time())
    except psutil.NoSuchProcess:
      return None
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return None
  except PermissionError:
    pass
  return ""


def _own_record():
  """This process's record, as it goes into the lock file."""
  argv = list(getattr(sys, "orig_argv", None) or [sys.executable, *sys.argv])
  argv[0] = os.path.basename(argv[0])
  # One line, for the one-line refusal; it is shown, never run.
  command = " ".join(shlex.join(argv).split())
  if len(command) > _COMMAND_CHARS:
    command = command[:_COMMAND_CHARS - 3] + "..."
  pid = os.getpid()
  return {"host": socket.gethostname(), "pid": pid,
          "start": process_start(pid),
          "command": command,
          "acquired": time.strftime("%Y-%m-%d %H:%M:%S")}


def _parse(raw):
  """The record in a lock file's bytes, or None if they hold no record."""
  try:
    record = json.loads(raw.decode("utf-8"))
  except ValueError:
    return None
  if (not isinstance(record, dict) or set(_FIELDS) - set(record)
      or not isinstance(record["pid"], int)):
    return None
  return record


def _read(fd):
  return os.pread(fd, os.fstat(fd).st_size, 0)


def _same_file(fd, path):
  """Whether ``path`` still leads to the open file ``fd``."""
  try:
    on_disk = os.stat(path)
  except FileNotFoundError:
    return False
  opened = os.fstat(fd)
  return (on_disk.st_dev, on_disk.st_ino) == (opened.st_dev, opened.st_ino)


def _alive(record):
  """Whether the process a record of this host names still runs."""
  start = process_start(record["pid"])
  if start is None:
    return False
  return not (start and record["start"]) or start == record["start"]


class RunLock:
  """The exclusive lock of a run folder, held while the context is open.

  Use ``with RunLock(model_dir):`` around everything that writes to the run
  folder, on the chief only (other workers of a multi-worker run write
  elsewhere; see ``strategies.write_dir``). Entering creates the folder if
  needed; leaving releases the lock, on exceptions too. An object holds the
  lock at most once: entering it again while it holds the lock is a
  programming error (RuntimeError), while a second object on the same folder,
  in this process or another, is refused like a second trainer.

  Attributes:
    model_dir: the run folder.
    path: the lock file, ``model_dir/.lock``.
  """

  def __init__(self, model_dir):
    self.model_dir = model_dir
    self.path = os.path.join(model_dir.removeprefix("file://"), LOCK_FILE)
    self._fd = None
    self._entered = False

  def __enter__(self):
    self.acquire()
    return self

  def __exit__(self, *exc_info):
    self.release()

  def acquire(self):
    """Takes the lock.

    Raises:
      errors.UserError: another trainer holds it, or a trainer on another
        host may (its record is there).
      RuntimeError: this object has already entered.
    """
    if self._entered:
      raise RuntimeError(f"this RunLock of {self.model_dir} is already taken")
    if not is_local(self.model_dir):
      print(f"warning: {self.model_dir} is not on a local or mounted file "
            f"system, so it cannot be locked against a second trainer: make "
            f"sure only one trainer uses it", file=sys.stderr, flush=True)
      self._entered = True
      return
    os.makedirs(os.path.dirname(self.path), exist_ok=True)
    fd = self._open_locked()
    try:
      self._check_record(_read(fd))
      record = json.dumps(_own_record(), indent=1).encode("utf-8")
      os.ftruncate(fd, 0)
      os.pwrite(fd, record, 0)
      os.fsync(fd)
    except BaseException:
      os.close(fd)
      raise
    self._fd = fd
    self._entered = True

  def release(self):
    """Releases the lock and deletes the lock file (no-op if not held)."""
    self._entered = False
    fd, self._fd = self._fd, None
    if fd is None:
      return
    try:
      # Deleted before the flock goes, so that whoever takes it next finds
      # the file gone and starts on a new one.
      if _same_file(fd, self.path):
        os.unlink(self.path)
    finally:
      os.close(fd)

  def _open_locked(self):
    """Opens the lock file and takes its flock; returns the descriptor."""
    while True:
      fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except BlockingIOError:
        raw = _read(fd)
        os.close(fd)
        raise errors.UserError(self._in_use(_parse(raw))) from None
      except OSError as e:
        if e.errno not in _NO_FLOCK:
          os.close(fd)
          raise
        print(f"warning: {self.path} cannot be locked on this file system "
              f"({os.strerror(e.errno)}); only its record guards the run "
              f"folder, so two trainers started at the same moment could "
              f"both run", file=sys.stderr, flush=True)
        return fd
      if _same_file(fd, self.path):
        return fd
      # The holder released it between our open and our flock.
      os.close(fd)

  def _check_record(self, raw):
    """Refuses a live holder's record; announces a stale one's takeover."""
    if not raw:
      return
    record = _parse(raw)
    if record is None:
      print(f"taking over the unreadable lock file {self.path}, left by a "
            f"trainer that stopped while writing it", file=sys.stderr,
            flush=True)
      return
    if record["host"] != socket.gethostname():
      raise errors.UserError(
          f"{self._holder(record)}, which this host cannot check and never "
          f"takes over: if that trainer is no longer running, delete "
          f"{self.path}; otherwise wait for it, or pass another --model_dir")
    if _alive(record):
      raise errors.UserError(self._in_use(record))
    print(f"taking over the lock of pid {record['pid']} on host "
          f"{record['host']}, which is no longer running", file=sys.stderr,
          flush=True)

  def _holder(self, record):
    return (f"{self.model_dir} is in use by pid {record['pid']} on host "
            f"{record['host']} (since {record['acquired']}, "
            f"{record['command']})")

  def _in_use(self, record):
    """The refusal that names the holder of a held lock."""
    fix = "wait for it to finish or stop it, or pass another --model_dir"
    if record is None:
      return (f"{self.model_dir} is in use by another trainer, which is still "
              f"writing {self.path}: {fix}")
    return f"{self._holder(record)}: {fix}"
