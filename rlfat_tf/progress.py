"""Progress reporting: a bar on a terminal, complete plain lines in a log.

Keras's ``Progbar`` redraws one line with carriage returns and ANSI colour
codes, and takes every POSIX process for a terminal; under nohup, Slurm or
CI, where stdout is a file, each update then lands in the log as escape codes
and a carriage return, with the running metrics run together with the bar.
``progbar`` gives that bar only when stdout is a terminal, and otherwise a
``Lines`` reporter with the bar's ``update`` / ``add`` interface, which prints
one complete line (no carriage return, no escape code) whenever a tenth of
the total or ten seconds have passed since its last line, and at the end.

The commands' ``--progress`` / ``--noprogress`` flags force either display;
given neither, the choice is made as above (``from_flag``).
"""

import enum
import sys
import time

import keras

# A line whenever either has passed since the last one: a tenth of the total
# keeps a quick job to about ten lines, ten seconds keeps a slow one in sight.
LINES_PER_TOTAL = 10
LINE_SECONDS = 10.0

FLAG_HELP = ("Progress display: --progress forces Keras's redrawn bar, "
             "--noprogress shows none; by default a bar on a terminal and "
             "plain lines otherwise (a log file).")


class Mode(enum.IntEnum):
  """How progress is shown; the ``verbose`` arguments of the library take it.

  ``OFF`` (0, False) shows nothing, ``AUTO`` (1, True) a bar on a terminal and
  plain lines otherwise, ``BAR`` (2) Keras's bar wherever stdout goes.
  """
  OFF = 0
  AUTO = 1
  BAR = 2


def from_flag(value):
  """The ``Mode`` of a ``--progress`` flag whose default is None.

  Args:
    value: None (neither flag given), True (``--progress``) or False
      (``--noprogress``).
  """
  if value is None:
    return Mode.AUTO
  return Mode.BAR if value else Mode.OFF


def flag_argv(value):
  """The command-line words that pass ``--progress``'s ``value`` on."""
  if value is None:
    return []
  return ["--progress" if value else "--noprogress"]


def progbar(target, verbose=Mode.AUTO, *, unit_name="step",
            stateful_metrics=None, stream=None, clock=time.monotonic):
  """A progress reporter with ``keras.utils.Progbar``'s ``update`` / ``add``.

  Args:
    target: the total count, or None when unknown.
    verbose: a ``Mode`` (or 0, 1, True, False).
    unit_name: what is counted, e.g. "step" or "image".
    stateful_metrics: names of the metrics shown as given; the others are
      averaged over the counts, as the bar averages them.
    stream: where plain lines go, and whose being a terminal picks the bar
      under ``AUTO`` (default: ``sys.stdout``, where the bar always draws).
    clock: seconds, for the plain lines' times.

  Returns:
    A ``keras.utils.Progbar`` (silent under ``OFF``), or a ``Lines``.
  """
  mode = Mode(verbose)
  stream = sys.stdout if stream is None else stream
  if mode == Mode.AUTO and not _is_terminal(stream):
    return Lines(target, unit_name=unit_name,
                 stateful_metrics=stateful_metrics, stream=stream,
                 clock=clock)
  return keras.utils.Progbar(target, verbose=int(mode != Mode.OFF),
                             unit_name=unit_name,
                             stateful_metrics=stateful_metrics)


def _is_terminal(stream):
  try:
    return stream.isatty()
  except (AttributeError, ValueError):
    # No isatty, or a closed stream: not a terminal either way.
    return False


class Lines:
  """Progress as complete plain lines, for stdout that is not a terminal.

  A line reads e.g. ``image 300/1000 (30%) - 12s elapsed - 40ms/image -
  robust: 0.5100``: the count, the share of the total, the time since the
  reporter was made, the time per unit and the metrics. The time per unit is
  measured from the first update on, so that a loop that updates after each
  batch leaves the first batch's tracing and compilation out of it; it is
  left out of the lines until a later update.
  """

  def __init__(self, target, *, unit_name="step", stateful_metrics=None,
               stream=None, clock=time.monotonic):
    """Starts the clock; prints nothing yet (see ``progbar``'s arguments)."""
    self._target = target
    self._unit = unit_name
    self._stateful = set(stateful_metrics or ())
    self._stream = sys.stdout if stream is None else stream
    self._clock = clock
    self._start = clock()
    self._seen = 0
    # Name -> [weighted sum, weight], in the order first given.
    self._values = {}
    self._first = None
    self._last_line = (0, self._start)

  def update(self, current, values=None, finalize=None):
    """Records the count ``current`` and prints a line when one is due.

    Args:
      current: the count reached.
      values: ``(name, value)`` pairs of metrics at this count.
      finalize: whether this is the last update, which always prints
        (default: ``current`` reached the target).
    """
    if finalize is None:
      finalize = self._target is not None and current >= self._target
    for name, value in values or ():
      if name in self._stateful or finalize:
        # As the bar does: a final value is taken as the whole average.
        self._values[name] = [value, 1]
      else:
        weight = max(current - self._seen, 1)
        total = self._values.setdefault(name, [0.0, 0])
        total[0] += value * weight
        total[1] += weight
    self._seen = current
    now = self._clock()
    if self._first is None:
      self._first = (current, now)
    count, when = self._last_line
    # In whole counts: a float tenth of the total (0.1 * 30) can exceed it.
    if (finalize or now - when >= LINE_SECONDS
        or (self._target and (current - count) * LINES_PER_TOTAL
            >= self._target)):
      self._stream.write(self._line(current, now) + "\n")
      self._stream.flush()
      self._last_line = (current, now)

  def add(self, n, values=None):
    """Adds ``n`` to the count (see ``update``)."""
    self.update(self._seen + n, values)

  def _line(self, current, now):
    if self._target:
      parts = [f"{self._unit} {current}/{self._target} "
               f"({int(100 * current / self._target)}%)"]
    else:
      parts = [f"{self._unit} {current}"]
    parts.append(f"{_duration(now - self._start)} elapsed")
    first_count, first_time = self._first
    if current > first_count:
      parts.append(_per_unit((now - first_time) / (current - first_count),
                             self._unit))
    for name, (total, weight) in self._values.items():
      average = total / max(weight, 1)
      parts.append(f"{name}: {average:.4f}" if abs(average) > 1e-3
                   else f"{name}: {average:.4e}")
    return " - ".join(parts)


def _duration(seconds):
  """Whole seconds as "42s", "3:07" or "1:02:03"."""
  seconds = int(seconds)
  hours, rest = divmod(seconds, 3600)
  minutes, seconds = divmod(rest, 60)
  if hours:
    return f"{hours}:{minutes:02d}:{seconds:02d}"
  if minutes:
    return f"{minutes}:{seconds:02d}"
  return f"{seconds}s"


def _per_unit(seconds, unit):
  """The time per unit as the bar writes it: "2s/step", "40ms/image"."""
  if seconds >= 1 or seconds == 0:
    return f"{seconds:.0f}s/{unit}"
  if seconds >= 1e-3:
    return f"{seconds * 1e3:.0f}ms/{unit}"
  return f"{seconds * 1e6:.0f}us/{unit}"
