"""The compiled adversarial-training loop.

One replica step runs the method's attack, applies the batch's Random Block
Shuffle to the adversarial example, runs the forward passes the objective
reads, and applies the update. An outer ``tf.function`` runs many steps per
call through ``strategy.run``, so the host only wakes up to log, validate and
checkpoint. Everything is built under a ``tf.distribute`` strategy (the
default one on a single device, see ``strategies``), with the loss averaged
over the global batch; each replica attacks its own share of the batch, with
the per-example seeds and the RBS that travel with it.

The checkpoint holds the model, the optimizer, the number of steps run and
the best validation score. The input stream is a pure function of its start
(see ``data``), so a resumed run rebuilds it at ``step * batch_size`` instead
of restoring an iterator, which also works under strategies whose distributed
iterators cannot be saved, and for every worker of a multi-worker run.

Speed options: ``jit_compile`` compiles the gradient computation of a step
(attack, passes, loss and backward pass) with XLA; the optimizer update stays
outside it because it synchronises replicas. ``mixed_precision`` runs the
model in bfloat16 or float16 with float32 variables and logits; the attack's
input, its gradient's sign and every loss stay in float32, and float16 adds
dynamic loss scaling to the update. The attack needs no loss scale: it
ascends a sum over examples, so its input gradients are a batch size larger
than the training loss's and stay clear of float16's underflow.
"""

import contextlib
import dataclasses
import os
import time

import keras
import tensorflow as tf

from rlfat_tf import errors
from rlfat_tf import files
from rlfat_tf import methods
from rlfat_tf import rbs
from rlfat_tf import runs
from rlfat_tf import strategies
from rlfat_tf.attacks import pgd

OPTIMIZERS = ("adam", "sgd")
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")
SUM = tf.distribute.ReduceOp.SUM


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Hyper-parameters of a training run (defaults: the official code's).

  Attributes:
    method: key of ``methods.METHODS``.
    epsilon: L-infinity radius of the training attack.
    step_size: step of the training attack.
    attack_steps: steps of the training attack.
    attack_bn_mode: BatchNorm mode while the training attack runs.
    trades_beta: weight "beta" of the KL term (None: the method's default).
    eta: weight "eta" of the transfer term (None: the method's default).
      Methods ignore the weights they do not read.
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
    jit_compile: compile the gradient computation of a step with XLA.
    mixed_precision: Keras dtype policy of the model's layers, one of
      ``PRECISIONS``.
  """
  method: str
  epsilon: float = 0.03
  step_size: float = 0.0075
  attack_steps: int = 10
  attack_bn_mode: str = "train"
  trades_beta: float | None = None
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
  mixed_precision: str = "float32"

  @property
  def method_spec(self):
    return methods.get(self.method)

  @property
  def weights(self):
    """The weights the method's objective reads, by name."""
    given = {"beta": self.trades_beta, "eta": self.eta}
    return {name: default if given[name] is None else given[name]
            for name, default in self.method_spec.weights.items()}

  def attack_spec(self, bn_mode=None):
    """The method's training attack (or a copy in another BN mode)."""
    return self.method_spec.attack(self.epsilon, self.step_size,
                                   self.attack_steps,
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
  if config.mixed_precision == "mixed_float16":
    # float16 gradients underflow without a loss scale; bfloat16 has float32's
    # exponent range and needs none.
    optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
  return optimizer


@contextlib.contextmanager
def _dtype_policy(name):
  """Builds layers under a Keras dtype policy, then restores the previous."""
  previous = keras.config.dtype_policy()
  keras.config.set_dtype_policy(name)
  try:
    yield
  finally:
    keras.config.set_dtype_policy(previous)


class Trainer:
  """Trains a model with one of the methods of ``methods``.

  Files under ``model_dir`` (written by the chief worker only):
  - ``checkpoints/``: the last ``keep_checkpoints`` full checkpoints;
  - ``best/``: the model with the best validation PGD accuracy, and
    ``best.json`` with its step and scores (only with a validation split);
  - ``summaries/``: TensorBoard scalars, tagged by the keys of ``metrics``;
  - ``metrics.json``: the latest value of every tag.
  Other workers of a multi-worker run take part in every save (saves are
  collective) but write into a private directory that they delete at once,
  and they write no summaries or JSON.
  """

  def __init__(self, config, model_fn, train_input_fn, model_dir,
               strategy=None, val_input_fn=None, verbose=1,
               before_first_save=None):
    """Builds the model, optimizer, compiled loops and checkpoint.

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
      verbose: 1 shows a progress bar (on the chief), 0 is silent.
      before_first_save: called on the chief just before this trainer saves
        its first checkpoint (``rlfat_tf.train`` writes the run record then,
        so that only a run with a checkpoint has one), or None.

    Raises:
      errors.UserError: the batch does not split across the replicas, or the
        model's synchronised BatchNorm cannot run under XLA here.
    """
    if config.mixed_precision not in PRECISIONS:
      raise ValueError(f"unknown precision {config.mixed_precision!r}")
    self.config = config
    self.method = config.method_spec
    self.model_dir = model_dir
    self.strategy = strategy or tf.distribute.get_strategy()
    strategies.check_batch_size(config.batch_size, self.strategy)
    self.is_chief = strategies.is_chief(self.strategy)
    self.verbose = verbose if self.is_chief else 0
    self._before_first_save = before_first_save if self.is_chief else None
    with self.strategy.scope():
      with _dtype_policy(config.mixed_precision):
        self.model = model_fn()
      self.optimizer = build_optimizer(config)
      self.optimizer.build(self.model.trainable_variables)
      self.best_score = tf.Variable(-1.0, trainable=False,
                                    name="best_val_score")
      self.global_step = tf.Variable(0, trainable=False, dtype=tf.int64,
                                     name="step")
    self._unroll_attack = self._plan_attack_loop()
    # Applies the RBS that travels with each batch (drawn in tf.data).
    self._rbs = rbs.RandomBlockShuffle(seed=rbs.APPLY_ONLY_SEED)
    self._train_input_fn = train_input_fn
    self._iterator = None
    self.val_dataset = (
        self.strategy.distribute_datasets_from_function(val_input_fn)
        if val_input_fn else None)
    loss_scaled = isinstance(self.optimizer,
                             keras.optimizers.LossScaleOptimizer)
    # The unwrapped optimizer is saved, so a run can resume in another
    # precision; the loss scale is saved beside it.
    extra = ({"loss_scale": self.optimizer.dynamic_scale.value}
             if loss_scaled else {})
    self._saved_optimizer = (self.optimizer.inner_optimizer if loss_scaled
                             else self.optimizer)
    self.checkpoint = tf.train.Checkpoint(
        model=self.model, optimizer=self._saved_optimizer,
        best_score=self.best_score, step=self.global_step, **extra)
    write_dir = strategies.write_dir(model_dir, self.strategy)
    self.manager = tf.train.CheckpointManager(
        self.checkpoint, os.path.join(write_dir, "checkpoints"),
        max_to_keep=config.keep_checkpoints)
    self.best_manager = tf.train.CheckpointManager(
        tf.train.Checkpoint(model=self.model),
        os.path.join(write_dir, "best"), max_to_keep=1)
    gradients = self._gradients
    if config.jit_compile:
      gradients = tf.function(gradients, jit_compile=True)
    self._gradient_fn = gradients
    self._train_loop = self._build_train_loop()
    self._eval_loop = self._build_eval_loop() if self.val_dataset else None
    self.metrics = {}

  @property
  def step(self):
    """Training steps run so far (batches consumed)."""
    return int(self.global_step.numpy())

  def _plan_attack_loop(self):
    """Whether the training attack's steps are unrolled into the graph.

    ``pgd.perturb`` runs its steps in a ``tf.while_loop``. Two places
    cannot take that loop:
    - XLA's CPU backend compiles a convolution's input gradient inside a loop
      body into a naive loop nest instead of its Eigen kernel (about 10x
      slower; jax-ml/jax#12868), so under XLA on CPUs the steps are unrolled;
    - synchronised BatchNorm in train mode sums batch statistics across
      replicas with ``merge_call`` (see ``strategies.uses_merge_call``),
      which cannot run inside a loop, so the steps are unrolled there too.
    The unrolled attack computes exactly what the loop does.

    Raises:
      errors.UserError: synchronised BatchNorm under XLA on CPUs, where the
        merge_call would sit inside the compiled function.
    """
    config, strategy = self.config, self.strategy
    sync_bn = any(getattr(layer, "synchronized", False)
                  for layer in self.model.layers)
    merge = sync_bn and strategies.uses_merge_call(strategy)
    cpu = strategies.on_cpu(strategy)
    if merge and config.jit_compile and cpu:
      raise errors.UserError(
          "--sync_batch_norm cannot run under --jit_compile on CPUs (XLA "
          "cannot compile the replicas' merge_call there): drop "
          "--jit_compile, or run on GPUs")
    return ((config.jit_compile and cpu)
            or (merge and not config.jit_compile
                and config.attack_bn_mode == "train"))

  def restore(self):
    """Restores the newest intact checkpoint of the chief, if any.

    Every worker restores the chief's checkpoint, so all of them resume from
    the same state. A damaged newer checkpoint is skipped with a warning
    (``runs.checkpoint_path``).

    Returns:
      The checkpoint's path, or None when there is none.

    Raises:
      errors.UserError: the checkpoint is past ``config.train_steps``, or
        every checkpoint is damaged.
    """
    path = runs.checkpoint_path(self.model_dir, required=False)
    if path is None:
      return None
    # Checkpoints may also hold objects this trainer does not track (an input
    # iterator, another precision's loss scale).
    self.checkpoint.restore(path).expect_partial()
    if not tf.train.load_checkpoint(path).has_tensor(
        "step/.ATTRIBUTES/VARIABLE_VALUE"):
      # Checkpoints without a step counter counted steps in the optimizer.
      self.global_step.assign(tf.cast(self.optimizer.iterations, tf.int64))
    if self.step > self.config.train_steps:
      raise errors.UserError(
          f"{path} is at step {self.step}, past --train_steps="
          f"{self.config.train_steps}: pass --train_steps={self.step} or more "
          f"to resume it, or a new --model_dir")
    if not self.config.lr_boundaries:
      # The checkpoint holds the optimizer's learning rate; the config's
      # wins, so a resumed run can lower it (after a divergence, say).
      self._saved_optimizer.learning_rate = self.config.learning_rate
    self._iterator = None
    return path

  # Replica functions --------------------------------------------------------

  def _gradients(self, batch):
    """Attack, forward passes, loss and gradients of one replica's batch."""
    config, method, model = self.config, self.method, self.model
    images, labels = batch["image"], batch["label"]
    adv = pgd.perturb(model, config.attack_spec(), images, labels,
                      batch["seed"], unroll=self._unroll_attack)
    inputs = {"clean": images, "adv": adv}
    if method.uses_rbs:
      inputs["rbs"] = self._rbs.augment_images(
          adv, {"rows": batch["rbs_rows"], "cols": batch["rbs_cols"]})
    with tf.GradientTape() as tape:
      logits = {p: model(inputs[p], training=True) for p in method.passes}
      terms = method.objective(logits, labels, config.weights)
      loss = tf.nn.compute_average_loss(terms["total"],
                                        global_batch_size=config.batch_size)
      scaled_loss = self.optimizer.scale_loss(loss)
    grads = tape.gradient(scaled_loss, model.trainable_variables)
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
    return grads, out

  def _train_step(self, batch):
    grads, out = self._gradient_fn(batch)
    self.optimizer.apply_gradients(zip(grads, self.model.trainable_variables))
    return out

  def _eval_step(self, batch):
    images, labels = batch["image"], batch["label"]

    def count():
      adv = pgd.perturb(self.model, self.config.attack_spec("eval"),
                        images, labels, batch["seed"])
      return (_count_correct(self.model(images, training=False), labels),
              _count_correct(self.model(adv, training=False), labels))

    # The last batch of a split can leave a replica with no examples, and
    # TensorFlow's CPU convolution gives an empty batch the wrong shape.
    clean, adv = tf.cond(tf.size(labels) > 0, count,
                         lambda: (tf.constant(0.0), tf.constant(0.0)))
    return {"clean_correct": clean, "adv_correct": adv,
            "examples": tf.cast(tf.shape(labels)[0], tf.float32)}

  # Compiled loops -----------------------------------------------------------

  def _build_train_loop(self):
    strategy = self.strategy
    keys = self._train_keys()

    @tf.function
    def loop(iterator, num_steps):
      totals = {k: tf.constant(0.0) for k in keys}
      steps = tf.constant(0)
      for _ in tf.range(num_steps):
        out = strategy.run(self._train_step, args=(next(iterator),))
        totals = {k: totals[k] + strategy.reduce(SUM, out[k], axis=None)
                  for k in keys}
        steps += 1
        self.global_step.assign_add(1)
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
    terms = ["loss"] + [f"loss_{t}" for t in self.method.terms]
    passes = sorted(set(self.method.passes) | {"clean", "adv"})
    return (terms + [f"{p}_correct" for p in passes]
            + ["examples", "nonfinite"])

  def _bar_names(self):
    """Progress-bar names of every metric this trainer can report."""
    keys = ["train/examples_per_second", "val/clean_accuracy",
            "val/pgd_accuracy"]
    keys += filter(None, map(_metric_key, self._train_keys()))
    return [_bar_name(k) for k in keys]

  # Host loop ----------------------------------------------------------------

  def _data_iterator(self):
    """The distributed input iterator, built from the current step."""
    if self._iterator is None:
      step = self.step
      self._iterator = iter(self.strategy.distribute_datasets_from_function(
          lambda ctx: self._train_input_fn(ctx, step)))
    return self._iterator

  def run_steps(self, num_steps):
    """Runs up to ``num_steps`` training steps in one compiled call.

    Nothing is logged or saved; ``train`` is built on this, and benchmarks
    time it.

    Args:
      num_steps: steps to run.

    Returns:
      ``(totals, done)``: the sums over the steps of every per-step quantity
      (losses and correct counts summed over examples, ``examples``,
      ``nonfinite``), as floats, and the number of steps run (fewer than
      ``num_steps`` only when a step was not finite).
    """
    totals, done = self._train_loop(self._data_iterator(),
                                    tf.constant(num_steps))
    return {k: float(v) for k, v in totals.items()}, int(done)

  def step_hlo(self, batch):
    """XLA's optimised HLO of one training step on ``batch``.

    The step is compiled as on a single device; with the attack in a loop,
    the loop body appears once, marked with its trip count. Used to count a
    step's floating-point operations (``benchmark.hlo_flops``).

    Args:
      batch: one batch dict of ``data.train_dataset``.

    Returns:
      The HLO module as text.

    Raises:
      ValueError: the trainer runs under a strategy other than the default,
        whose replicas synchronise outside what XLA can compile.
    """
    if self.strategy is not tf.distribute.get_strategy():
      raise ValueError("step_hlo needs a trainer on the default strategy")
    step = tf.function(self._train_step, jit_compile=True)
    # Compiled for the CPU whatever the devices: the arithmetic is the same,
    # and accelerators turn convolutions into library calls.
    return step.experimental_get_compiler_ir(batch)(
        stage="optimized_hlo", platform_name="CPU")

  def validate(self):
    """Clean and PGD accuracy on the validation split (BN in eval mode)."""
    totals = {k: float(v) for k, v in self._eval_loop(self.val_dataset).items()}
    n = max(totals["examples"], 1.0)
    return {"val/clean_accuracy": totals["clean_correct"] / n,
            "val/pgd_accuracy": totals["adv_correct"] / n}

  def _summarise(self, totals, elapsed, first_call):
    n = max(totals["examples"], 1.0)
    metrics = {_metric_key(k): v / n for k, v in totals.items()
               if _metric_key(k)}
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

  def _save(self, manager, step):
    """Saves on every worker (a collective); only the chief's copy stays."""
    if self._before_first_save:
      self._before_first_save()
      self._before_first_save = None
    manager.save(checkpoint_number=step)
    strategies.discard_writes(self.model_dir, self.strategy)

  def _save_best(self, step, val):
    score = val["val/pgd_accuracy"]
    if score <= float(self.best_score.numpy()):
      return
    self.best_score.assign(score)
    self._save(self.best_manager, step)
    if self.is_chief:
      files.write_json(os.path.join(self.model_dir, "best.json"),
                       {"step": step, "criterion": "val/pgd_accuracy", **val})

  def train(self):
    """Trains until ``config.train_steps``; returns the final metrics.

    Raises:
      errors.TrainingDiverged: the loss became NaN or Inf. The checkpoints on
        disk are those written before the bad step.
      errors.UserError: another worker of a multi-worker run stopped.
    """
    try:
      return self._train()
    except tf.errors.UnavailableError:
      # A multi-worker run cannot go on without one of its workers; TensorFlow
      # aborts the collectives on the survivors.
      last = tf.train.latest_checkpoint(
          os.path.join(self.model_dir, "checkpoints")) or "none yet"
      raise errors.UserError(
          f"lost contact with another worker of the cluster; the last "
          f"checkpoint ({last}) is intact: restart every worker with the "
          f"same command to resume from it") from None

  def _train(self):
    config = self.config
    writer = (tf.summary.create_file_writer(
        os.path.join(self.model_dir, "summaries")) if self.is_chief
              else tf.summary.create_noop_writer())
    step = self.step
    # Every value shown is already an average over its loop, so none is
    # averaged again by the bar.
    progbar = keras.utils.Progbar(
        config.train_steps, verbose=self.verbose, unit_name="step",
        stateful_metrics=self._bar_names())
    progbar.update(step)
    first_call = True
    while step < config.train_steps:
      num_steps = self._next_stop(step) - step
      start = time.perf_counter()
      totals, done = self.run_steps(num_steps)
      elapsed = time.perf_counter() - start
      step += done
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
        self._save(self.manager, step)
      self.metrics.update(metrics)
      with writer.as_default(step=step):
        for key, value in metrics.items():
          tf.summary.scalar(key, value)
      writer.flush()
      if self.is_chief:
        files.write_json(os.path.join(self.model_dir, "metrics.json"),
                         {"step": step, **self.metrics})
      progbar.update(step, [(_bar_name(k), v) for k, v in metrics.items()
                            if k != "train/learning_rate"],
                     finalize=step >= config.train_steps)
    return dict(self.metrics)


def _metric_key(total):
  """The metric tag of a per-step sum: "loss_ce" -> "train/loss_ce",
  "adv_correct" -> "train/adv_accuracy"; None for counters."""
  if total.startswith("loss"):
    return f"train/{total}"
  if total.endswith("_correct"):
    return f"train/{total.removesuffix('_correct')}_accuracy"
  return None


def _bar_name(key):
  """A metric's name on the progress bar: "train/loss" -> "loss",
  "val/pgd_accuracy" -> "val_pgd_accuracy"."""
  return key.removeprefix("train/").replace("/", "_")


def _count_correct(logits, labels):
  predictions = tf.argmax(logits, axis=-1, output_type=labels.dtype)
  return tf.reduce_sum(tf.cast(tf.equal(predictions, labels), tf.float32))
