"""Graceful stops: on SIGTERM or Ctrl-C, a checkpoint at the next boundary.

Schedulers stop a job by sending SIGTERM and, a grace period later, SIGKILL:
Kubernetes (``terminationGracePeriodSeconds``, 30 s by default), Slurm
(preemption's ``GraceTime``, or ``--signal=TERM@SECONDS`` before the time
limit), ``docker stop``, and a Compute Engine VM being preempted (its shutdown
stops every process with SIGTERM). A user stops a job in a terminal with
Ctrl-C (SIGINT). Inside a ``PreemptionWatcher`` either signal only sets
``requested``; the training loop checks it at each loop boundary, saves a
checkpoint there and returns, and the same command, run again, resumes from
that checkpoint, as after any other stop. An evaluation checks it after
saving each batch (``evalstate``) and stops there.

Choices:

- When: a Python signal handler runs in the main thread between bytecodes,
  so it runs once the compiled loop of ``--steps_per_loop`` steps returns.
  Stopping takes at most one loop plus one checkpoint save: keep both well
  inside the grace period, or the SIGKILL that ends it leaves the previous
  checkpoint as the resume point.
- Announced at once: the handler itself waits for the loop, so a listener
  thread reads the signals from ``signal.set_wakeup_fd``'s pipe, where the
  interpreter writes every signal as it arrives (even two that the handler
  will see as one), and prints the line that says the stop is coming.
- A second signal: the stop is already under way. A second SIGTERM is
  announced but changes nothing, so the save it would otherwise cut short
  finishes (SIGKILL still stops at once). A second Ctrl-C is a user who wants
  out now: the listener ends the process at once with ``os._exit``, without
  waiting for the loop or saving, which leaves the checkpoints on disk as a
  SIGKILL does, the last complete one the resume point.
- Exit status: ``128 + the signal's number``, 143 for SIGTERM and 130 for
  SIGINT (``Stopped`` carries it; the abort on a second Ctrl-C exits 130
  too). It is the status of a process ended by the signal, so schedulers
  and wrapper scripts see a stopped job, not a finished one: a Kubernetes Job
  whose pod exited 0 counts as complete and is not restarted, while a
  non-zero status makes the Job create a replacement pod (a ``podFailurePolicy``
  rule ``onExitCodes: {operator: In, values: [143]}`` with ``action: Ignore``
  keeps such stops off its ``backoffLimit``); a Slurm job that stopped early
  shows as failed in ``sacct`` rather than completed; and it is the status
  TensorFlow's own ``PreemptionCheckpointHandler`` exits with on Compute
  Engine so that the platform restarts the program.
- Multi-worker runs: the signal may reach one worker only (one preempted
  VM), yet checkpoint saves are collective and every worker must stop at the
  same step. ``any_requested`` sums every replica's vote across the cluster,
  so all workers stop at the boundary where the first one asked.
"""

import dataclasses
import os
import signal
import threading

import tensorflow as tf


class Stopped(Exception):
  """A command stopped early on a signal, after saving its progress.

  Entry points print the message as one line and exit with ``status``.

  Attributes:
    status: the exit status, 128 + the signal's number (143 for SIGTERM, 130
      for SIGINT).
  """

  def __init__(self, signum, where, saved):
    """``where`` it stopped ("at step 350") and what it ``saved`` ("the
    checkpoint runs/x/checkpoints/ckpt-350")."""
    self.status = 128 + signum
    super().__init__(
        f"stopped {where} on {signal.Signals(signum).name}, with {saved} "
        f"saved: run the same command again to resume")


@dataclasses.dataclass(frozen=True)
class Wording:
  """How a watcher's announcements name what the command saves.

  Attributes:
    saving: what is saved, and when ("a checkpoint at the next step
      boundary").
    saved: what is being saved, as the subject of "is still being saved".
    previous: what a stop without saving keeps ("the previous one").
    resume: what the same command resumes from ("the last checkpoint").
  """
  saving: str
  saved: str
  previous: str
  resume: str


CHECKPOINT = Wording("a checkpoint at the next step boundary",
                     "the checkpoint", "the previous one",
                     "the last checkpoint")
PROGRESS = Wording("the evaluation's progress at the next batch boundary",
                   "the progress", "the batches saved before",
                   "the last batch saved")


class PreemptionWatcher:
  """Turns stop signals into a request the training loop checks.

  A context manager: entering installs its handler for ``signals`` (in the
  main thread, the only one Python lets set handlers) and starts the
  listener that announces each signal as it arrives; leaving restores the
  handlers that were there before, SIG_DFL for one that Python did not
  install, and the previous wakeup fd, and waits for the listener to
  announce every signal received so far. A signal that arrives after it has
  left gets its usual treatment again, so the watcher should stay entered
  until the last save is written.

  Attributes:
    signals: the signals it catches.
    abort_on_repeat: those of them that, arriving after any first one, end
      the process at once with status 128 + their number.
    wording: how the announcements name what is saved (``CHECKPOINT`` or
      ``PROGRESS``).
    received: the number of the first signal caught, or None.
  """

  def __init__(self, signals=(signal.SIGTERM, signal.SIGINT),
               abort_on_repeat=(signal.SIGINT,), wording=CHECKPOINT):
    self.signals = tuple(signals)
    self.abort_on_repeat = frozenset(abort_on_repeat)
    self.wording = wording
    self.received = None
    self._previous = None
    self._listener = None

  @property
  def requested(self):
    """Whether a stop signal arrived."""
    return self.received is not None

  def __enter__(self):
    if self._previous is not None:
      raise RuntimeError("this PreemptionWatcher is already entered")
    self._previous = {s: signal.getsignal(s) for s in self.signals}
    for s in self.signals:
      signal.signal(s, self._handle)
    read, write = os.pipe()
    # The interpreter's C-level handler must never block on a full pipe.
    os.set_blocking(write, False)
    self._previous_wakeup = signal.set_wakeup_fd(write,
                                                 warn_on_full_buffer=False)
    self._wakeup = write
    self._listener = threading.Thread(target=self._listen, args=(read,),
                                      name="preemption-listener", daemon=True)
    self._listener.start()
    return self

  def __exit__(self, *exc_info):
    signal.set_wakeup_fd(self._previous_wakeup)
    for s, handler in self._previous.items():
      signal.signal(s, signal.SIG_DFL if handler is None else handler)
    self._previous = None
    # Closing the write end lets the listener read what is left, then end.
    os.close(self._wakeup)
    self._listener.join()
    self._listener = None

  def _handle(self, signum, frame):
    del frame
    if self.received is None:
      self.received = signum

  def _listen(self, read):
    """Announces each watched signal the wakeup pipe reports, in order."""
    arrived = 0
    with os.fdopen(read, "rb", buffering=0) as pipe:
      while chunk := pipe.read(512):
        for signum in chunk:
          if signum in self.signals:
            self._announce(signum, first=arrived == 0)
            arrived += 1

  def _announce(self, signum, first):
    name, said = signal.Signals(signum).name, self.wording
    if first:
      line = f"received {name}: saving {said.saving}"
      if signum in self.abort_on_repeat:
        line += f" ({name} again stops at once and keeps {said.previous})"
    elif signum in self.abort_on_repeat:
      line = (f"received {name} again: stopping at once, without saving; run "
              f"the same command again to resume from {said.resume}")
    else:
      line = (f"received {name} again: {said.saved} is still being saved "
              f"(SIGKILL stops at once and keeps {said.previous})")
    # A raw write: the main thread may be inside sys.stderr's own write.
    os.write(2, f"{line}\n".encode())
    if not first and signum in self.abort_on_repeat:
      # Not an exception: the main thread may be inside a TensorFlow op
      # for a whole loop, and only the process ending is prompt.
      os._exit(128 + signum)  # pylint: disable=protected-access


def any_requested(strategy, requested):
  """Whether any worker of ``strategy``'s cluster asked to stop.

  A collective under multi-worker strategies: every worker must call it at
  the same points of the loop (each loop boundary), whatever its own answer.

  Args:
    strategy: the ``tf.distribute.Strategy`` training runs under.
    requested: whether this process asked to stop (``PreemptionWatcher``'s
      ``requested``).

  Returns:
    True on every worker if it was True on any of them.
  """
  votes = strategy.experimental_distribute_values_from_function(
      lambda _: tf.constant(float(requested)))
  total = strategy.reduce(tf.distribute.ReduceOp.SUM, votes, axis=None)
  return float(total) > 0
