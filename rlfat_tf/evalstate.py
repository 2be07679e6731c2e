"""An evaluation's progress on disk, so that a stopped evaluation resumes.

AutoAttack of a few thousand images runs for hours, longer than a scheduler's
time slot or a preemptible machine's life. An evaluation given an
``EvalState`` saves every batch of every attack as it finishes; the same
evaluation, run again after a stop, a crash or a SIGKILL, takes the batches
on disk as they are and attacks only the rest, and ends with the verdicts an
uninterrupted run gives.

The state is a folder beside the results file, ``<stem>_state/``:

- ``settings.json``: what decides the verdicts (the command's flags, the
  checkpoint, a digest of the images and labels). A rerun with other
  settings is refused, naming the first that differs, rather than mixing
  two evaluations' verdicts.
- ``<NNN>_<name>/<BBBBB>.npz``: batch B of the evaluation's N-th attack run
  (an attack, a stage of AutoAttack, an attack of the integrity checks, the
  sensitivity's PGD) with its per-example results and its seconds.

Choices:

- One file per batch, each written once and atomically (``files``): a save
  costs one batch's arrays however long the evaluation, and a process killed
  while writing leaves at most a temporary file that nothing reads. A
  SIGKILL loses at most the batch in flight.
- Runs are numbered in the order the evaluation makes them, which its
  settings fix, so a rerun makes the same runs in the same order. Each batch
  holds the same examples as before: those still robust after the earlier
  runs, whose verdicts come from disk, gathered in order into batches of the
  same size, each drawing from the seed of its position.
- Only attack results are kept: the clean logits, the checks' judgements,
  the sensitivity's losses and the salience maps take seconds and are
  computed again.
- Stops: a ``PreemptionWatcher`` passed in is read after each save, and a
  stop it reports raises ``preemption.Stopped`` there, with everything up to
  that batch on disk.
- The caller removes the folder (``remove``) once the results file is
  written.
"""

import hashlib
import io
import json
import os
import re
import signal

import numpy as np
import tensorflow as tf

from rlfat_tf import errors
from rlfat_tf import files
from rlfat_tf import preemption

SETTINGS_FILE = "settings.json"


def digest(*arrays):
  """A short hex digest of arrays' dtypes, shapes and values, in order."""
  h = hashlib.sha256()
  for a in arrays:
    a = np.ascontiguousarray(a)
    h.update(f"{a.dtype.str}{a.shape}".encode())
    h.update(a.data)
  return h.hexdigest()[:16]


def _normal(settings):
  """Settings as JSON reads them back (tuples become lists, keys strings)."""
  return json.loads(json.dumps(settings, sort_keys=True))


def _show(flag, value):
  """A flag's setting as a command line spells it: ``--epsilon=0.03``."""
  if isinstance(value, list):
    value = ",".join(str(v) for v in value)
  if isinstance(value, bool):
    return flag if value else f"--no{flag[2:]}"
  return f"{flag}={'' if value is None else value}"


class Run:
  """The saved batches of one attack run of an evaluation.

  Attributes:
    name: what the run is ("autoattack/apgd_t").
    batches: the results of the batches on disk, in order (dicts of arrays,
      ``seconds`` among them), those of batches 0 to k - 1 for the first k
      files found.
  """

  def __init__(self, state, folder, name):
    self._state = state
    self._folder = folder
    self.name = name
    self.batches = []
    while tf.io.gfile.exists(path := self._path(len(self.batches))):
      with tf.io.gfile.GFile(path, "rb") as f:
        with np.load(io.BytesIO(f.read())) as saved:
          self.batches.append({k: saved[k] for k in saved.files})

  def _path(self, batch):
    return os.path.join(self._folder, f"{batch:05d}.npz")

  @property
  def saved_seconds(self):
    """The seconds the batches on disk took when they were made."""
    return float(sum(b["seconds"] for b in self.batches))

  def save(self, batch, arrays, total):
    """Saves the results of batch ``batch`` of ``total``, then stops if asked.

    Args:
      batch: its index in the run.
      arrays: its per-example results (name -> array) and ``seconds``.
      total: the run's number of batches, for the stop's message.

    Raises:
      preemption.Stopped: the watcher reports a stop signal; this batch and
        every earlier one are on disk.
    """
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    tf.io.gfile.makedirs(self._folder)
    files.write_bytes(self._path(batch), buffer.getvalue())
    self._state.saved += 1
    self._state.stop_if_asked(
        f"after batch {batch + 1} of {total} of {self.name}")


class EvalState:
  """The progress of one evaluation, in a folder (see the module's notes).

  Attributes:
    folder: the state's folder.
    found: the number of batches on disk when it was opened.
    loaded: the number of batches taken from disk so far.
    saved: the number of batches saved since.
    watcher: a ``preemption.PreemptionWatcher`` read after each save, or None.
  """

  def __init__(self, folder, watcher=None):
    self.folder = folder
    self.watcher = watcher
    self.found = 0
    self.loaded = 0
    self.saved = 0
    self._runs = 0

  @classmethod
  def open(cls, folder, settings, *, resume=True, watcher=None,
           fresh_hint="delete the folder to start afresh"):
    """Opens the state in ``folder``, to resume it or to start one.

    Args:
      folder: the state's folder (made if missing).
      settings: what decides the evaluation's verdicts, as a JSON-able dict;
        keys that start with "--" name flags in the refusal.
      resume: keep the batches of an earlier evaluation with these settings;
        False discards whatever is there.
      watcher: see ``EvalState.watcher``.
      fresh_hint: the message's way to start afresh instead of resuming.

    Returns:
      An ``EvalState``.

    Raises:
      errors.UserError: ``folder`` holds the progress of an evaluation with
        other settings, named with the first that differs.
    """
    settings = _normal(settings)
    path = os.path.join(folder, SETTINGS_FILE)
    if tf.io.gfile.exists(folder) and resume and tf.io.gfile.exists(path):
      with tf.io.gfile.GFile(path) as f:
        before = json.load(f)
      changed = [k for k in sorted(set(settings) | set(before))
                 if settings.get(k) != before.get(k)]
      if changed:
        name = changed[0]
        was, now = before.get(name), settings.get(name)
        if name.startswith("--"):
          raise errors.UserError(
              f"{folder} holds the progress of an evaluation with "
              f"{_show(name, was)}, not {_show(name, now)}: rerun with "
              f"{_show(name, was)} to resume it, or {fresh_hint}")
        raise errors.UserError(
            f"{folder} holds the progress of an evaluation with {name} = "
            f"{was!r}, not {now!r}: {fresh_hint}")
    elif tf.io.gfile.exists(folder):
      # Without its settings file the folder was never a usable state (the
      # file is written before any batch).
      tf.io.gfile.rmtree(folder)
    state = cls(folder, watcher)
    if tf.io.gfile.exists(path):
      state.found = len(tf.io.gfile.glob(os.path.join(folder, "*",
                                                       "*.npz")))
    else:
      tf.io.gfile.makedirs(folder)
      files.write_json(path, settings)
    return state

  def run(self, name):
    """The next attack run of the evaluation, with its batches on disk."""
    safe = re.sub(r"[^A-Za-z0-9_.=-]+", "_", name)
    run = Run(self, os.path.join(self.folder, f"{self._runs:03d}_{safe}"),
              name)
    self._runs += 1
    self.loaded += len(run.batches)
    return run

  def stop_if_asked(self, where):
    """Raises ``preemption.Stopped`` if the watcher reports a stop signal.

    Args:
      where: where the evaluation stands, for the message ("after batch 3
        of 5 of autoattack/apgd_t").
    """
    if self.watcher is not None and self.watcher.requested:
      raise preemption.Stopped(self.watcher.received or signal.SIGTERM,
                               where, f"the progress in {self.folder}")

  def remove(self):
    """Removes the folder, once the results it led to are written."""
    if tf.io.gfile.exists(self.folder):
      tf.io.gfile.rmtree(self.folder)
