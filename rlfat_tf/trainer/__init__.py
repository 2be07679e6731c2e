"""The adversarial-training loop, in three parts put together by ``Trainer``.

- ``step``: the compiled step (attack, RBS, forward passes, objective,
  update) and the ``tf.function`` that runs ``steps_per_loop`` of them;
- ``loop``: when the host acts between calls (checkpoints, validation,
  summaries, a requested stop);
- ``actions``: what it does then (checkpoints, the best model, summaries and
  ``metrics.json``, the progress bar, stopping on NaN).
``config`` holds the run's hyper-parameters and builds its optimizer.

A ``Trainer`` writes nothing into its run folder until ``train`` is called,
so a caller can take the folder (say, lock it) around ``restore`` and
``train``.
"""

import tensorflow as tf

from rlfat_tf import errors
from rlfat_tf import strategies
from rlfat_tf.trainer import actions
from rlfat_tf.trainer import config as config_lib
from rlfat_tf.trainer import loop
from rlfat_tf.trainer import step as step_lib

OPTIMIZERS = config_lib.OPTIMIZERS
PRECISIONS = config_lib.PRECISIONS
TrainConfig = config_lib.TrainConfig
build_optimizer = config_lib.build_optimizer
validation_attack = config_lib.validation_attack
VAL_PGD_KEY = actions.BEST_CRITERION


class Trainer:
  """Trains a model with one of the methods of ``methods``.

  The files it writes under ``model_dir`` are listed in ``actions``; a
  checkpoint holds the model, the optimizer, the number of steps run and the
  best validation score, and the input stream is rebuilt from the step (see
  ``step``).

  Attributes:
    config: the ``TrainConfig``.
    strategy: the ``tf.distribute.Strategy`` it runs under.
    is_chief: whether this process writes the run's files.
    model: the Keras model.
    train_step: the ``step.TrainStep``.
    checkpoints: the ``actions.Checkpoints``.
  """

  def __init__(self, config, model_fn, train_input_fn, model_dir,
               strategy=None, val_input_fn=None, monitor_input_fns=None,
               verbose=1,
               before_first_save=None, stop_requested=loop.never):
    """Builds the model, optimizer, compiled loops and checkpoints.

    Args:
      config: a ``TrainConfig``.
      model_fn: builds the Keras model (called in the strategy's scope and
        under ``config.mixed_precision``'s dtype policy).
      train_input_fn: ``(input_context, step) -> tf.data.Dataset`` of the
        training batches from global step ``step`` on (``data.train_dataset``
        with ``start=step * batch_size``).
      model_dir: directory of checkpoints, summaries and results.
      strategy: a ``tf.distribute.Strategy`` (default: the current one).
      val_input_fn: ``input_context -> tf.data.Dataset`` of validation
        batches (``data.eval_dataset``), or None for no validation.
      monitor_input_fns: ``{name: input_fn}`` of more image sets scored like
        the validation split at every validation step (``name/`` metrics),
        but never used to choose the best model; e.g. training and test
        images, whose curves show the generalization gap.
      verbose: how the chief shows progress, a ``progress.Mode`` (1: a bar
        on a terminal, plain lines otherwise; 2: the bar; 0: nothing).
      before_first_save: called on the chief just before this trainer saves
        its first checkpoint (``rlfat_tf.train`` writes the run record then,
        so that only a run with a checkpoint has one), or None.
      stop_requested: ``() -> bool``, asked on every worker after each
        compiled call short of the end; True saves a checkpoint and ends
        ``train`` early (see ``loop``). It must answer the same on every
        worker. Default: never.

    Raises:
      errors.UserError: the batch does not split across the replicas, or the
        model's synchronised BatchNorm cannot run under XLA here.
    """
    inputs = dict(monitor_input_fns or {})
    # Before the model is built: "val" names the validation split's metrics.
    if "val" in inputs:
      raise ValueError("a monitored set may not be called 'val'")
    self.config = config
    self.model_dir = model_dir
    self.strategy = strategy or tf.distribute.get_strategy()
    strategies.check_batch_size(config.batch_size, self.strategy)
    self.is_chief = strategies.is_chief(self.strategy)
    self._verbose = verbose
    self._stop_requested = stop_requested
    self.train_step = step_lib.TrainStep(config, model_fn, train_input_fn,
                                         self.strategy)
    self.model = self.train_step.model
    if val_input_fn:
      inputs = {"val": val_input_fn, **inputs}
    self._eval_datasets = {
        name: self.strategy.distribute_datasets_from_function(fn)
        for name, fn in inputs.items()}
    self.checkpoints = actions.Checkpoints(
        model_dir, self.strategy, self.train_step.state(),
        config.keep_checkpoints, before_first_save,
        criterion_attack=config.validation_attack_spec().record())

  @property
  def step(self):
    """Training steps run so far (batches consumed)."""
    return self.train_step.step

  def restore(self):
    """Restores the latest checkpoint of the chief, if any.

    Every worker restores the chief's checkpoint, so all of them resume from
    the same state.

    Returns:
      The checkpoint's path, or None when there is none.

    Raises:
      errors.UserError: the checkpoint is past ``config.train_steps``.
    """
    path = self.checkpoints.restore()
    if path is None:
      return None
    self.train_step.resume(path)
    if self.step > self.config.train_steps:
      raise errors.UserError(
          f"{path} is at step {self.step}, past --train_steps="
          f"{self.config.train_steps}: pass --train_steps={self.step} or more "
          f"to resume it, or a new --model_dir")
    return path

  def run_steps(self, num_steps):
    """Runs up to ``num_steps`` training steps in one compiled call.

    Nothing is logged or saved; ``train`` is built on this, and benchmarks
    time it. See ``step.TrainStep.run``.
    """
    return self.train_step.run(num_steps)

  def validate(self):
    """Clean accuracy and ``VAL_PGD_KEY`` on the validation split, and the
    same two scores of every monitored set under its own name."""
    metrics = {}
    for name, dataset in self._eval_datasets.items():
      metrics.update(actions.val_metrics(self.train_step.validate(dataset),
                                         name))
    return metrics

  def train(self):
    """Trains until ``config.train_steps`` or a requested stop.

    Returns:
      A ``loop.Result``: the step reached, the latest metrics by tag, and
      whether a requested stop ended it early.

    Raises:
      errors.TrainingDiverged: the loss became NaN or Inf. The checkpoints on
        disk are those written before the bad step.
      errors.UserError: another worker of a multi-worker run stopped.
    """
    config = self.config
    validation = bool(self._eval_datasets)
    with actions.worker_loss_as_user_error(
        lambda: self.checkpoints.latest):
      acts = actions.Actions(
          self.model_dir, self.strategy, self.checkpoints, config.train_steps,
          self.train_step.total_keys(), self.train_step.learning_rate,
          self.train_step.weights_finite, self._verbose,
          eval_sets=tuple(self._eval_datasets))
      cadence = loop.Cadence(
          config.train_steps, config.steps_per_loop, config.checkpoint_every,
          config.eval_every if validation else None)
      return loop.Loop(cadence, self.run_steps, acts,
                       validate=self.validate if validation else None,
                       stop_requested=self._stop_requested).run(self.step)
