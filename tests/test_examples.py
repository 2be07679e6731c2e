"""Runs the scripts in examples/ on tiny data, as a user would run them."""

import importlib.util
import json

import numpy as np

from rlfat_tf import runs

import helpers

# AutoAttack with few steps and queries: the example's code path, in seconds.
FAST = {"apgd_steps": 5, "apgd_targets": 2, "fab_steps": 3, "fab_targets": 2,
        "square_queries": 10}


def _example(name):
  """The module examples/<name>.py, imported from its file."""
  spec = importlib.util.spec_from_file_location(
      name, helpers.ROOT / "examples" / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_evaluate_keras_file_reports_and_writes_autoattack(smoke_run,
                                                           tmp_path):
  model, _, _ = runs.restore_model(smoke_run)
  path = tmp_path / "net.keras"
  model.save(str(path))
  output = tmp_path / "results.json"
  report = _example("evaluate_keras_file").main(
      str(path), dataset="cifar10_sample", num_examples=8, epsilon=0.03,
      output=str(output), settings=FAST)
  verdicts = report.per_example["autoattack"]
  assert verdicts.shape == (8,)
  assert report.metrics["test/autoattack_accuracy"] == verdicts.mean()
  # AutoAttack keeps only images it cannot break, among the clean-correct.
  assert (verdicts <= report.per_example["clean"]).all()
  written = json.loads(output.read_text())
  assert written["metrics"] == report.metrics


def test_rbs_augmentation_keeps_each_images_pixels():
  result = helpers.run_module("examples.rbs_augmentation", timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  assert "every image keeps its pixel values: True" in result.stdout


def test_rbs_augmentation_shuffles_blocks():
  images = np.random.default_rng(0).uniform(
      size=(4, 8, 8, 3)).astype(np.float32)
  batch, labels = next(iter(_example("rbs_augmentation").main(
      images, np.arange(4), batch_size=4, blocks=4)))
  assert batch.shape == images.shape
  np.testing.assert_array_equal(labels, np.arange(4))
  assert not np.array_equal(batch.numpy(), images)


def test_train_with_fit_saves_a_classifier_that_loads(tmp_path):
  history = _example("train_with_fit").main(
      str(tmp_path), steps=8, batch_size=16, num_val=16, attack_steps=1)
  assert history.history["adv_accuracy"] and history.history[
      "val_adv_accuracy"]
  import keras  # pylint: disable=import-outside-toplevel
  for name in ("classifier.keras", "best.keras"):
    assert (tmp_path / name).is_file()
  classifier = keras.saving.load_model(str(tmp_path / "classifier.keras"))
  assert classifier.output_shape == (None, 10)
