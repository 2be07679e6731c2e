"""The Keras ``fit`` driver: the CLI's step, Keras's loop, callbacks, saving.

Tiny models on 8x8 images and two-step attacks keep each fit to seconds; the
two-replica runs are subprocesses, since devices are split once per process.
"""

import dataclasses
import json
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorboard.backend.event_processing import event_accumulator

import helpers
from rlfat_tf import data
from rlfat_tf import errors
from rlfat_tf import keras_trainer
from rlfat_tf import models
from rlfat_tf.trainer import actions
from rlfat_tf.trainer import config as config_lib
from rlfat_tf.trainer import step as step_lib

SHAPE = (8, 8, 3)
SETTINGS = {"attack_steps": 2, "epsilon": 0.03, "step_size": 0.01}


def _cnn(batch_norm=True):
  """A small CNN classifier of 8x8 images into 10 classes."""
  layers = [keras.Input(SHAPE), keras.layers.Conv2D(4, 3, padding="same")]
  if batch_norm:
    layers.append(keras.layers.BatchNormalization())
  layers += [keras.layers.ReLU(), keras.layers.GlobalAveragePooling2D(),
             keras.layers.Dense(10)]
  return keras.Sequential(layers)


def _data(num=32, seed=0):
  rng = np.random.default_rng(seed)
  return (rng.integers(0, 256, (num, *SHAPE)).astype(np.uint8),
          rng.integers(0, 10, num).astype(np.int32))


def _trainer(method="rlfat_p", model=None, optimizer="sgd", **kwargs):
  trainer = keras_trainer.AdversarialTrainer(
      model or _cnn(), method, **{**SETTINGS, **kwargs})
  trainer.compile(optimizer=optimizer, jit_compile=False)
  return trainer


def _assert_same_weights(a, b, **tolerance):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    np.testing.assert_allclose(x, y, **tolerance)


# The key test: one implementation, two drivers ------------------------------


@pytest.mark.parametrize("method, model_fn", [
    ("rlfat_p", lambda: models.wide_resnet(10, 1, 10, SHAPE)),
    ("rlfat_t", _cnn)])
def test_a_fit_step_is_the_cli_step(method, model_fn):
  images, labels = _data(16)
  config = config_lib.TrainConfig(method=method, batch_size=8,
                                  optimizer="sgd", learning_rate=0.1,
                                  **SETTINGS)
  input_fn = data.train_input_fn(images, labels, batch_size=8, seed=3,
                                 augmentation=data.Augmentation(),
                                 rbs_blocks=2)
  keras.utils.set_random_seed(0)
  cli = step_lib.TrainStep(config, model_fn, input_fn,
                           tf.distribute.get_strategy())
  initial = cli.model.get_weights()
  classifier = model_fn()
  classifier.set_weights(initial)
  trainer = _trainer(method, classifier, config_lib.build_optimizer(config))
  batch = next(iter(input_fn(tf.distribute.InputContext(), 0)))

  totals, done = cli.run(1)
  history = trainer.fit(tf.data.Dataset.from_tensors(batch), shuffle=False,
                        verbose=0)
  assert done == 1
  for key in cli.total_keys():
    name = actions.metric_key(key)
    if name:
      fit_value = history.history[name.removeprefix("train/")][0]
      np.testing.assert_allclose(fit_value, totals[key] / 8, rtol=1e-6)
  # Every variable, BatchNorm's moving statistics among them.
  _assert_same_weights(trainer.model.get_weights(), cli.model.get_weights(),
                       rtol=1e-6, atol=1e-7)
  differences = [np.max(np.abs(a - b)) for a, b in
                 zip(trainer.model.get_weights(), cli.model.get_weights())]
  print(f"{method}: loss {history.history['loss'][0]!r} vs "
        f"{totals['loss'] / 8!r}; largest weight difference "
        f"{max(differences):.3g}")

  # The two validations agree too, on the CLI's validation batches.
  val = data.eval_dataset(images, labels, batch_size=8, seed=1)
  cli_val = cli.validate(val)
  fit_val = trainer.evaluate(val, verbose=0, return_dict=True)
  assert fit_val["clean_accuracy"] == cli_val["clean_correct"] / 16
  assert fit_val["adv_accuracy"] == cli_val["adv_correct"] / 16


# Inputs ----------------------------------------------------------------------


def test_arrays_train_reproducibly_from_the_seed():
  images, labels = _data()
  keras.utils.set_random_seed(0)
  initial = _cnn().get_weights()

  def fit(seed, x):
    model = _cnn()
    model.set_weights(initial)
    trainer = _trainer(model=model, seed=seed)
    trainer.fit(x, labels, batch_size=8, epochs=1, shuffle=False, verbose=0)
    return trainer.get_weights()

  first = fit(0, images)
  # uint8 images are divided by 255; float images in [0, 1] are taken as is.
  _assert_same_weights(first, fit(0, images.astype(np.float32) / 255),
                       rtol=1e-5, atol=1e-6)
  _assert_same_weights(first, fit(0, images), rtol=0, atol=0)
  assert any(not np.allclose(a, b) for a, b in zip(first, fit(1, images)))


def test_predict_call_summary_and_saving_the_classifier(tmp_path, capsys):
  images, labels = _data(8)
  trainer = _trainer()
  trainer.fit(images, labels, batch_size=8, verbose=0)
  floats = images.astype(np.float32) / 255
  logits = trainer.model(floats, training=False).numpy()
  np.testing.assert_allclose(trainer.predict(images, verbose=0), logits,
                             rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(trainer(floats), logits, rtol=1e-5, atol=1e-7)
  trainer.summary()
  trainer.model.summary()
  assert "Total params" in capsys.readouterr().out
  trainer.model.save(tmp_path / "classifier.keras")
  loaded = keras.models.load_model(tmp_path / "classifier.keras")
  np.testing.assert_allclose(loaded.predict(floats, verbose=0), logits,
                             rtol=1e-5, atol=1e-7)


def test_dataset_helper_streams_the_cli_batches():
  images, labels = _data(16)
  trainer = _trainer(rbs_blocks=3, seed=5)
  batch = next(iter(trainer.dataset(images, labels, batch_size=8)))
  expected = next(iter(data.train_dataset(
      images, labels, batch_size=8, seed=5,
      augmentation=data.Augmentation(), rbs_blocks=3)))
  assert set(batch) == set(expected)
  for key, value in expected.items():
    np.testing.assert_array_equal(batch[key], value)
  history = trainer.fit(trainer.dataset(images, labels, batch_size=8),
                        steps_per_epoch=2, shuffle=False, verbose=0)
  assert np.isfinite(history.history["loss"][0])


# Callbacks -------------------------------------------------------------------


def test_checkpoints_tensorboard_and_early_stopping_on_robust_accuracy(
    tmp_path):
  images, labels = _data()
  trainer = _trainer()
  callbacks = [
      keras.callbacks.ModelCheckpoint(
          str(tmp_path / "w{epoch}.weights.h5"), save_weights_only=True),
      keras.callbacks.ModelCheckpoint(str(tmp_path / "full{epoch}.keras")),
      keras.callbacks.TensorBoard(str(tmp_path / "logs")),
      # No epoch can gain a whole point: training stops after the second.
      keras.callbacks.EarlyStopping(monitor="val_adv_accuracy", min_delta=1.0,
                                    patience=0, mode="max"),
  ]
  history = trainer.fit(images, labels, batch_size=16, epochs=5,
                        validation_data=(images[:16], labels[:16]),
                        callbacks=callbacks, verbose=0)
  assert len(history.history["val_adv_accuracy"]) == 2
  assert callbacks[3].stopped_epoch == 1
  weights = trainer.get_weights()
  # The full checkpoint reloads the trainer, compiled, with its optimizer.
  loaded = keras.models.load_model(tmp_path / "full2.keras")
  assert isinstance(loaded, keras_trainer.AdversarialTrainer)
  settings = {k: v for k, v in trainer.get_config().items() if k != "model"}
  assert {k: loaded.get_config()[k] for k in settings} == settings
  _assert_same_weights(loaded.get_weights(), weights, rtol=0, atol=0)
  _assert_same_weights(loaded.optimizer.variables, trainer.optimizer.variables,
                       rtol=0, atol=0)
  # The weights file loads into a trainer of the same classifier.
  fresh = _trainer()
  fresh.load_weights(tmp_path / "w2.weights.h5")
  _assert_same_weights(fresh.get_weights(), weights, rtol=0, atol=0)
  events = event_accumulator.EventAccumulator(
      str(tmp_path / "logs" / "validation"),
      size_guidance={event_accumulator.TENSORS: 0})
  events.Reload()
  assert {"epoch_adv_accuracy", "epoch_loss_transfer"} <= set(
      events.Tags()["tensors"])


class _Interrupt(keras.callbacks.Callback):
  """Stops the process's training at the end of an epoch, as a kill would."""

  def __init__(self, epoch):
    super().__init__()
    self._epoch = epoch

  def on_epoch_end(self, epoch, logs=None):
    if epoch == self._epoch:
      raise KeyboardInterrupt


def test_backup_and_restore_resumes_the_same_run(tmp_path):
  images, labels = _data()
  keras.utils.set_random_seed(0)
  initial = _cnn().get_weights()

  def trainer():
    model = _cnn()
    model.set_weights(initial)
    return _trainer(model=model)

  def fit(run, callbacks):
    run.fit(images, labels, batch_size=16, epochs=3, shuffle=False,
            verbose=0, callbacks=callbacks)
    return run.get_weights()

  whole = fit(trainer(), [])
  backup = str(tmp_path / "backup")
  with pytest.raises(KeyboardInterrupt):
    fit(trainer(), [keras.callbacks.BackupAndRestore(backup), _Interrupt(1)])
  resumed = trainer()
  epochs = []
  callbacks = [keras.callbacks.BackupAndRestore(backup),
               keras.callbacks.LambdaCallback(
                   on_epoch_begin=lambda epoch, logs: epochs.append(epoch))]
  _assert_same_weights(fit(resumed, callbacks), whole, rtol=0, atol=0)
  # It ran only the third epoch, from the optimizer's restored step.
  assert epochs == [2] and int(resumed.optimizer.iterations) == 6


# Strategies and precision ----------------------------------------------------


_TWO_REPLICAS = """
import json, sys
import numpy as np
from rlfat_tf import strategies
strategies.split_cpu(2)
import keras, tensorflow as tf
from rlfat_tf import data, errors, keras_trainer
out = {}
inputs = np.load(sys.argv[1], allow_pickle=True)
images, labels, initial = (inputs[k] for k in ("images", "labels",
                                               "initial"))
strategy = tf.distribute.MirroredStrategy()
out["replicas"] = strategy.num_replicas_in_sync
with strategy.scope():
  model = keras.models.model_from_json(sys.argv[2])
  model.set_weights(list(initial))
  trainer = keras_trainer.AdversarialTrainer(model, "rlfat_p",
                                             **json.loads(sys.argv[3]))
  trainer.compile(optimizer="sgd", jit_compile=False)
history = trainer.fit(images, labels, batch_size=8, epochs=1, shuffle=False,
                      verbose=0)
out["loss"] = history.history["loss"]
out["eval"] = trainer.evaluate(images, labels, batch_size=8, verbose=0,
                               return_dict=True)
trainer.fit(trainer.dataset(images, labels, batch_size=8), steps_per_epoch=1,
            shuffle=False,
            verbose=0)
try:
  trainer.fit(data.train_dataset(images, labels, batch_size=8, seed=0,
                                 augmentation=data.Augmentation(),
                                 rbs_blocks=2), steps_per_epoch=1,
              shuffle=False, verbose=0)
except errors.UserError as e:
  out["split_rbs"] = str(e)
np.savez(sys.argv[4], *trainer.get_weights())
print(json.dumps(out))
"""


def test_two_replicas_train_as_one_device(tmp_path):
  images, labels = _data(16)
  # No BatchNorm: its batch statistics would differ on half batches.
  keras.utils.set_random_seed(0)
  model = _cnn(batch_norm=False)
  inputs = tmp_path / "inputs.npz"
  np.savez(inputs, images=images, labels=labels,
           initial=np.array(model.get_weights(), dtype=object))
  proc = subprocess.run(
      [sys.executable, "-c", _TWO_REPLICAS, str(inputs), model.to_json(),
       json.dumps(SETTINGS), str(tmp_path / "out.npz")],
      capture_output=True, text=True, env=helpers.ENV, cwd=helpers.ROOT,
      timeout=240, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  assert out["replicas"] == 2
  assert "build the dataset with AdversarialTrainer.dataset" in out[
      "split_rbs"]
  # One device, the same fits: the same draws, losses and weights.
  single = _trainer(model=model)
  history = single.fit(images, labels, batch_size=8, epochs=1, shuffle=False,
                       verbose=0)
  np.testing.assert_allclose(out["loss"], history.history["loss"], rtol=1e-5)
  evaluated = single.evaluate(images, labels, batch_size=8, verbose=0,
                              return_dict=True)
  for key, value in evaluated.items():
    np.testing.assert_allclose(out["eval"][key], value, rtol=1e-5, atol=1e-6)
  single.fit(single.dataset(images, labels, batch_size=8), steps_per_epoch=1,
             shuffle=False,
             verbose=0)
  replicated = np.load(tmp_path / "out.npz")
  _assert_same_weights([replicated[f"arr_{i}"] for i in range(len(replicated))],
                       single.get_weights(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision_trains_with_float32_weights_and_logits(policy):
  images, labels = _data(16)
  previous = keras.config.dtype_policy()
  with step_lib._dtype_policy(policy):  # pylint: disable=protected-access
    # Float32 logits, as Keras's mixed-precision guide advises.
    model = keras.Sequential(
        [_cnn(), keras.layers.Activation("linear", dtype="float32")])
  assert keras.config.dtype_policy() == previous
  trainer = _trainer(model=model)
  assert trainer.dtype_policy.name == policy
  # Keras adds a loss scale to float16's optimizer only.
  assert isinstance(trainer.optimizer, keras.optimizers.LossScaleOptimizer) == (
      policy == "mixed_float16")
  history = trainer.fit(images, labels, batch_size=8, verbose=0)
  assert np.isfinite(history.history["loss"][0])
  assert all(v.dtype == "float32" for v in trainer.model.weights)
  assert trainer.predict(images, verbose=0).dtype == np.float32


# Guards ----------------------------------------------------------------------


@pytest.mark.parametrize("args, kwargs, message", [
    (("rlfat_x",), {}, r"unknown method 'rlfat_x': choose from pgdat"),
    (("pgdat",), {"epsilon": 8}, r"epsilon=8 is outside \[0, 1\]"),
    (("pgdat",), {"step_size": 0}, r"step_size=0 must be positive"),
    (("pgdat",), {"attack_steps": 1.5}, r"attack_steps=1.5 must be a non-neg"),
    (("pgdat",), {"attack_bn_mode": "test"}, r"unknown attack_bn_mode 'test'"),
    (("rlfat_p",), {"eta": -1.0}, r"the eta weight -1.0 of rlfat_p is neg"),
    (("rlfat_p",), {"rbs_blocks": 0}, r"rbs_blocks=0 must be a positive"),
    (("rlfat_p",), {"rbs_granularity": "pixel"}, r"unknown rbs_granularity"),
    (("rlfat_p",), {"seed": "0"}, r"seed='0' must be an integer"),
    (("rlfat_p",), {"batch_size": 8}, r"batch_size is not a setting of .*"
     r"fit\(\)'s"),
    (("rlfat_p",), {"epsilom": 0.03}, r"unknown argument 'epsilom': choose "
     r"from epsilon"),
])
def test_bad_arguments_are_one_line_errors_naming_the_fix(args, kwargs,
                                                          message):
  with pytest.raises(errors.UserError, match=message) as raised:
    keras_trainer.AdversarialTrainer(_cnn(), *args, **kwargs)
  assert "\n" not in str(raised.value)


def test_every_setting_is_a_train_config_field():
  fields = {f.name for f in dataclasses.fields(
      config_lib.TrainConfig)}
  assert set(keras_trainer.SETTINGS) <= fields


def test_an_unbuilt_classifier_is_refused():
  unbuilt = keras.Sequential([keras.layers.Dense(10)])
  with pytest.raises(errors.UserError, match="is not built: give it an Input"):
    keras_trainer.AdversarialTrainer(unbuilt, "pgdat")


@pytest.mark.parametrize("fit_args, message", [
    (lambda x, y: {"x": x, "y": y, "sample_weight": np.ones(len(y))},
     "sample weights are not supported"),
    (lambda x, y: {"x": x, "y": np.eye(10)[y]},
     r"labels must be integer class indices .*not one-hot"),
    (lambda x, y: {"x": x}, "each batch needs images and labels"),
])
def test_unusable_inputs_are_one_line_errors(fit_args, message):
  images, labels = _data(8)
  trainer = _trainer("pgdat")
  with pytest.raises(errors.UserError, match=message):
    trainer.fit(**fit_args(images, labels), batch_size=8, verbose=0)
