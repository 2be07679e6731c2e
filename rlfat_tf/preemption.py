"""Graceful stops: on SIGTERM, save a checkpoint at the next step boundary.

Schedulers stop a job by sending SIGTERM and, a grace period later, SIGKILL:
Kubernetes (``terminationGracePeriodSeconds``, 30 s by default), Slurm
(preemption's ``GraceTime``, or ``--signal=TERM@SECONDS`` before the time
limit), ``docker stop``, and a Compute Engine VM being preempted (its shutdown
stops every process with SIGTERM). Inside a ``PreemptionWatcher`` a SIGTERM
only sets ``requested``; the training loop checks it at each loop boundary,
saves a checkpoint there and returns, and the same command, run again,
resumes from that checkpoint, as after any other stop.

Choices:

- When: a Python signal handler runs in the main thread between bytecodes,
  so it runs once the compiled loop of ``--steps_per_loop`` steps returns.
  Stopping takes at most one loop plus one checkpoint save: keep both well
  inside the grace period, or the SIGKILL that ends it leaves the previous
  checkpoint as the resume point.
- A second signal: the stop is already under way, so it is recorded and
  announced but changes nothing; the save it would otherwise cut short
  finishes. SIGKILL still stops at once.
- Exit status: ``128 + the signal's number``, 143 for SIGTERM (``Stopped``
  carries it). It is the status of a process ended by SIGTERM, so schedulers
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

import os
import signal

import tensorflow as tf


class Stopped(Exception):
  """Training stopped early on a signal, after saving a checkpoint.

  Entry points print the message as one line and exit with ``status``.

  Attributes:
    status: the exit status, 128 + the signal's number (143 for SIGTERM).
  """

  def __init__(self, signum, step, checkpoint):
    self.status = 128 + signum
    super().__init__(
        f"stopped at step {step} on {signal.Signals(signum).name}, with the "
        f"checkpoint {checkpoint} saved: run the same command again to resume")


class PreemptionWatcher:
  """Turns stop signals into a request the training loop checks.

  A context manager: entering installs its handler for ``signals`` (in the
  main thread, the only one Python lets set handlers); leaving restores the
  handlers that were there before, SIG_DFL for one that Python did not
  install. A signal that arrives after it has left gets its usual treatment
  again, so the watcher should stay entered until the last save is written.

  Attributes:
    signals: the signals it catches.
    received: the number of the first signal caught, or None.
  """

  def __init__(self, signals=(signal.SIGTERM,)):
    self.signals = tuple(signals)
    self.received = None
    self._previous = None

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
    return self

  def __exit__(self, *exc_info):
    for s, handler in self._previous.items():
      signal.signal(s, signal.SIG_DFL if handler is None else handler)
    self._previous = None

  def _handle(self, signum, frame):
    del frame
    name = signal.Signals(signum).name
    if self.received is None:
      self.received = signum
      line = f"received {name}: saving a checkpoint at the next step boundary"
    else:
      line = (f"received {name} again: the checkpoint is still being saved "
              f"(SIGKILL stops at once and keeps the previous one)")
    # A raw write: the handler may run while the main thread is inside
    # sys.stderr's own write, which a print here would re-enter.
    os.write(2, f"{line}\n".encode())


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
