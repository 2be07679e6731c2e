"""End-to-end tests of `python -m rlfat_tf.train` and the training loop."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys

from absl import flags
import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorboard.backend.event_processing import event_accumulator

from rlfat_tf import data
from rlfat_tf import datasets
from rlfat_tf import errors
from rlfat_tf import models
from rlfat_tf import methods
from rlfat_tf import runs
from rlfat_tf import train
from rlfat_tf import trainer

import helpers
from helpers import ENV
from helpers import ROOT
from helpers import SMOKE

SHARED_CIFAR = ROOT.parent / "shared" / "data" / "cifar-10-batches-bin"


def _parse(*argv):
  """``(model_dir, record)`` of the smoke configuration with ``argv``."""
  return train.values_from_argv(["train", f"--flagfile={SMOKE}", *argv])


def _cli(*argv, timeout=300):
  return helpers.run_module("rlfat_tf.train", *argv, timeout=timeout)


_checkpoint_values = helpers.checkpoint_values


def _summary_tags(model_dir):
  acc = event_accumulator.EventAccumulator(
      os.path.join(model_dir, "summaries"),
      size_guidance={event_accumulator.TENSORS: 0})
  acc.Reload()
  return set(acc.Tags()["tensors"])


@pytest.mark.parametrize("method", sorted(methods.METHODS))
def test_smoke_config_trains_every_method(method, tmp_path):
  model_dir = str(tmp_path / method)
  metrics = train.run(*_parse(f"--model_dir={model_dir}",
                              f"--method={method}"))
  assert tf.train.latest_checkpoint(
      os.path.join(model_dir, "checkpoints")).endswith("ckpt-6")
  with open(os.path.join(model_dir, "run.json")) as f:
    saved = json.load(f)
  assert saved["method"] == method and saved["depth"] == 10
  # Weights a method does not read are recorded at their old defaults.
  weights = methods.METHODS[method].weights
  assert saved["eta"] == weights.get("eta", 0.0)
  assert saved["trades_beta"] == weights.get("beta", 6.0) == 6.0
  with open(os.path.join(model_dir, "metrics.json")) as f:
    written = json.load(f)
  assert written["step"] == 6
  expected = {"train/loss", "train/loss_ce", "train/clean_accuracy",
              "train/adv_accuracy", "train/learning_rate",
              "train/examples_per_second", "val/clean_accuracy",
              "val/pgd_ce_accuracy"}
  if "kl" in methods.METHODS[method].terms:
    expected.add("train/loss_kl")
  if "transfer" in methods.METHODS[method].terms:
    expected.add("train/loss_transfer")
  if methods.METHODS[method].uses_rbs:
    expected.add("train/rbs_accuracy")
  assert set(metrics) == expected
  # One dictionary: its keys are both the TensorBoard tags and the JSON keys.
  assert _summary_tags(model_dir) == expected
  assert set(written) == expected | {"step"}
  for key in expected - {"train/learning_rate", "train/examples_per_second"}:
    assert 0.0 <= metrics[key] < 10.0, key
  with open(os.path.join(model_dir, "best.json")) as f:
    best = json.load(f)
  assert best["criterion"] == "val/pgd_ce_accuracy" and best["step"] in (3, 6)
  # Every method is validated with PGD on CE at the training attack's size.
  assert best["attack"] == {"epsilon": 0.03, "step_size": 0.0075, "steps": 2,
                            "loss": "ce", "start": "uniform",
                            "bn_mode": "eval"}
  assert best["val/pgd_ce_accuracy"] <= best["val/clean_accuracy"]


def test_rerun_with_more_steps_resumes(tmp_path, capsys, monkeypatch):
  model_dir = str(tmp_path / "run")
  train.run(*_parse(f"--model_dir={model_dir}", "--method=pgdat",
                    "--val_size=0"))
  first = _checkpoint_values(os.path.join(model_dir, "checkpoints", "ckpt-6"))
  capsys.readouterr()
  # The folder is the run wherever it is and however it is spelled: a copy,
  # reached by a relative path with a trailing slash, resumes, with a lower
  # learning rate (which may change) that the optimizer then uses.
  shutil.copytree(model_dir, tmp_path / "copy")
  monkeypatch.chdir(tmp_path)
  metrics = train.run(*_parse("--model_dir=copy/", "--method=pgdat",
                              "--val_size=0", "--train_steps=9",
                              "--learning_rate=0.0002"))
  out = capsys.readouterr().out
  assert "resuming from" in out and "(step 6)" in out
  assert metrics["train/learning_rate"] == pytest.approx(0.0002)
  copy = str(tmp_path / "copy")
  assert tf.train.latest_checkpoint(
      os.path.join(copy, "checkpoints")).endswith("ckpt-9")
  with open(os.path.join(copy, "metrics.json")) as f:
    assert json.load(f)["step"] == 9
  with open(os.path.join(copy, "run.json")) as f:
    assert json.load(f)["train_steps"] == 9
  later = _checkpoint_values(os.path.join(copy, "checkpoints", "ckpt-9"))
  assert any(not np.array_equal(first[k], later[k]) for k in first)
  # Resuming with another method would mix two runs: refused.
  with pytest.raises(errors.UserError, match="--method=pgdat, not trades"):
    train.run(*_parse(f"--model_dir={copy}", "--method=trades",
                      "--val_size=0", "--train_steps=12"))
  # Fewer steps than the run has taken cannot be honoured: refused, not
  # silently ignored.
  with pytest.raises(errors.UserError,
                     match="at step 9, past --train_steps=7: pass "
                     "--train_steps=9 or more"):
    train.run(*_parse(f"--model_dir={copy}", "--method=pgdat",
                      "--val_size=0", "--train_steps=7"))


def test_run_record_is_written_only_with_a_checkpoint(tmp_path):
  model_dir = str(tmp_path / "run")
  sgd = [f"--model_dir={model_dir}", "--method=pgdat", "--val_size=0",
         "--optimizer=sgd", "--momentum=0"]
  # A run that diverges before its first checkpoint leaves nothing behind,
  # so the next run may use other settings.
  with pytest.raises(errors.TrainingDiverged):
    train.run(*_parse(*sgd, "--learning_rate=1e12", "--train_steps=3"))
  assert not os.path.exists(os.path.join(model_dir, "run.json"))
  assert tf.train.latest_checkpoint(
      os.path.join(model_dir, "checkpoints")) is None
  sgd[-1] = "--momentum=0.5"
  train.run(*_parse(*sgd, "--learning_rate=0.01", "--train_steps=3"))
  # A resumed run that diverges keeps the record of the last checkpoint; the
  # advice it prints (lower --learning_rate and rerun) then resumes.
  with pytest.raises(errors.TrainingDiverged,
                     match="lower --learning_rate or check the data, then "
                     "rerun to resume"):
    train.run(*_parse(*sgd, "--learning_rate=1e12", "--train_steps=6"))
  with open(os.path.join(model_dir, "run.json")) as f:
    saved = json.load(f)
  assert (saved["learning_rate"], saved["train_steps"]) == (0.01, 3)
  metrics = train.run(*_parse(*sgd, "--learning_rate=0.001",
                              "--train_steps=6"))
  assert metrics["train/learning_rate"] == pytest.approx(0.001)
  with open(os.path.join(model_dir, "run.json")) as f:
    saved = json.load(f)
  assert (saved["learning_rate"], saved["train_steps"]) == (0.001, 6)


@pytest.mark.parametrize("value", ["inf", "nan"])
def test_learning_rate_must_be_finite(value):
  with pytest.raises(errors.UserError,
                     match=f"--learning_rate={value} is not a finite number"):
    _parse("--model_dir=unused", f"--learning_rate={value}")


def _start_training(*argv):
  return subprocess.Popen(
      [sys.executable, "-m", "rlfat_tf.train", *argv], env=ENV, cwd=ROOT,
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _assert_same_weights(a_dir, b_dir, step):
  a = _checkpoint_values(str(a_dir / "checkpoints" / f"ckpt-{step}"),
                         prefix="")
  b = _checkpoint_values(str(b_dir / "checkpoints" / f"ckpt-{step}"),
                         prefix="")
  assert set(a) == set(b)
  for key in a:
    if "save_counter" in key:
      continue
    np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def _assert_same_history(a_dir, b_dir):
  """The metrics at every stop agree, but for speeds, which are timings."""
  histories = []
  for folder in (a_dir, b_dir):
    with open(folder / trainer.actions.HISTORY_FILE) as f:
      histories.append([{k: v for k, v in entry.items()
                         if k != "train/examples_per_second"}
                        for entry in json.load(f)])
  assert histories[0] == histories[1]


def test_killed_or_preempted_run_resumes_to_the_same_weights(tmp_path):
  common = [f"--flagfile={SMOKE}", "--method=rlfat_t", "--deterministic",
            "--val_size=0", "--train_steps=24", "--steps_per_loop=2",
            "--checkpoint_every=8", "--keep_checkpoints=30", "--noprogress"]
  straight = tmp_path / "straight"
  result = _cli(*common, f"--model_dir={straight}")
  assert result.returncode == 0, result.stderr

  # One run stopped twice: SIGKILL at a random moment after the first
  # checkpoint, then, once resumed, SIGTERM (what schedulers send) after the
  # second; both stops must leave it on the uninterrupted run's path.
  run = tmp_path / "run"
  proc = _start_training(*common, f"--model_dir={run}")
  helpers.wait_for_checkpoint(run / "checkpoints", 8,
                              lambda: proc.poll() is None)
  proc.send_signal(signal.SIGKILL)
  proc.communicate()
  assert proc.returncode == -signal.SIGKILL
  assert not (run / "checkpoints" / "ckpt-16.index").exists(), (
      "the run reached its second checkpoint before it could be killed")

  # SIGTERM: a checkpoint at the next loop boundary, off the checkpoint
  # cadence, then exit 143; the rerun resumes from it.
  proc = _start_training(*common, f"--model_dir={run}")
  helpers.wait_for_checkpoint(run / "checkpoints", 16,
                              lambda: proc.poll() is None)
  proc.send_signal(signal.SIGTERM)
  out, err = proc.communicate(timeout=240)
  assert proc.returncode == 143, err
  assert "resuming from" in out
  assert "received SIGTERM" in err
  step = int(re.search(r"stopped at step (\d+) on SIGTERM", err).group(1))
  assert 16 <= step < 24
  assert (run / "checkpoints" / f"ckpt-{step}.index").exists()
  with open(run / "metrics.json") as f:
    assert json.load(f)["step"] == step
  assert not (run / ".lock").exists()
  # The killed run's checkpoints are those the straight run wrote.
  _assert_same_weights(straight, run, 16)

  result = _cli(*common, f"--model_dir={run}")
  assert result.returncode == 0, result.stderr
  assert f"(step {step})" in result.stdout
  _assert_same_weights(straight, run, 24)
  _assert_same_history(straight, run)


def test_monitoring_scores_training_and_test_images_at_each_validation(
    tmp_path):
  model_dir, record = _parse("--method=pgdat", "--train_size=64",
                             "--monitor_examples=40", "--eval_every=3",
                             "--checkpoint_every=6", "--noprogress",
                             f"--model_dir={tmp_path / 'run'}")
  train.run(model_dir, record)
  with open(os.path.join(model_dir, trainer.actions.HISTORY_FILE)) as f:
    history = {entry["step"]: entry for entry in json.load(f)}
  assert sorted(history) == [3, 6]
  for entry in history.values():
    for name in ("val", "train_subset", "test_subset"):
      clean, robust = trainer.actions.eval_keys(name)
      assert 0.0 <= entry[robust] <= entry[clean] <= 1.0
  # The last scores are those of the final model on the first 40 images
  # the run trained on and the first 40 test images, counted here by hand.
  model, _, _ = runs.restore_model(model_dir)
  images, labels = datasets.load_split("cifar10_sample", "train")
  (train_images, train_labels), _ = data.validation_split(images, labels,
                                                          100)
  test_images, test_labels = datasets.load_split("cifar10_sample", "test")
  for name, x, y in (("train_subset", train_images, train_labels),
                     ("test_subset", test_images, test_labels)):
    logits = model(tf.image.convert_image_dtype(x[:40], tf.float32),
                   training=False)
    hand = np.mean(np.argmax(logits, -1) == y[:40])
    assert history[6][f"{name}/clean_accuracy"] == pytest.approx(hand)
  # Only the validation split chooses the best model.
  with open(os.path.join(model_dir, "best.json")) as f:
    assert json.load(f)["criterion"] == "val/pgd_ce_accuracy"


def test_train_size_keeps_the_first_images_after_the_validation_split():
  images = np.arange(10 * 2 * 2 * 3, dtype=np.uint8).reshape(10, 2, 2, 3)
  labels = np.arange(10)
  _, record = _parse("--model_dir=unused", "--val_size=3", "--train_size=4")
  (x, y), (val_x, val_y) = train.training_split(record, images, labels)
  (rest_x, rest_y), (hand_val_x, hand_val_y) = data.validation_split(
      images, labels, 3)
  np.testing.assert_array_equal(x, rest_x[:4])
  np.testing.assert_array_equal(y, rest_y[:4])
  np.testing.assert_array_equal(val_x, hand_val_x)
  np.testing.assert_array_equal(val_y, hand_val_y)
  _, record = _parse("--model_dir=unused", "--val_size=3")
  (x, _), _ = train.training_split(record, images, labels)
  assert len(x) == 7


@pytest.mark.parametrize("argv, message", [
    (["--train_size=3901"], "--train_size=3901 exceeds the 3900 training "
     "images left after --val_size=100: pass at most 3900"),
    (["--train_size=50", "--monitor_examples=51"],
     "--monitor_examples=51 exceeds the 50 images of the train set"),
    (["--monitor_examples=1001"],
     "--monitor_examples=1001 exceeds the 1000 images of the test set"),
])
def test_sizes_beyond_the_data_are_refused_before_any_file(argv, message,
                                                           tmp_path):
  model_dir, record = _parse(*argv, f"--model_dir={tmp_path / 'run'}")
  with pytest.raises(errors.UserError, match=re.escape(message)):
    train.run(model_dir, record)
  assert not (tmp_path / "run" / "run.json").exists()


def _assert_nothing_written(model_dir):
  assert not (model_dir / "run.json").exists()
  assert not model_dir.exists() or not any(
      (model_dir / "checkpoints").glob("ckpt-*"))


# The command's own parser and run, called in this process: a refused flag
# (flags.Error) and a user error are what `python -m rlfat_tf.train` prints
# as its one error line, with exit status 2. tests/test_cli.py runs the real
# command on a refused flag, the test below on user errors.
@pytest.mark.parametrize("argv, needle", [
    (["--dataset=mnist"], "--dataset"),
    (["--epsilon=1.5"], "--epsilon must be in (0, 1]"),
    (["--attack_steps=0"], "--attack_steps"),
    (["--lr_boundaries=60000,40000"], "--lr_boundaries must be increasing"),
    (["--depth=12"], "--depth=12 is not a WideResNet depth"),
    (["--method=pgdat", "--eta=0.5"], "no transfer term"),
    (["--dataset=cifar100", "--data_dir=/nonexistent"], "--data_dir"),
    (["--data_dir=/nonexistent"], "does not apply to cifar10_sample"),
    (["--mixed_precision=float64"], "--mixed_precision"),
    (["--cpu_devices=2"], "--cpu_devices=2 only applies"),
    (["--tpu=grpc://10.0.0.1:8470"], "--tpu only applies"),
    (["--strategy=multi_worker"], "TF_CONFIG environment variable"),
])
def test_bad_input_is_a_user_error_before_anything_is_written(
    argv, needle, tmp_path, monkeypatch):
  monkeypatch.delenv("TF_CONFIG", raising=False)
  model_dir = tmp_path / "run"
  with pytest.raises((flags.Error, errors.UserError), match=re.escape(needle)):
    train.run(*_parse(f"--model_dir={model_dir}", *argv))
  _assert_nothing_written(model_dir)


# Logical devices are set up once per process, so these run as the command.
@pytest.mark.parametrize("argv, needle", [
    (["--strategy=mirrored", "--cpu_devices=3"],
     "--batch_size=32 does not split evenly across 3 replicas"),
    (["--strategy=mirrored", "--cpu_devices=2", "--sync_batch_norm",
      "--jit_compile"], "--sync_batch_norm cannot run under --jit_compile"),
])
def test_bad_input_gives_one_clear_line_and_a_nonzero_exit(argv, needle,
                                                            tmp_path):
  model_dir = tmp_path / "run"
  result = _cli(f"--flagfile={SMOKE}", f"--model_dir={model_dir}", *argv)
  assert result.returncode != 0
  assert "Traceback" not in result.stderr
  lines = [l for l in result.stderr.splitlines()
           if needle in l or l.startswith("error:")]
  assert len(lines) == 1 and needle in lines[0], result.stderr
  _assert_nothing_written(model_dir)


@pytest.mark.parametrize("dataset, defaults", [
    ("stl10", (40, 2, 7, 29_700)), ("cifar100", (34, 10, 7, 79_800)),
    ("cifar10_sample", (34, 10, 10, 79_800))])
def test_each_dataset_fills_the_official_defaults(dataset, defaults, tmp_path):
  keys = ("depth", "width", "attack_steps", "train_steps")
  argv = ["train", f"--model_dir={tmp_path}", f"--dataset={dataset}"]
  _, record = train.values_from_argv(argv)
  assert tuple(getattr(record, k) for k in keys) == defaults
  _, record = train.values_from_argv(argv + ["--depth=10", "--attack_steps=3"])
  assert tuple(getattr(record, k) for k in keys) == (10,) + defaults[1:2] + (
      3,) + defaults[3:]


def _model_record(*argv):
  """The record of ``argv`` without the smoke flagfile, which sets --depth."""
  return train.values_from_argv(["train", "--model_dir=unused", *argv])[1]


def test_model_flags_fill_each_family_and_record_only_its_settings(
    tmp_path, monkeypatch):
  record = _model_record()
  assert (record.model, record.depth, record.width) == ("wrn", 34, 10)
  assert (record.model_path, record.model_weights) == (None, None)
  record = _model_record("--model=preact_resnet18")
  assert (record.model, record.depth, record.width) == (
      "preact_resnet18", None, None)
  monkeypatch.chdir(tmp_path)
  record = _model_record("--model=keras", "--model_path=net.keras")
  # Absolute, so the run resumes and evaluates from any folder.
  assert record.model_path == str(tmp_path / "net.keras")
  assert (record.model_weights, record.depth) == ("scratch", None)
  record = _model_record("--model=keras", "--model_path=gs://b/net.keras",
                         "--model_weights=saved")
  assert (record.model_path, record.model_weights) == ("gs://b/net.keras",
                                                       "saved")


@pytest.mark.parametrize("argv, message", [
    (["--model=keras"], "--model=keras needs --model_path: pass "
     "--model_path"),
    (["--model_path=net.keras"], "--model_path does not apply to --model=wrn"),
    (["--model_weights=saved"], "--model_weights does not apply to "
     "--model=wrn"),
    (["--model=preact_resnet18", "--depth=16"], "--depth does not apply to "
     "--model=preact_resnet18: drop --depth"),
    (["--model=keras", "--model_path=net.keras", "--width=2"],
     "--width does not apply to --model=keras: drop --width"),
    (["--model=resnet50"], "--model"),
])
def test_model_flags_that_do_not_fit_the_model_are_refused(argv, message):
  with pytest.raises((flags.Error, errors.UserError), match=re.escape(message)):
    _model_record(*argv)


def test_trains_and_restores_a_keras_model_file(tmp_path):
  inputs = keras.Input((32, 32, 3))
  x = keras.layers.Conv2D(4, 3, strides=4)(inputs)
  x = keras.layers.GlobalAveragePooling2D()(x)
  keras.Model(inputs, keras.layers.Dense(10)(x)).save(tmp_path / "net.keras")
  model_dir = str(tmp_path / "run")
  common = ["train", "--method=pgdat", "--attack_steps=1", "--batch_size=8",
            "--train_steps=2", "--steps_per_loop=2", "--checkpoint_every=2",
            "--noprogress", f"--model_dir={model_dir}"]
  metrics = train.run(*train.values_from_argv(
      [*common, "--model=keras", f"--model_path={tmp_path / 'net.keras'}",
       "--model_weights=saved"]))
  assert np.isfinite(metrics["train/loss"])
  model, record, path = runs.restore_model(model_dir)
  assert path.endswith("ckpt-2") and record.model_weights == "saved"
  assert runs.architecture(record) == "Keras model file net.keras"
  assert model.output_shape == (None, 10)
  # The model is no setting a resumed run may change.
  with pytest.raises(errors.UserError, match="--model=keras, not wrn"):
    train.run(*train.values_from_argv([*common, "--train_steps=4"]))
  (tmp_path / "net.keras").unlink()
  with pytest.raises(errors.UserError, match="cannot read the Keras model"):
    runs.restore_model(model_dir)


def test_divergence_stops_and_keeps_the_last_good_checkpoint(tmp_path):
  rng = np.random.RandomState(0)
  images = rng.randint(0, 256, (64, 8, 8, 3)).astype(np.uint8)
  labels = rng.randint(0, 10, 64).astype(np.int32)
  config = trainer.TrainConfig(
      method="pgdat", attack_steps=1, batch_size=16, train_steps=40,
      steps_per_loop=1, checkpoint_every=1, keep_checkpoints=50,
      optimizer="sgd", learning_rate=1e12, momentum=0.0)
  runner = trainer.Trainer(
      config, lambda: models.wide_resnet(10, 1, 10, (8, 8, 3)),
      lambda ctx, step: data.train_dataset(
          images, labels, batch_size=16, seed=0,
          augmentation=data.Augmentation(), input_context=ctx,
          start=step * 16),
      str(tmp_path), verbose=0)
  with pytest.raises(errors.TrainingDiverged, match="NaN or Inf by step"):
    runner.train()
  bad_step = runner.step
  saved = sorted(int(p.stem.split("-")[1])
                 for p in (tmp_path / "checkpoints").glob("ckpt-*.index"))
  assert saved and max(saved) < bad_step
  for value in _checkpoint_values(
      str(tmp_path / "checkpoints" / f"ckpt-{max(saved)}")).values():
    assert np.all(np.isfinite(value))


@pytest.mark.skipif(not SHARED_CIFAR.exists(),
                    reason="real CIFAR-10 is not on this machine")
def test_trains_on_real_cifar10_from_data_dir(tmp_path):
  metrics = train.run(*_parse(
      f"--model_dir={tmp_path}", "--dataset=cifar10", "--method=rlfat_t",
      f"--data_dir={SHARED_CIFAR.parent}", "--train_steps=3",
      "--val_size=64"))
  # Every RLFAT_T term is live: a KL between the clean and the shuffled
  # adversarial view, and the transfer term between x' and RBS(x').
  assert metrics["train/loss_kl"] > 0.0
  assert metrics["train/loss_transfer"] > 0.0
  assert np.isclose(metrics["train/loss"],
                    metrics["train/loss_ce"] + 6.0 * metrics["train/loss_kl"]
                    + 1.0 * metrics["train/loss_transfer"], rtol=1e-4)
  assert 0.0 <= metrics["val/clean_accuracy"] <= 1.0
  assert tf.train.latest_checkpoint(str(tmp_path / "checkpoints")).endswith(
      "ckpt-3")
  with open(tmp_path / "run.json") as f:
    assert json.load(f)["dataset"] == "cifar10"


def test_mixed_precision_and_xla_runs_resume_across_precisions(tmp_path):
  model_dir = str(tmp_path / "run")
  common = [f"--model_dir={model_dir}", "--method=pgdat", "--val_size=0"]
  first = train.run(*_parse(*common, "--mixed_precision=mixed_float16",
                            "--train_steps=3"))
  path = tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints"))
  assert path.endswith("ckpt-3")
  # float16 trains with a dynamic loss scale, saved beside the optimizer.
  reader = tf.train.load_checkpoint(path)
  assert reader.get_tensor("loss_scale/.ATTRIBUTES/VARIABLE_VALUE") > 1.0
  later = train.run(*_parse(*common, "--mixed_precision=mixed_bfloat16",
                            "--jit_compile", "--train_steps=6"))
  for metrics in (first, later):
    for key, value in metrics.items():
      assert np.isfinite(value), key
  values = _checkpoint_values(
      os.path.join(model_dir, "checkpoints", "ckpt-6"), prefix="")
  assert values["step/.ATTRIBUTES/VARIABLE_VALUE"] == 6
  for key, value in values.items():
    if value.dtype.kind == "f":
      assert value.dtype == np.float32 and np.all(np.isfinite(value)), key
