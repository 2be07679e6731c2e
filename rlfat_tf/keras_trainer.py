"""Adversarial training through Keras ``fit``: ``AdversarialTrainer``.

``AdversarialTrainer`` wraps a classifier (images in [0, 1] to logits) in a
``keras.Model`` whose ``train_step`` runs the CLI trainer's gradient
computation, ``trainer.step.Gradients`` (the method's attack, the batch's
RBS, the method's passes and objective, the loss averaged over the global
batch), and applies it with the optimizer given to ``compile``. ``fit``,
``evaluate``, ``predict``, callbacks, ``tf.distribute`` strategies and mixed
precision are Keras's.

Inputs, to ``fit`` and ``evaluate``:
- batch dicts of ``data.train_dataset`` or ``data.eval_dataset``: ``image``,
  ``label``, ``seed`` and (for the methods that read the RBS pass)
  ``rbs_rows`` and ``rbs_cols``; ``AdversarialTrainer.dataset`` builds the
  training stream, distributed across the replicas as the CLI's is;
- ``(images, labels)``: numpy arrays (``x=``, ``y=``), or a dataset of such
  pairs. Images are float in [0, 1] or uint8 in [0, 255] (divided by 255, as
  ``data`` does); labels are class indices, [N] or [N, 1].
What a batch does not carry is drawn in the graph from ``seed`` and a batch
counter (the optimizer's step while training, the batch's index within an
``evaluate`` call) with stateless ops: each example's attack seed and the
batch's RBS (one per batch, or one per example). The global batch's draws are
made on every replica and each takes its share, so a run repeats exactly for
the same seed, data order and initial weights, on any number of replicas
that split the batch evenly, and ``BackupAndRestore`` resumes the draws where
they stopped. Keras shuffles numpy input with its own generator: pass
``shuffle=False`` or call ``keras.utils.set_random_seed`` to repeat a run.

Metrics (means over examples, the CLI's ``train/`` metrics): ``loss``,
``loss_<term>``, and ``<pass>_accuracy`` of the passes (``clean_accuracy``,
``adv_accuracy`` on the training attack's examples, ``rbs_accuracy``).
``evaluate``, and the ``val_`` metrics of ``fit``, run the validation attack
(PGD on cross-entropy, ``trainer.validation_attack``) with BatchNorm in
inference mode: ``adv_accuracy`` is then the robust accuracy, correct on the
clean image and on its PGD example (the CLI's ``val/pgd_ce_accuracy``), and
the loss terms are the objective's on the PGD examples.

Saving: ``trainer.model`` is the classifier (``trainer.model.save(path)``).
The trainer serialises too, so ``trainer.save("t.keras")``, both kinds of
``ModelCheckpoint`` and ``keras.models.load_model`` work, the optimizer's
state included.
"""

import dataclasses
import numbers

import keras
import tensorflow as tf

from rlfat_tf import data
from rlfat_tf import errors
from rlfat_tf import rbs
from rlfat_tf.attacks import pgd
from rlfat_tf.trainer import actions
from rlfat_tf.trainer import config as config_lib
from rlfat_tf.trainer import step as step_lib

# The ``TrainConfig`` fields the gradient computation reads; the others
# belong to the CLI's loop or to ``compile`` and ``fit``.
SETTINGS = ("epsilon", "step_size", "attack_steps", "attack_bn_mode",
            "trades_beta", "eta")
# Keras's own constructor arguments (``get_config`` passes them back).
_KERAS_ARGS = ("name", "trainable", "dtype")
# Separate streams of stateless draws for training and evaluated batches.
_TRAIN_STREAM, _EVAL_STREAM = 0, 1


@keras.saving.register_keras_serializable(package="rlfat_tf")
class AdversarialTrainer(keras.Model):
  """A classifier trained adversarially by ``fit``, with one of ``methods``.

  Usage::

    classifier = rlfat_tf.models.wide_resnet(28, 10, 10, (32, 32, 3))
    trainer = AdversarialTrainer(classifier, "rlfat_p", epsilon=8 / 255)
    trainer.compile(optimizer=keras.optimizers.Adam(1e-3, epsilon=1e-8))
    trainer.fit(x_train, y_train, batch_size=32, epochs=50,
                validation_data=(x_val, y_val),
                callbacks=[keras.callbacks.EarlyStopping(
                    "val_adv_accuracy", mode="max", patience=5)])
    trainer.model.save("classifier.keras")

  Build it, like any Keras model, inside the strategy's scope to train under
  a ``tf.distribute`` strategy. Under mixed precision build the classifier
  under the dtype policy; the trainer takes the classifier's policy (so
  ``compile`` adds a loss scale under "mixed_float16").

  Attributes:
    model: the wrapped classifier.
    config: the ``trainer.TrainConfig`` of the settings (only ``SETTINGS``
      and ``method`` are read).
    rbs_blocks: blocks per axis of the RBS drawn for batches without one.
    rbs_granularity: "batch" or "example", for the same draws.
    seed: seed of every draw.
  """

  def __init__(self, model, method, *, rbs_blocks=2, rbs_granularity="batch",
               seed=0, **kwargs):
    """Wraps ``model``.

    Args:
      model: a built Keras classifier of images in [0, 1] to logits.
      method: key of ``methods.METHODS``.
      rbs_blocks: blocks per axis of the RBS drawn in the graph (the CLI's
        ``--rbs_blocks``); batch dicts that carry an RBS keep theirs.
      rbs_granularity: one of ``rbs.GRANULARITIES``.
      seed: integer seed of the attack starts and RBS drawn in the graph.
      **kwargs: settings named by ``SETTINGS`` (see ``trainer.TrainConfig``
        for their meaning and defaults, the official code's), and Keras's
        ``name``, ``trainable`` and ``dtype`` (default: the classifier's
        dtype policy).

    Raises:
      errors.UserError: an unknown method or argument, a setting out of
        range, or an unbuilt classifier.
    """
    settings = {k: kwargs.pop(k) for k in list(kwargs) if k in SETTINGS}
    _check_arguments(kwargs)
    config = config_lib.TrainConfig(method=method, **settings)
    method_spec = config.method_spec
    _check_settings(config, rbs_blocks, rbs_granularity, seed)
    if not model.built:
      raise errors.UserError(
          f"the classifier {model.name!r} is not built: give it an Input "
          f"(or call it once on a batch) before wrapping it")
    kwargs.setdefault("dtype", model.dtype_policy)
    super().__init__(**kwargs)
    self.model = model
    self.config = config
    self.rbs_blocks = rbs_blocks
    self.rbs_granularity = rbs_granularity
    self.seed = seed
    self._method = method_spec
    # Keras traces ``train_step`` without AutoGraph, which the attack's loop
    # needs; converting the functions, rather than nesting a ``tf.function``,
    # keeps the step one graph as the CLI's is (a nested function cannot
    # hold a replica merge_call, see ``step.plan_attack_loop``).
    self._gradients = step_lib.Gradients(config, model)
    self._gradients_graph = tf.autograph.to_graph(step_lib.Gradients.__call__)
    self._validation_logits = tf.autograph.to_graph(
        step_lib.validation_logits)
    # The metrics are named after the CLI's training metrics.
    self._trackers = {
        k: keras.metrics.Mean(name=actions.bar_name(actions.metric_key(k)))
        for k in step_lib.total_keys(method_spec) if actions.metric_key(k)}
    # Counts the batches of one ``evaluate`` call, which key their draws.
    self._eval_batches = keras.Variable(
        0, dtype="int64", trainable=False, aggregation="only_first_replica",
        name="eval_batches")
    self.build(model.input_shape)

  def build(self, input_shape):
    """Marks the trainer built: the classifier it wraps already is."""
    del input_shape  # The classifier's.
    self.built = True

  def call(self, inputs, training=False):
    """The classifier's logits of ``inputs`` (float in [0, 1], or uint8)."""
    return self.model(_float_images(inputs), training=training)

  @property
  def metrics(self):
    """The trainer's metrics, which ``fit`` and ``evaluate`` reset."""
    return list(self._trackers.values())

  def dataset(self, images, labels, *, batch_size, augmentation=None,
              start=0):
    """The CLI's training stream for this trainer: an endless dataset.

    ``data.train_dataset`` with the trainer's seed, RBS blocks and
    granularity (an RBS only for methods that read it); under a strategy of
    several replicas, distributed as the CLI distributes it (each replica's
    share made by its own pipeline, with the batch's RBS). Pass
    ``steps_per_epoch`` to ``fit``.

    Args:
      images: uint8 [N, H, W, 3].
      labels: int [N].
      batch_size: global batch size.
      augmentation: a ``data.Augmentation`` (default: flips only).
      start: position of the first example (``step * batch_size`` resumes
        after ``step`` batches).

    Returns:
      A ``tf.data.Dataset``, or a distributed dataset, of batch dicts.
    """
    method = self._method

    def make(input_context=None):
      return data.train_dataset(
          images, labels, batch_size=batch_size, seed=self.seed,
          augmentation=augmentation or data.Augmentation(),
          rbs_blocks=self.rbs_blocks if method.uses_rbs else None,
          rbs_granularity=self.rbs_granularity, input_context=input_context,
          start=start)

    strategy = self.distribute_strategy
    if strategy.num_replicas_in_sync == 1:
      return make()
    return strategy.distribute_datasets_from_function(make)

  def train_step(self, data):  # pylint: disable=redefined-outer-name
    """One step of the method: the CLI's gradients, the compiled optimizer."""
    batch = self._batch(data, _TRAIN_STREAM, self.optimizer.iterations)
    unroll = step_lib.plan_attack_loop(
        self.model, self.distribute_strategy, bool(self.jit_compile),
        self.config.attack_bn_mode)
    grads, sums = self._gradients_graph(self._gradients, batch,
                                         self.optimizer, unroll)
    self.optimizer.apply_gradients(zip(grads, self.model.trainable_variables))
    return self._update_metrics(sums)

  def test_step(self, data):  # pylint: disable=redefined-outer-name
    """Clean and robust accuracy, and the objective on the PGD examples."""
    batch = self._batch(data, _EVAL_STREAM, self._eval_batches)
    self._eval_batches.assign_add(1)
    images, labels = batch["image"], batch["label"]
    adv, logits = self._validation_logits(
        self.model, self.config.validation_attack_spec(), images, labels,
        batch["seed"])
    if self._method.uses_rbs:
      logits["rbs"] = self.model(
          rbs.apply(adv, batch["rbs_rows"], batch["rbs_cols"]),
          training=False)
    terms = self._method.objective(logits, labels, self.config.weights)
    sums = step_lib.step_sums(terms, logits, labels)
    _, sums["adv_correct"] = step_lib.robust_counts(logits, labels)
    return self._update_metrics(sums)

  def evaluate(self, *args, **kwargs):
    """Keras ``evaluate``; every call draws the same attack starts and RBS.

    Arguments and return value as for ``keras.Model.evaluate``.
    """
    self._eval_batches.assign(0)
    return super().evaluate(*args, **kwargs)

  def get_config(self):
    """The trainer's arguments, the classifier's serialised config among
    them."""
    given = dataclasses.asdict(self.config)
    return {**super().get_config(),
            "model": keras.saving.serialize_keras_object(self.model),
            "method": self.config.method,
            "rbs_blocks": self.rbs_blocks,
            "rbs_granularity": self.rbs_granularity, "seed": self.seed,
            **{k: given[k] for k in SETTINGS}}

  @classmethod
  def from_config(cls, config):
    """The trainer of ``get_config``'s dict, with a new classifier."""
    config = dict(config)
    model = keras.saving.deserialize_keras_object(config.pop("model"))
    return cls(model, **config)

  # Inside the graph ---------------------------------------------------------

  def _update_metrics(self, sums):
    examples = sums["examples"]
    for key, tracker in self._trackers.items():
      # A classifier with low-precision logits has low-precision losses.
      mean = tf.math.divide_no_nan(tf.cast(sums[key], tf.float32), examples)
      tracker.update_state(mean, sample_weight=examples)
    return {t.name: t.result() for t in self._trackers.values()}

  def _batch(self, data, stream, counter):  # pylint: disable=redefined-outer-name
    """The batch dict of a ``fit``/``evaluate`` input, completed.

    Args:
      data: what the dataset yields: a batch dict, or ``(images, labels)``.
      stream: ``_TRAIN_STREAM`` or ``_EVAL_STREAM``.
      counter: the int64 batch counter that keys the draws.

    Returns:
      A batch dict with float32 images, int32 labels, per-example seeds and,
      for a method that reads the RBS pass, the RBS.

    Raises:
      errors.UserError: an input the trainer cannot use.
    """
    if not isinstance(data, dict):
      x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
      if sample_weight is not None:
        raise errors.UserError(
            "sample weights are not supported (every example counts once in "
            "the objective): drop sample_weight / class_weight")
      data = x if isinstance(x, dict) and y is None else {"image": x,
                                                          "label": y}
    if "image" not in data or data.get("label") is None:
      raise errors.UserError(
          "each batch needs images and labels: pass x=images, y=labels, "
          "(images, labels) batches or dicts with 'image' and 'label'")
    batch = dict(data)
    images = batch["image"] = _float_images(batch["image"])
    batch["label"] = _labels(batch["label"])
    if images.shape.rank != 4:
      raise errors.UserError(
          f"images must be [N, H, W, C], got shape {images.shape}: add the "
          f"batch or channel axis")
    needs_rbs = self._method.uses_rbs and "rbs_rows" not in batch
    if needs_rbs or "seed" not in batch:
      drawn = self._draw(stream, counter, images)
      batch.setdefault("seed", drawn["seed"])
      if needs_rbs:
        batch["rbs_rows"], batch["rbs_cols"] = drawn["rows"], drawn["cols"]
    if self._method.uses_rbs:
      _check_rbs_shape(batch["rbs_rows"], images)
    return batch

  def _draw(self, stream, counter, images):
    """Attack seeds and RBS of a replica's batch, drawn statelessly.

    The draws of the whole global batch are made on every replica, which
    takes its share, so they do not depend on the number of replicas (when
    they split the batch evenly).
    """
    context = tf.distribute.get_replica_context()
    size = tf.shape(images)[0]
    total = size * context.num_replicas_in_sync
    first = tf.cast(context.replica_id_in_sync_group, tf.int32) * size
    key = tf.random.experimental.stateless_fold_in(
        tf.constant([self.seed, stream], tf.int64), counter)
    seed_key, rbs_key = tf.unstack(
        tf.random.experimental.stateless_split(key, num=2))
    seeds = tf.random.stateless_uniform(
        [total, 2], seed_key, minval=None, maxval=None, dtype=tf.int64)
    out = {"seed": seeds[first:first + size]}
    height, width = images.shape[1], images.shape[2]
    if self.rbs_granularity == "batch":
      out.update(rbs.sample_params(rbs_key, height, width, self.rbs_blocks))
      return out
    keys = tf.random.experimental.stateless_split(rbs_key, num=total)
    params = tf.map_fn(
        lambda s: rbs.sample_params(s, height, width, self.rbs_blocks),
        keys[first:first + size],
        fn_output_signature={"rows": tf.TensorSpec([height], tf.int32),
                             "cols": tf.TensorSpec([width], tf.int32)})
    out.update(params)
    return out


def _check_arguments(kwargs):
  """Refuses arguments that are neither settings nor Keras's."""
  fields = {f.name for f in dataclasses.fields(config_lib.TrainConfig)}
  for name in kwargs:
    if name in _KERAS_ARGS:
      continue
    if name in fields:
      raise errors.UserError(
          f"{name} is not a setting of AdversarialTrainer: the optimizer is "
          f"compile()'s, batch size and steps are fit()'s (the settings are "
          f"{', '.join(SETTINGS)})")
    raise errors.UserError(
        f"unknown argument {name!r}: choose from {', '.join(SETTINGS)}, "
        f"rbs_blocks, rbs_granularity, seed")


def _check_settings(config, rbs_blocks, rbs_granularity, seed):
  """Refuses settings the attack, the objective or the draws cannot use."""

  def integer(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)

  checks = [
      (0 <= config.epsilon <= 1,
       f"epsilon={config.epsilon} is outside [0, 1] (images are in [0, 1]): "
       f"pass e.g. 8/255"),
      (config.step_size > 0,
       f"step_size={config.step_size} must be positive: pass e.g. "
       f"epsilon / 4"),
      (integer(config.attack_steps) and config.attack_steps >= 0,
       f"attack_steps={config.attack_steps!r} must be a non-negative "
       f"integer: pass e.g. 10"),
      (config.attack_bn_mode in pgd.BN_MODES,
       f"unknown attack_bn_mode {config.attack_bn_mode!r}: choose from "
       f"{', '.join(pgd.BN_MODES)}"),
      (integer(rbs_blocks) and rbs_blocks >= 1,
       f"rbs_blocks={rbs_blocks!r} must be a positive integer: pass e.g. 2"),
      (rbs_granularity in rbs.GRANULARITIES,
       f"unknown rbs_granularity {rbs_granularity!r}: choose from "
       f"{', '.join(rbs.GRANULARITIES)}"),
      (integer(seed), f"seed={seed!r} must be an integer: pass e.g. 0"),
  ]
  checks += [(value >= 0, f"the {name} weight {value} of {config.method} is "
              f"negative: pass a weight >= 0")
             for name, value in config.weights.items()]
  for ok, message in checks:
    if not ok:
      raise errors.UserError(message)


def _check_rbs_shape(rows, images):
  """Refuses a batch RBS that a strategy split across its replicas."""
  if rows.shape.rank == 1 and rows.shape[0] != images.shape[1]:
    raise errors.UserError(
        f"the batch's RBS has {rows.shape[0]} rows for images of height "
        f"{images.shape[1]} (a strategy split it with the batch): build the "
        f"dataset with AdversarialTrainer.dataset")


def _float_images(images):
  """Images as float32 in [0, 1]: uint8 is divided by 255, floats kept."""
  images = tf.convert_to_tensor(images)
  if images.dtype == tf.uint8:
    return tf.image.convert_image_dtype(images, tf.float32)
  return tf.cast(images, tf.float32)


def _labels(labels):
  """Class indices as int32 [B], from [B] or [B, 1]."""
  labels = tf.convert_to_tensor(labels)
  if labels.shape.rank == 2 and labels.shape[1] == 1:
    labels = labels[:, 0]
  if labels.shape.rank != 1 or not labels.dtype.is_integer:
    raise errors.UserError(
        f"labels must be integer class indices [N] or [N, 1], got "
        f"{labels.dtype.name} of shape {labels.shape}: pass class indices, "
        f"not one-hot vectors")
  return tf.cast(labels, tf.int32)
