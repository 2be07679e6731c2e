"""The compiled adversarial-training loop.

One replica step runs the method's attack, applies the batch's Random Block
Shuffle to the adversarial example, runs the forward passes the objective
reads, and applies the update. An outer ``tf.function`` runs many steps per
call through ``strategy.run``, so the host only wakes up to log, validate and
checkpoint. Everything is built under a ``tf.distribute`` strategy (the
default one on a single device), with the loss averaged over the global batch.

The checkpoint holds the model, the optimizer (whose ``iterations`` is the
step), the input iterator (which carries every random choice, see ``data``)
and the best validation score, so a killed run resumes where it stopped.
"""

import dataclasses
import json
import os
import time

import keras
import tensorflow as tf

from rlfat_tf import attacks
from rlfat_tf import errors
from rlfat_tf import objectives
from rlfat_tf import rbs

OPTIMIZERS = ("adam", "sgd")
SUM = tf.distribute.ReduceOp.SUM


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Hyper-parameters of a training run (defaults: the official code's).

  Attributes:
    method: key of ``objectives.METHODS``.
    epsilon: L-infinity radius of the training attack.
    step_size: step of the training attack.
    attack_steps: steps of the training attack.
    attack_bn_mode: BatchNorm mode while the training attack runs.
    trades_beta: weight of the KL term.
    eta: weight of the transfer term (None: the method's default).
    batch_size: global batch size.
    train_steps: total optimizer steps.
    steps_per_loop: steps run by one call of the compiled loop.
    optimizer: "adam" or "sgd" (with momentum).
    learning_rate: initial learning rate.
    momentum: SGD momentum.
    weight_decay: decoupled weight decay on kernels (Keras optimizers'
      ``weight_decay``); BatchNorm parameters and biases are excluded.
    lr_boundaries: steps at which the learning rate is multiplied by
      ``lr_decay``.
    lr_decay: factor applied at each boundary.
    checkpoint_every: steps between checkpoints.
    keep_checkpoints: most recent checkpoints kept.
    eval_every: steps between validations (when there is a validation split).
    jit_compile: compile the replica step with XLA.
  """
  method: str
  epsilon: float = 0.03
  step_size: float = 0.0075
  attack_steps: int = 10
  attack_bn_mode: str = "train"
  trades_beta: float = 6.0
  eta: float | None = None
  batch_size: int = 32
  train_steps: int = 79_800
  steps_per_loop: int = 100
  optimizer: str = "adam"
  learning_rate: float = 1e-3
  momentum: float = 0.9
  weight_decay: float = 0.0
  lr_boundaries: tuple[int, ...] = ()
  lr_decay: float = 0.1
  checkpoint_every: int = 1000
  keep_checkpoints: int = 3
  eval_every: int = 1000
  jit_compile: bool = False

  @property
  def method_spec(self):
    return objectives.METHODS[self.method]

  @property
  def resolved_eta(self):
    return self.method_spec.default_eta if self.eta is None else self.eta

  def attack_spec(self, bn_mode=None):
    """The method's training attack (or a copy in another BN mode)."""
    build = (attacks.trades_kl if self.method_spec.attack_loss == "kl"
             else attacks.pgd)
    return build(self.epsilon, self.step_size, self.attack_steps,
                 bn_mode or self.attack_bn_mode)


def build_optimizer(config):
  """The optimizer and learning-rate schedule of ``config``."""
  lr = config.learning_rate
  if config.lr_boundaries:
    lr = keras.optimizers.schedules.PiecewiseConstantDecay(
        list(config.lr_boundaries),
        [config.learning_rate * config.lr_decay**i
         for i in range(len(config.lr_boundaries) + 1)])
  wd = config.weight_decay or None
  if config.optimizer == "adam":
    optimizer = keras.optimizers.Adam(lr, weight_decay=wd)
  elif config.optimizer == "sgd":
    optimizer = keras.optimizers.SGD(lr, momentum=config.momentum,
                                     weight_decay=wd)
  else:
    raise ValueError(f"unknown optimizer {config.optimizer!r}")
  if wd:
    optimizer.exclude_from_weight_decay(var_names=["gamma", "beta", "bias"])
  return optimizer


def _write_json(path, payload):
  """Writes JSON atomically, so a kill never leaves half a file."""
  tmp = f"{path}.tmp"
  with tf.io.gfile.GFile(tmp, "w") as f:
    json.dump(payload, f, indent=2, sort_keys=True)
  tf.io.gfile.rename(tmp, path, overwrite=True)


class Trainer:
  """Trains a model with one of the methods of ``objectives``.

  Files under ``model_dir``:
  - ``checkpoints/``: the last ``keep_checkpoints`` full checkpoints;
  - ``best/``: the model with the best validation PGD accuracy, and
    ``best.json`` with its step and scores (only with a validation split);
  - ``summaries/``: TensorBoard scalars, tagged by the keys of ``metrics``;
  - ``metrics.json``: the latest value of every tag.
  """

  def __init__(self, config, model_fn, train_input_fn, model_dir,
               strategy=None, val_input_fn=None, verbose=1):
    """Builds the model, optimizer, input iterator and checkpoint.

    Args:
      config: a ``TrainConfig``.
      model_fn: builds the Keras model (called in the strategy's scope).
      train_input_fn: ``input_context -> tf.data.Dataset`` of training
        batches (``data.train_dataset``).
      model_dir: directory of checkpoints, summaries and results.
      strategy: a ``tf.distribute.Strategy`` (default: the current one).
      val_input_fn: ``input_context -> tf.data.Dataset`` of validation
        batches (``data.eval_dataset``), or None for no validation.
      verbose: 1 shows a progress bar, 0 is silent.
    """
    self.config = config
    self.method = config.method_spec
    self.model_dir = model_dir
    self.strategy = strategy or tf.distribute.get_strategy()
    self.verbose = verbose
    with self.strategy.scope():
      self.model = model_fn()
      self.optimizer = build_optimizer(config)
      self.optimizer.build(self.model.trainable_variables)
      self.best_score = tf.Variable(-1.0, trainable=False,
                                    name="best_val_score")
    self.iterator = iter(
        self.strategy.distribute_datasets_from_function(train_input_fn))
    self.val_dataset = (
        self.strategy.distribute_datasets_from_function(val_input_fn)
        if val_input_fn else None)
    self.checkpoint = tf.train.Checkpoint(
        model=self.model, optimizer=self.optimizer, iterator=self.iterator,
        best_score=self.best_score)
    self.manager = tf.train.CheckpointManager(
        self.checkpoint, os.path.join(model_dir, "checkpoints"),
        max_to_keep=config.keep_checkpoints)
    self.best_manager = tf.train.CheckpointManager(
        tf.train.Checkpoint(model=self.model),
        os.path.join(model_dir, "best"), max_to_keep=1)
    self._train_loop = self._build_train_loop()
    self._eval_loop = self._build_eval_loop() if self.val_dataset else None
    self.metrics = {}

  @property
  def step(self):
    return int(self.optimizer.iterations.numpy())

  def restore(self):
    """Restores the latest checkpoint, if any; returns its path or None."""
    return self.manager.restore_or_initialize()

  # Replica functions --------------------------------------------------------

  def _train_step(self, batch):
    config, method, model = self.config, self.method, self.model
    images, labels = batch["image"], batch["label"]
    adv = attacks.perturb(model, config.attack_spec(), images, labels,
                          batch["seed"])
    inputs = {"clean": images, "adv": adv}
    if method.uses_rbs:
      inputs["rbs"] = rbs.apply(adv, batch["rbs_rows"], batch["rbs_cols"])
    with tf.GradientTape() as tape:
      logits = {p: model(inputs[p], training=True) for p in method.passes}
      terms = objectives.compute(method, logits, labels, config.trades_beta,
                                 config.resolved_eta)
      loss = tf.nn.compute_average_loss(terms["total"],
                                        global_batch_size=config.batch_size)
    grads = tape.gradient(loss, model.trainable_variables)
    self.optimizer.apply_gradients(zip(grads, model.trainable_variables))
    # Accuracy on x and x' is always reported; a pass the objective does not
    # read runs in inference mode, so it neither trains nor moves BN stats.
    for p in ("clean", "adv"):
      if p not in logits:
        logits[p] = model(inputs[p], training=False)
    out = {f"loss_{k}" if k != "total" else "loss": tf.reduce_sum(v)
           for k, v in terms.items()}
    for p, z in logits.items():
      out[f"{p}_correct"] = _count_correct(z, labels)
    out["examples"] = tf.cast(tf.shape(labels)[0], tf.float32)
    out["nonfinite"] = tf.cast(
        tf.logical_not(tf.math.is_finite(loss)), tf.float32)
    return out

  def _eval_step(self, batch):
    images, labels = batch["image"], batch["label"]
    adv = attacks.perturb(self.model, self.config.attack_spec("eval"), images,
                          labels, batch["seed"])
    return {
        "clean_correct": _count_correct(self.model(images, training=False),
                                        labels),
        "adv_correct": _count_correct(self.model(adv, training=False),
                                      labels),
        "examples": tf.cast(tf.shape(labels)[0], tf.float32),
    }

  # Compiled loops -----------------------------------------------------------

  def _build_train_loop(self):
    step_fn = self._train_step
    if self.config.jit_compile:
      step_fn = tf.function(step_fn, jit_compile=True)
    strategy = self.strategy
    keys = self._train_keys()

    @tf.function
    def loop(iterator, num_steps):
      totals = {k: tf.constant(0.0) for k in keys}
      steps = tf.constant(0)
      for _ in tf.range(num_steps):
        out = strategy.run(step_fn, args=(next(iterator),))
        totals = {k: totals[k] + strategy.reduce(SUM, out[k], axis=None)
                  for k in keys}
        steps += 1
        # Stop at the first bad step: nothing after it is worth computing,
        # and the caller must not checkpoint the damaged weights.
        if totals["nonfinite"] > 0:
          break
      return totals, steps

    return loop

  def _build_eval_loop(self):
    strategy = self.strategy

    @tf.function
    def loop(dataset):
      totals = {k: tf.constant(0.0)
                for k in ("clean_correct", "adv_correct", "examples")}
      for batch in dataset:
        out = strategy.run(self._eval_step, args=(batch,))
        totals = {k: totals[k] + strategy.reduce(SUM, out[k], axis=None)
                  for k in totals}
      return totals

    return loop

  @tf.function
  def _weights_finite(self):
    return tf.reduce_all([tf.reduce_all(tf.math.is_finite(v))
                          for v in self.model.variables])

  def _train_keys(self):
    terms = ["loss", "loss_ce"]
    if self.method.kl_pass:
      terms.append("loss_kl")
    if self.method.has_transfer:
      terms.append("loss_transfer")
    passes = sorted(set(self.method.passes) | {"clean", "adv"})
    return (terms + [f"{p}_correct" for p in passes]
            + ["examples", "nonfinite"])

  def _metric_names(self):
    names = ["examples_per_second", "clean_accuracy", "pgd_accuracy"]
    for key in self._train_keys():
      if key.startswith("loss"):
        names.append(key)
      elif key.endswith("_correct"):
        names.append(key[:-len("_correct")] + "_accuracy")
    return names

  # Host loop ----------------------------------------------------------------

  def validate(self):
    """Clean and PGD accuracy on the validation split (BN in eval mode)."""
    totals = {k: float(v) for k, v in self._eval_loop(self.val_dataset).items()}
    n = max(totals["examples"], 1.0)
    return {"val/clean_accuracy": totals["clean_correct"] / n,
            "val/pgd_accuracy": totals["adv_correct"] / n}

  def _summarise(self, totals, elapsed, first_call):
    n = max(totals["examples"], 1.0)
    metrics = {}
    for key, value in totals.items():
      if key.startswith("loss"):
        metrics[f"train/{key}"] = value / n
      elif key.endswith("_correct"):
        metrics[f"train/{key[:-len('_correct')]}_accuracy"] = value / n
    metrics["train/learning_rate"] = float(
        keras.ops.convert_to_numpy(self.optimizer.learning_rate))
    # The first call includes tracing and compilation: its rate is not the
    # training speed.
    if not first_call:
      metrics["train/examples_per_second"] = totals["examples"] / elapsed
    return metrics

  def _next_stop(self, step):
    """The next step at which the host must act."""
    config = self.config
    stops = [config.train_steps, step + config.steps_per_loop,
             (step // config.checkpoint_every + 1) * config.checkpoint_every]
    if self._eval_loop:
      stops.append((step // config.eval_every + 1) * config.eval_every)
    return min(stops)

  def _save_best(self, step, val):
    score = val["val/pgd_accuracy"]
    if score <= float(self.best_score.numpy()):
      return
    self.best_score.assign(score)
    self.best_manager.save(checkpoint_number=step)
    _write_json(os.path.join(self.model_dir, "best.json"),
                {"step": step, "criterion": "val/pgd_accuracy", **val})

  def train(self):
    """Trains until ``config.train_steps``; returns the final metrics.

    Raises:
      errors.TrainingDiverged: the loss became NaN or Inf. The checkpoints on
        disk are those written before the bad step.
    """
    config = self.config
    writer = tf.summary.create_file_writer(
        os.path.join(self.model_dir, "summaries"))
    step = self.step
    # Every value shown is already an average over its loop, so none is
    # averaged again by the bar.
    progbar = keras.utils.Progbar(
        config.train_steps, verbose=self.verbose, unit_name="step",
        stateful_metrics=self._metric_names())
    progbar.update(step)
    first_call = True
    while step < config.train_steps:
      num_steps = self._next_stop(step) - step
      start = time.perf_counter()
      totals, done = self._train_loop(self.iterator, tf.constant(num_steps))
      totals = {k: float(v) for k, v in totals.items()}
      elapsed = time.perf_counter() - start
      step += int(done)
      # A finite loss can still come with an update that overflows the
      # weights, so they are checked too before anything is saved.
      if totals["nonfinite"] > 0 or not bool(self._weights_finite()):
        last = self.manager.latest_checkpoint or "none yet"
        raise errors.TrainingDiverged(
            f"the loss or weights became NaN or Inf by step {step}; training "
            f"stopped and the last good checkpoint ({last}) is intact: lower "
            f"--learning_rate or check the data, then rerun to resume")
      metrics = self._summarise(totals, elapsed, first_call)
      first_call = False
      if self._eval_loop and (step % config.eval_every == 0
                              or step == config.train_steps):
        val = self.validate()
        metrics.update(val)
        self._save_best(step, val)
      if step % config.checkpoint_every == 0 or step == config.train_steps:
        self.manager.save(checkpoint_number=step)
      self.metrics.update(metrics)
      with writer.as_default(step=step):
        for key, value in metrics.items():
          tf.summary.scalar(key, value)
      writer.flush()
      _write_json(os.path.join(self.model_dir, "metrics.json"),
                  {"step": step, **self.metrics})
      progbar.update(step, [(k.split("/", 1)[1], v)
                            for k, v in metrics.items()
                            if k != "train/learning_rate"],
                     finalize=step >= config.train_steps)
    return dict(self.metrics)


def _count_correct(logits, labels):
  predictions = tf.argmax(logits, axis=-1, output_type=labels.dtype)
  return tf.reduce_sum(tf.cast(tf.equal(predictions, labels), tf.float32))
