"""The compiled training step, and the call that runs many of them.

One replica step runs the method's attack, applies the batch's Random Block
Shuffle to the adversarial example, runs the forward passes the objective
reads, and applies the update. An outer ``tf.function`` runs many steps per
call through ``strategy.run``, so the host only wakes up to log, validate and
checkpoint (see ``loop``). Everything is built under a ``tf.distribute``
strategy (the default one on a single device, see ``strategies``), with the
loss averaged over the global batch; each replica attacks its own share of
the batch, with the per-example seeds and the RBS that travel with it.

The input stream is a pure function of its start (see ``data``), so a resumed
run rebuilds it at ``step * batch_size`` instead of restoring an iterator,
which also works under strategies whose distributed iterators cannot be
saved, and for every worker of a multi-worker run.

The gradient computation (``Gradients``) is shared with the Keras ``fit``
driver, ``keras_trainer.AdversarialTrainer``: one implementation, two loops.

Speed options: ``jit_compile`` compiles the gradient computation of a step
(attack, passes, loss and backward pass) with XLA; the optimizer update stays
outside it because it synchronises replicas. ``mixed_precision`` runs the
model in bfloat16 or float16 with float32 variables and logits; the attack's
input, its gradient's sign and every loss stay in float32, and float16 adds
dynamic loss scaling to the update. Under float16 the attack rescales its
gradient at the logits before the backward pass (``pgd.input_gradient``),
which on a confident model would otherwise underflow to zero.
"""

import contextlib
import functools

import keras
import tensorflow as tf

from rlfat_tf import errors
from rlfat_tf import rbs
from rlfat_tf import strategies
from rlfat_tf.attacks import pgd
from rlfat_tf.trainer import config as config_lib

SUM = tf.distribute.ReduceOp.SUM
# The sums that one validation pass reports.
EVAL_KEYS = ("clean_correct", "adv_correct", "examples")


@contextlib.contextmanager
def _dtype_policy(name):
  """Builds layers under a Keras dtype policy, then restores the previous."""
  previous = keras.config.dtype_policy()
  keras.config.set_dtype_policy(name)
  try:
    yield
  finally:
    keras.config.set_dtype_policy(previous)


def plan_attack_loop(model, strategy, jit_compile, attack_bn_mode):
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

  Args:
    model: the Keras model being trained.
    strategy: the ``tf.distribute.Strategy`` it trains under.
    jit_compile: whether the gradient computation is compiled with XLA.
    attack_bn_mode: BatchNorm mode of the training attack.

  Raises:
    errors.UserError: synchronised BatchNorm under XLA on CPUs, where the
      merge_call would sit inside the compiled function.
  """
  sync_bn = any(getattr(layer, "synchronized", False)
                for layer in model.layers)
  merge = sync_bn and strategies.uses_merge_call(strategy)
  cpu = strategies.on_cpu(strategy)
  if merge and jit_compile and cpu:
    raise errors.UserError(
        "--sync_batch_norm cannot run under --jit_compile on CPUs (XLA "
        "cannot compile the replicas' merge_call there): drop "
        "--jit_compile, or run on GPUs")
  return ((jit_compile and cpu)
          or (merge and not jit_compile and attack_bn_mode == "train"))


def total_keys(method):
  """Names of the sums a training step of ``method`` reports.

  ``loss`` and ``loss_<term>`` for each term of the objective, summed over
  examples; ``<pass>_correct``, correct predictions of each forward pass
  (always "clean" and "adv"); ``examples``; and ``nonfinite``, 1 for a step
  whose loss was NaN or Inf.
  """
  terms = ["loss"] + [f"loss_{t}" for t in method.terms]
  passes = sorted(set(method.passes) | {"clean", "adv"})
  return terms + [f"{p}_correct" for p in passes] + ["examples", "nonfinite"]


def step_sums(terms, logits, labels):
  """The sums of ``total_keys`` but ``nonfinite``, over a replica's batch.

  Args:
    terms: the objective's per-example terms, by name ("total" among them).
    logits: the logits of each forward pass, by pass.
    labels: int [B] true labels.
  """
  out = {f"loss_{k}" if k != "total" else "loss": tf.reduce_sum(v)
         for k, v in terms.items()}
  for p, z in logits.items():
    out[f"{p}_correct"] = _count_correct(z, labels)
  out["examples"] = tf.cast(tf.shape(labels)[0], tf.float32)
  return out


class Gradients:
  """Attack, forward passes, loss and gradients of one replica's batch.

  The one gradient computation of both training drivers: ``TrainStep`` (the
  CLI's compiled loop) and ``keras_trainer.AdversarialTrainer`` (Keras
  ``fit``). It runs the method's training attack from the batch's
  per-example seeds, applies the batch's RBS to the adversarial example,
  runs the passes the objective reads (each its own forward pass, BatchNorm
  in train mode), and differentiates the objective averaged over the global
  batch (``tf.nn.compute_average_loss``).
  """

  def __init__(self, config, model, global_batch_size=None):
    """Holds what the computation reads.

    Args:
      config: a ``config.TrainConfig`` (its method, attack and weights).
      model: the Keras model to train.
      global_batch_size: the global batch the loss is averaged over, or None
        for the replica's batch times the replicas (Keras ``fit``, whose last
        batch may be smaller).
    """
    self._config = config
    self._method = config.method_spec
    self._model = model
    self._global_batch_size = global_batch_size
    # Applies the RBS that travels with each batch (drawn in tf.data).
    self._rbs = rbs.RandomBlockShuffle(seed=rbs.APPLY_ONLY_SEED)

  def __call__(self, batch, optimizer, unroll_attack=False):
    """Computes one replica's gradients and sums.

    Args:
      batch: a batch dict of ``data.train_dataset`` (``rbs_rows`` and
        ``rbs_cols`` only for methods that read the RBS pass).
      optimizer: the optimizer that applies them (it scales the loss).
      unroll_attack: write the attack's steps out (see ``plan_attack_loop``).

    Returns:
      ``(grads, sums)``: the gradients of the model's trainable variables,
      and the sums named by ``total_keys`` over the batch's examples.
    """
    config, method, model = self._config, self._method, self._model
    images, labels = batch["image"], batch["label"]
    adv = pgd.perturb(model, config.attack_spec(), images, labels,
                      batch["seed"], unroll=unroll_attack)
    inputs = {"clean": images, "adv": adv}
    if method.uses_rbs:
      inputs["rbs"] = self._rbs.augment_images(
          adv, {"rows": batch["rbs_rows"], "cols": batch["rbs_cols"]})
    with tf.GradientTape() as tape:
      logits = {p: model(inputs[p], training=True) for p in method.passes}
      terms = method.objective(logits, labels, config.weights)
      loss = tf.nn.compute_average_loss(
          terms["total"], global_batch_size=self._global_batch_size)
      scaled_loss = optimizer.scale_loss(loss)
    grads = tape.gradient(scaled_loss, model.trainable_variables)
    # Accuracy on x and x' is always reported; a pass the objective does not
    # read runs in inference mode, so it neither trains nor moves BN stats.
    for p in ("clean", "adv"):
      if p not in logits:
        logits[p] = model(inputs[p], training=False)
    out = step_sums(terms, logits, labels)
    out["nonfinite"] = tf.cast(
        tf.logical_not(tf.math.is_finite(loss)), tf.float32)
    return grads, out


def validation_logits(model, spec, images, labels, seeds):
  """The validation attack's examples and the logits of both images.

  BatchNorm runs in inference mode.

  Args:
    model: a Keras model mapping images to logits.
    spec: the attack, a ``pgd.AttackSpec``.
    images: [B, H, W, C] clean images in [0, 1].
    labels: int [B] true labels.
    seeds: int [B, 2] per-example seeds of the attack's start.

  Returns:
    ``(adv, logits)``: the adversarial examples, and the logits of the
    "clean" and "adv" images.
  """
  adv = pgd.perturb(model, spec, images, labels, seeds)
  clean = model(images, training=False)
  return adv, {"clean": clean, "adv": model(adv, training=False)}


def robust_counts(logits, labels):
  """Correct clean and robust predictions, float32 scalars.

  As in evaluation, an example is robust only if its clean image is
  classified correctly too.

  Args:
    logits: the "clean" and "adv" logits of ``validation_logits``.
    labels: int [B] true labels.
  """
  clean = _correct(logits["clean"], labels)
  robust = clean & _correct(logits["adv"], labels)
  return (tf.reduce_sum(tf.cast(clean, tf.float32)),
          tf.reduce_sum(tf.cast(robust, tf.float32)))


class TrainStep:
  """The model, its optimizer and the compiled functions that train it.

  Attributes:
    config: the ``config.TrainConfig``.
    strategy: the ``tf.distribute.Strategy`` everything runs under.
    model: the Keras model.
    optimizer: its optimizer (a ``LossScaleOptimizer`` under float16).
    global_step: training steps run so far, an int64 variable.
  """

  def __init__(self, config, model_fn, train_input_fn, strategy):
    """Builds the model and optimizer in the strategy's scope.

    Args:
      config: a ``config.TrainConfig``.
      model_fn: builds the Keras model (called in the strategy's scope and
        under ``config.mixed_precision``'s dtype policy).
      train_input_fn: ``(input_context, step) -> tf.data.Dataset`` of the
        training batches from global step ``step`` on.
      strategy: a ``tf.distribute.Strategy``.

    Raises:
      ValueError: ``config.mixed_precision`` is not one of ``PRECISIONS``.
      errors.UserError: the model's synchronised BatchNorm cannot run under
        XLA here.
    """
    if config.mixed_precision not in config_lib.PRECISIONS:
      raise ValueError(f"unknown precision {config.mixed_precision!r}")
    self.config = config
    self.method = config.method_spec
    self.strategy = strategy
    with strategy.scope():
      with _dtype_policy(config.mixed_precision):
        self.model = model_fn()
      self.optimizer = config_lib.build_optimizer(config)
      self.optimizer.build(self.model.trainable_variables)
      self.global_step = tf.Variable(0, trainable=False, dtype=tf.int64,
                                     name="step")
    compute = Gradients(config, self.model,
                        global_batch_size=config.batch_size)
    unroll = plan_attack_loop(self.model, strategy, config.jit_compile,
                              config.attack_bn_mode)
    self._train_input_fn = train_input_fn
    self._iterator = None
    loss_scaled = isinstance(self.optimizer,
                             keras.optimizers.LossScaleOptimizer)
    self._saved_optimizer = (self.optimizer.inner_optimizer if loss_scaled
                             else self.optimizer)
    self._loss_scale = (self.optimizer.dynamic_scale.value if loss_scaled
                        else None)
    gradients = functools.partial(compute, optimizer=self.optimizer,
                                  unroll_attack=unroll)
    if config.jit_compile:
      gradients = tf.function(gradients, jit_compile=True)
    self._gradient_fn = gradients
    self._train_loop = self._build_train_loop()
    self._eval_loop = self._build_eval_loop()

  @property
  def step(self):
    """Training steps run so far (batches consumed)."""
    return int(self.global_step.numpy())

  def state(self):
    """What a checkpoint holds of the training state, by name.

    The unwrapped optimizer is saved, so a run can resume in another
    precision; the loss scale is saved beside it.
    """
    state = {"model": self.model, "optimizer": self._saved_optimizer,
             "step": self.global_step}
    if self._loss_scale is not None:
      state["loss_scale"] = self._loss_scale
    return state

  def resume(self, path):
    """Adapts the state just restored from checkpoint ``path`` to the config.

    Args:
      path: the checkpoint the state came from.
    """
    if not tf.train.load_checkpoint(path).has_tensor(
        "step/.ATTRIBUTES/VARIABLE_VALUE"):
      # Checkpoints without a step counter counted steps in the optimizer.
      self.global_step.assign(tf.cast(self.optimizer.iterations, tf.int64))
    if not self.config.lr_boundaries:
      # The checkpoint holds the optimizer's learning rate; the config's
      # wins, so a resumed run can lower it (after a divergence, say).
      self._saved_optimizer.learning_rate = self.config.learning_rate
    self._iterator = None

  def learning_rate(self):
    """The optimizer's current learning rate, a float."""
    return float(keras.ops.convert_to_numpy(self.optimizer.learning_rate))

  # Replica functions --------------------------------------------------------

  def replica_step(self, batch):
    """One training step of one replica's batch; returns its sums.

    Args:
      batch: a batch dict of ``data.train_dataset``.

    Returns:
      Dict of the sums named by ``total_keys`` over the batch's examples.
    """
    grads, out = self._gradient_fn(batch)
    self.optimizer.apply_gradients(zip(grads, self.model.trainable_variables))
    return out

  def _eval_step(self, batch):
    images, labels = batch["image"], batch["label"]

    def count():
      _, logits = validation_logits(
          self.model, self.config.validation_attack_spec(), images, labels,
          batch["seed"])
      return robust_counts(logits, labels)

    # The last batch of a split can leave a replica with no examples, and
    # TensorFlow's CPU convolution gives an empty batch the wrong shape.
    clean, adv = tf.cond(tf.size(labels) > 0, count,
                         lambda: (tf.constant(0.0), tf.constant(0.0)))
    return {"clean_correct": clean, "adv_correct": adv,
            "examples": tf.cast(tf.shape(labels)[0], tf.float32)}

  # Compiled loops -----------------------------------------------------------

  def total_keys(self):
    """Names of the sums a training step reports (see ``total_keys``)."""
    return total_keys(self.method)

  def _build_train_loop(self):
    strategy = self.strategy
    keys = self.total_keys()

    @tf.function
    def loop(iterator, num_steps):
      totals = {k: tf.constant(0.0) for k in keys}
      steps = tf.constant(0)
      for _ in tf.range(num_steps):
        out = strategy.run(self.replica_step, args=(next(iterator),))
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
      totals = {k: tf.constant(0.0) for k in EVAL_KEYS}
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

  # Host calls ---------------------------------------------------------------

  def weights_finite(self):
    """Whether every variable of the model is finite."""
    return bool(self._weights_finite())

  def _data_iterator(self):
    """The distributed input iterator, built from the current step."""
    if self._iterator is None:
      step = self.step
      self._iterator = iter(self.strategy.distribute_datasets_from_function(
          lambda ctx: self._train_input_fn(ctx, step)))
    return self._iterator

  def run(self, num_steps):
    """Runs up to ``num_steps`` training steps in one compiled call.

    Args:
      num_steps: steps to run.

    Returns:
      ``(totals, done)``: the sums over the steps of every per-step quantity
      (see ``total_keys``), as floats, and the number of steps run (fewer
      than ``num_steps`` only when a step was not finite).
    """
    totals, done = self._train_loop(self._data_iterator(),
                                    tf.constant(num_steps))
    return {k: float(v) for k, v in totals.items()}, int(done)

  def validate(self, dataset):
    """Counts correct clean and robust predictions (BN in inference mode).

    Robust: correct on the clean image and on its example of the validation
    attack (``config.validation_attack``).

    Args:
      dataset: a distributed dataset of validation batches.

    Returns:
      The sums named by ``EVAL_KEYS`` over the dataset, as floats.
    """
    return {k: float(v) for k, v in self._eval_loop(dataset).items()}


def _correct(logits, labels):
  return tf.equal(tf.argmax(logits, axis=-1, output_type=labels.dtype), labels)


def _count_correct(logits, labels):
  return tf.reduce_sum(tf.cast(_correct(logits, labels), tf.float32))
