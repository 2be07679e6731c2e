"""When the host acts between compiled calls of the training step.

The compiled step (``step``) runs many steps per call; the host wakes at
*stops*. A stop comes after at most ``steps_per_loop`` steps, at every
multiple of ``checkpoint_every`` and of ``eval_every``, and at
``train_steps``, where a call is cut short to land on it. The multiples count
from step 0, so a run resumed at any step keeps the stops of the run it
resumes. At every stop the loop checks that training is still finite and
records the metrics of the steps just run (summaries, ``metrics.json``, the
progress bar); at a multiple of ``eval_every`` it validates and offers the
model as the best, and at a multiple of ``checkpoint_every`` it saves a
checkpoint, after recording. The final step does all of these. What each
action does is in ``actions``; this module only says when, and imports no
TensorFlow.

A run can be stopped early: after each stop short of the end the loop asks
``stop_requested``, and when it answers yes, saves a checkpoint there and
returns a ``Result`` marked ``preempted``. Under a multi-worker strategy the
callable must give every worker the same answer, since checkpoint saves are
collective.
"""

import dataclasses
import time


@dataclasses.dataclass(frozen=True)
class Stop:
  """A step at which the host acts; metrics are recorded at every stop.

  Attributes:
    step: the global step reached.
    evaluate: validate there (and offer the model as the best).
    checkpoint: save a checkpoint there.
  """
  step: int
  evaluate: bool
  checkpoint: bool


@dataclasses.dataclass(frozen=True)
class Cadence:
  """How often the host acts.

  Attributes:
    train_steps: the step at which training ends.
    steps_per_loop: most steps per compiled call.
    checkpoint_every: steps between checkpoints.
    eval_every: steps between validations, or None for no validation.
  """
  train_steps: int
  steps_per_loop: int
  checkpoint_every: int
  eval_every: int | None = None

  def stops(self, start):
    """The stops of a run from step ``start`` on, in order.

    Args:
      start: the step training starts from (a resumed run's step).

    Yields:
      ``Stop``s, the last at ``train_steps`` (none when ``start`` is there).
    """
    every = [self.checkpoint_every]
    if self.eval_every is not None:
      every.append(self.eval_every)
    step = start
    while step < self.train_steps:
      step = min([self.train_steps, step + self.steps_per_loop]
                 + [_next_multiple(step, n) for n in every])
      yield Stop(step,
                 evaluate=(self.eval_every is not None
                           and self._due(step, self.eval_every)),
                 checkpoint=self._due(step, self.checkpoint_every))

  def _due(self, step, every):
    return step % every == 0 or step == self.train_steps


def _next_multiple(step, every):
  """The first multiple of ``every`` after ``step``."""
  return (step // every + 1) * every


def never():
  """The default ``stop_requested``: no stop is ever requested."""
  return False


@dataclasses.dataclass(frozen=True)
class Result:
  """How a training loop ended.

  Attributes:
    step: the step reached.
    metrics: the latest value of every metric recorded, by tag.
    preempted: whether it stopped early because a stop was requested (its
      last checkpoint is at ``step``).
  """
  step: int
  metrics: dict
  preempted: bool


class Loop:
  """Runs the compiled steps from stop to stop and acts at each.

  The actions object (``actions.Actions``, or a stand-in in tests) provides:
  ``start(step)``; ``check_finite(step, totals)``, which raises to stop
  training; ``train_metrics(totals, elapsed)`` (``elapsed`` None for the
  first call, whose time includes tracing and compilation); ``offer_best(step,
  val)``; ``save(step)``; ``record(step, metrics)``; and ``latest``, the last
  value of every metric recorded.
  """

  def __init__(self, cadence, run_steps, actions, validate=None,
               stop_requested=never):
    """Sets up the loop.

    Args:
      cadence: a ``Cadence``; its ``eval_every`` must be None when
        ``validate`` is.
      run_steps: ``n -> (totals, done)``, runs up to n steps (see
        ``step.TrainStep.run``).
      actions: what is done at the stops (see the class docstring).
      validate: ``() -> dict`` of validation metrics by tag, or None.
      stop_requested: ``() -> bool``, asked after every stop short of the
        end, on every worker; True saves a checkpoint and returns early.
    """
    self._cadence = cadence
    self._run_steps = run_steps
    self._actions = actions
    self._validate = validate
    self._stop_requested = stop_requested

  def run(self, start):
    """Trains from step ``start`` to the end or to a requested stop.

    Returns:
      A ``Result``.

    Raises:
      Whatever ``actions.check_finite`` raises (``errors.TrainingDiverged``),
      before anything is saved at that stop.
    """
    actions = self._actions
    actions.start(start)
    step = start
    first_call = True
    for stop in self._cadence.stops(start):
      begin = time.perf_counter()
      totals, done = self._run_steps(stop.step - step)
      elapsed = None if first_call else time.perf_counter() - begin
      first_call = False
      step += done
      actions.check_finite(step, totals)
      metrics = actions.train_metrics(totals, elapsed)
      if stop.evaluate:
        val = self._validate()
        metrics.update(val)
        actions.offer_best(step, val)
      preempted = step < self._cadence.train_steps and self._stop_requested()
      # Recorded before the save: a checkpoint never lacks its stop in the
      # history that a run resumed from it keeps.
      actions.record(step, metrics)
      if stop.checkpoint or preempted:
        actions.save(step)
      if preempted:
        return Result(step, dict(actions.latest), preempted=True)
    return Result(step, dict(actions.latest), preempted=False)
