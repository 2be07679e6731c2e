"""What the training loop does at its stops (``loop`` says when).

Files under the run folder, written by the chief worker only:
- ``checkpoints/``: the last ``keep_checkpoints`` checkpoints of the whole
  training state (model, optimizer, step, best score);
- ``best/``: the model with the best ``BEST_CRITERION``, and ``best.json``
  with its step, scores and the validation attack (only with a validation
  split);
- ``summaries/``: TensorBoard scalars, ``metrics.json``: the latest value
  of each, and ``history.json``: the values recorded at every stop, all
  written from one dictionary whose keys are both the tags and the JSON keys
  (``train_metrics``, ``val_metrics``). A resumed run keeps the history up
  to the step it resumes from, so the history is the run's as if it had
  never stopped.
Other workers of a multi-worker run take part in every save (saves are
collective) but write into a private directory that they delete at once, and
they write no summaries or JSON.

Training stops with ``errors.TrainingDiverged`` at the first stop where the
loss or the weights are not finite, before anything is saved there, so the
checkpoints on disk are all good ones.
"""

import contextlib
import os

import tensorflow as tf

from rlfat_tf import errors
from rlfat_tf import files
from rlfat_tf import progress
from rlfat_tf import runs
from rlfat_tf import strategies

HISTORY_FILE = "history.json"


def metric_key(total):
  """The metric tag of a per-step sum: "loss_ce" -> "train/loss_ce",
  "adv_correct" -> "train/adv_accuracy"; None for counters."""
  if total.startswith("loss"):
    return f"train/{total}"
  if total.endswith("_correct"):
    return f"train/{total.removesuffix('_correct')}_accuracy"
  return None


def bar_name(key):
  """A metric's name on the progress bar: "train/loss" -> "loss",
  "val/pgd_ce_accuracy" -> "val_pgd_ce_accuracy"."""
  return key.removeprefix("train/").replace("/", "_")


def train_metrics(totals, learning_rate, elapsed):
  """The training metrics of the steps of one compiled call.

  Args:
    totals: the sums over the steps (``step.TrainStep.run``).
    learning_rate: the learning rate at their end.
    elapsed: their wall-clock seconds, or None to report no speed.

  Returns:
    Dict of metrics by tag: each sum divided by the examples, the learning
    rate and, given ``elapsed``, examples per second.
  """
  n = max(totals["examples"], 1.0)
  metrics = {metric_key(k): v / n for k, v in totals.items()
             if metric_key(k)}
  metrics["train/learning_rate"] = learning_rate
  if elapsed is not None:
    metrics["train/examples_per_second"] = totals["examples"] / elapsed
  return metrics


def eval_keys(name):
  """The tags of a scored image set: its clean and its PGD accuracy."""
  return f"{name}/clean_accuracy", f"{name}/pgd_ce_accuracy"


# Validation accuracy under ``config.validation_attack`` (PGD on
# cross-entropy for every method): correct on the clean image and on its PGD
# example. Metrics, TensorBoard, best.json and the sidecar of
# ``rlfat_tf.evaluate`` all use this name.
BEST_CRITERION = eval_keys("val")[1]


def val_metrics(totals, name="val"):
  """The validation metrics of the sums of ``step.TrainStep.validate``.

  Args:
    totals: the sums over one set of images.
    name: the set's name, the metrics' prefix: "val" for the validation
      split (whose PGD score is ``BEST_CRITERION``) or a monitored set's.
  """
  n = max(totals["examples"], 1.0)
  clean, robust = eval_keys(name)
  return {clean: totals["clean_correct"] / n,
          robust: totals["adv_correct"] / n}


class Checkpoints:
  """The run's checkpoints: the latest few of the state, and the best model.

  Saves are collective: every worker saves, and only the chief's copy stays.
  The best score is a variable of the checkpoint, so a resumed run keeps
  comparing against the best of the run it resumes.

  Attributes:
    best_score: the best validation score so far (-1 before the first).
  """

  def __init__(self, model_dir, strategy, state, keep,
               before_first_save=None, criterion_attack=None):
    """Sets up the checkpoints; writes nothing.

    Args:
      model_dir: the run folder.
      strategy: the ``tf.distribute.Strategy`` the state lives under.
      state: the trackables a checkpoint holds, by name; ``model`` is also
        what the best checkpoint holds.
      keep: most recent checkpoints kept.
      before_first_save: called on the chief just before the first save of
        either kind, or None.
      criterion_attack: the validation attack behind ``BEST_CRITERION`` as
        ``best.json`` records it (``pgd.AttackSpec.record``), or None.
    """
    self._criterion_attack = criterion_attack
    self._model_dir = model_dir
    self._strategy = strategy
    self._before_first_save = (before_first_save
                               if strategies.is_chief(strategy) else None)
    with strategy.scope():
      self.best_score = tf.Variable(-1.0, trainable=False,
                                    name="best_val_score")
    self._checkpoint = tf.train.Checkpoint(best_score=self.best_score,
                                           **state)
    write_dir = strategies.write_dir(model_dir, strategy)
    self._manager = tf.train.CheckpointManager(
        self._checkpoint, os.path.join(write_dir, "checkpoints"),
        max_to_keep=keep)
    self._best_manager = tf.train.CheckpointManager(
        tf.train.Checkpoint(model=state["model"]),
        os.path.join(write_dir, "best"), max_to_keep=1)

  @property
  def latest(self):
    """The chief's latest checkpoint on disk, or None."""
    return tf.train.latest_checkpoint(
        os.path.join(self._model_dir, "checkpoints"))

  def restore(self):
    """Restores the chief's newest intact checkpoint, if any, on every worker.

    A damaged newer checkpoint is skipped with a warning
    (``runs.checkpoint_path``).

    Returns:
      The checkpoint's path, or None when there is none.

    Raises:
      errors.UserError: every checkpoint is damaged.
    """
    path = runs.checkpoint_path(self._model_dir, required=False)
    if path is not None:
      # Checkpoints may also hold objects this run does not track (an input
      # iterator, another precision's loss scale).
      self._checkpoint.restore(path).expect_partial()
    return path

  def save(self, step):
    """Saves the state as the checkpoint of ``step``."""
    self._save(self._manager, step)

  def offer_best(self, step, val):
    """Keeps the model as the best when it beats the best score so far.

    Args:
      step: the current step.
      val: the metrics scored at this step, by tag (``val_metrics`` of the
      validation split and of any monitored set).

    Returns:
      Whether it was the best: it was then saved under ``best/``, and the
      chief wrote ``best.json`` with ``step``, the criterion, its
      ``attack`` (when given) and ``val``. Never, without a validation
      split.
    """
    if BEST_CRITERION not in val:
      return False
    score = val[BEST_CRITERION]
    if score <= float(self.best_score.numpy()):
      return False
    self.best_score.assign(score)
    self._save(self._best_manager, step)
    if strategies.is_chief(self._strategy):
      attack = ({"attack": self._criterion_attack}
                if self._criterion_attack else {})
      files.write_json(os.path.join(self._model_dir, "best.json"),
                       {"step": step, "criterion": BEST_CRITERION,
                        **attack, **val})
    return True

  def _save(self, manager, step):
    if self._before_first_save:
      self._before_first_save()
      self._before_first_save = None
    manager.save(checkpoint_number=step)
    strategies.discard_writes(self._model_dir, self._strategy)


def check_finite(step, loss_finite, weights_finite, last_checkpoint):
  """Stops training at a NaN or Inf loss or weight.

  Args:
    step: the step reached.
    loss_finite: whether every loss so far was finite.
    weights_finite: ``() -> bool``, whether the weights are; asked only when
      the loss was.
    last_checkpoint: the last checkpoint saved, or None.

  Raises:
    errors.TrainingDiverged: either was not finite.
  """
  # A finite loss can still come with an update that overflows the weights,
  # so they are checked too before anything is saved.
  if not (loss_finite and weights_finite()):
    raise errors.TrainingDiverged(
        f"the loss or weights became NaN or Inf by step {step}; training "
        f"stopped and the last good checkpoint ({last_checkpoint or 'none yet'})"
        f" is intact: lower --learning_rate or check the data, then rerun to "
        f"resume")


@contextlib.contextmanager
def worker_loss_as_user_error(last_checkpoint):
  """Turns the loss of another worker into a ``UserError`` naming the fix.

  A multi-worker run cannot go on without one of its workers; TensorFlow
  aborts the collectives on the survivors with ``UnavailableError``.

  Args:
    last_checkpoint: ``() -> path or None``, the run's last checkpoint.

  Raises:
    errors.UserError: the body lost contact with another worker.
  """
  try:
    yield
  except tf.errors.UnavailableError:
    raise errors.UserError(
        f"lost contact with another worker of the cluster; the last "
        f"checkpoint ({last_checkpoint() or 'none yet'}) is intact: restart "
        f"every worker with the same command to resume from it") from None


class Actions:
  """The actions of one training loop (see ``loop.Loop``).

  Attributes:
    latest: the latest value of every metric recorded, by tag.
  """

  def __init__(self, model_dir, strategy, checkpoints, train_steps,
               total_keys, learning_rate, weights_finite, verbose,
               eval_sets=()):
    """Opens the summaries (on the chief) and the progress bar.

    Args:
      model_dir: the run folder.
      strategy: the ``tf.distribute.Strategy`` of the run.
      checkpoints: the run's ``Checkpoints``.
      train_steps: the step at which training ends.
      total_keys: names of the per-step sums (``step.TrainStep.total_keys``).
      learning_rate: ``() -> float``, the current learning rate.
      weights_finite: ``() -> bool``, whether the weights are finite.
      verbose: how the chief shows progress, a ``progress.Mode`` (1: a bar
        on a terminal, plain lines otherwise; 2: the bar; 0: nothing).
      eval_sets: names of the image sets scored at validation steps
        (``val_metrics``).
    """
    chief = strategies.is_chief(strategy)
    self._metrics_path = (os.path.join(model_dir, "metrics.json") if chief
                          else None)
    self._history_path = (os.path.join(model_dir, HISTORY_FILE) if chief
                          else None)
    self._history = []
    self._writer = (tf.summary.create_file_writer(
        os.path.join(model_dir, "summaries")) if chief
                    else tf.summary.create_noop_writer())
    self._checkpoints = checkpoints
    self._train_steps = train_steps
    self._learning_rate = learning_rate
    self._weights_finite = weights_finite
    names = (["train/examples_per_second"]
             + [k for name in eval_sets for k in eval_keys(name)]
             + list(filter(None, map(metric_key, total_keys))))
    # Every value shown is already an average over its loop, so none is
    # averaged again by the bar.
    self._progbar = progress.progbar(
        train_steps, verbose=verbose if chief else progress.Mode.OFF,
        unit_name="step", stateful_metrics=[bar_name(k) for k in names])
    self.latest = {}

  def start(self, step):
    """Reads the history up to ``step`` and shows the step on the bar.

    Raises:
      errors.UserError: the history file is damaged.
    """
    if self._history_path and tf.io.gfile.exists(self._history_path):
      self._history = [entry for entry in runs.read_json(self._history_path)
                       if entry["step"] <= step]
    self._progbar.update(step)

  def check_finite(self, step, totals):
    """Raises ``errors.TrainingDiverged`` after a NaN or Inf (see
    ``check_finite``)."""
    check_finite(step, totals["nonfinite"] == 0, self._weights_finite,
                 self._checkpoints.latest)

  def train_metrics(self, totals, elapsed):
    """The training metrics of a call's sums (see ``train_metrics``)."""
    return train_metrics(totals, self._learning_rate(), elapsed)

  def offer_best(self, step, val):
    """Keeps the best model (see ``Checkpoints.offer_best``)."""
    self._checkpoints.offer_best(step, val)

  def save(self, step):
    """Saves a checkpoint of ``step``."""
    self._checkpoints.save(step)

  def record(self, step, metrics):
    """Writes the metrics of a stop: summaries, ``metrics.json``, the bar.

    Args:
      step: the step reached.
      metrics: the metrics measured at this stop, by tag.
    """
    self.latest.update(metrics)
    with self._writer.as_default(step=step):
      for key, value in metrics.items():
        tf.summary.scalar(key, value)
    self._writer.flush()
    if self._metrics_path:
      files.write_json(self._metrics_path, {"step": step, **self.latest})
      self._history.append({"step": step, **metrics})
      files.write_json(self._history_path, self._history)
    self._progbar.update(step, [(bar_name(k), v) for k, v in metrics.items()
                                if k != "train/learning_rate"],
                         finalize=step >= self._train_steps)
