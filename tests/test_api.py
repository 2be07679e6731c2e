"""Tests of the public Python API: ``rlfat_tf``'s names and
``evaluate_robustness`` on a model whose robustness is known by hand."""

import json
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import rlfat_tf
from rlfat_tf import attacks
from rlfat_tf import errors
from rlfat_tf import robustness

import helpers

EPS = 0.03
# Small enough to run in seconds, strong enough for the linear colour model.
FAST = {"apgd_steps": 10, "apgd_targets": 2, "fab_steps": 5, "fab_targets": 2,
        "square_queries": 20}


def _robust_by_hand(images, labels):
  """The colour model's exact robustness at EPS.

  Logit c is 20 x channel c's mean; the best attack lowers the true channel
  by EPS and raises the next largest by EPS, so an image survives iff its
  true channel leads every other by more than 2 EPS.
  """
  means = images.mean(axis=(1, 2))
  true = means[np.arange(len(labels)), labels]
  others = means.copy()
  others[np.arange(len(labels)), labels] = -np.inf
  return true - others.max(axis=1) > 2 * EPS


CLASSES = 5


@pytest.fixture(scope="module")
def model():
  """Logit c is 20 x the mean of channel c (APGD-T needs 4 classes or more)."""
  inputs = keras.Input((4, 4, CLASSES))
  mean = keras.layers.GlobalAveragePooling2D()(inputs)
  logits = keras.layers.Dense(
      CLASSES, use_bias=False,
      kernel_initializer=keras.initializers.Constant(20.0 * np.eye(CLASSES)))(
          mean)
  return keras.Model(inputs, logits)


@pytest.fixture(scope="module")
def data_set():
  """Grey images with the true channel raised by 0.005 .. 0.1."""
  rng = np.random.default_rng(0)
  labels = rng.integers(0, CLASSES, 40).astype(np.int32)
  colours = np.full((40, CLASSES), 0.5, np.float32)
  colours[np.arange(40), labels] += rng.uniform(0.005, 0.1, 40)
  images = np.broadcast_to(colours[:, None, None, :],
                           (40, 4, 4, CLASSES)).copy()
  return images, labels


def test_public_names_import_and_show_in_help():
  for name in rlfat_tf.__all__:
    assert getattr(rlfat_tf, name) is not None
  assert rlfat_tf.attacks is attacks
  assert rlfat_tf.evaluate_robustness is robustness.evaluate_robustness
  shown = subprocess.run(
      [sys.executable, "-c", "import rlfat_tf; help(rlfat_tf)"],
      capture_output=True, text=True, env=helpers.ENV, check=True).stdout
  for name in rlfat_tf.__all__:
    assert f"``{name}" in shown, name
  with pytest.raises(AttributeError):
    rlfat_tf.no_such_name  # pylint: disable=pointless-statement


def test_autoattack_finds_exactly_the_images_that_can_be_broken(model,
                                                                data_set):
  images, labels = data_set
  report = rlfat_tf.evaluate_robustness(
      model, images, labels, epsilon=EPS, settings=FAST, batch_size=16,
      checks=False)
  expected = _robust_by_hand(images, labels)
  assert 0 < expected.sum() < len(expected)
  np.testing.assert_array_equal(report.per_example["autoattack"], expected)
  assert report.metrics["test/autoattack_accuracy"] == pytest.approx(
      expected.mean())
  assert report.metrics["test/clean_accuracy"] == 1.0
  assert report.attacks["autoattack"]["components"] == [
      "apgd_ce", "apgd_t", "fab_t", "square"]


def test_dataset_form_and_input_scale_give_the_same_verdicts(model, data_set):
  images, labels = data_set
  arrays = rlfat_tf.evaluate_robustness(
      model, images, labels, epsilon=EPS, attacks=("pgd",),
      settings={"pgd_steps": 10}, checks=False)
  for dataset in (tf.data.Dataset.from_tensor_slices((images, labels)),
                  tf.data.Dataset.from_tensor_slices(
                      {"image": images, "label": labels}).batch(7)):
    streamed = rlfat_tf.evaluate_robustness(
        model, dataset, epsilon=EPS, attacks=("pgd",),
        settings={"pgd_steps": 10}, checks=False)
    np.testing.assert_array_equal(streamed.per_example["pgd"],
                                  arrays.per_example["pgd"])
  # A model of [0, 255] pixels, evaluated on [0, 1] images with scale 255,
  # is attacked in [0, 1] units: the same verdicts.
  scaled = rlfat_tf.evaluate_robustness(
      lambda x: model(x / 255.0), images, labels, epsilon=EPS,
      attacks=("pgd",), settings={"pgd_steps": 10}, checks=False,
      input_scale=255.0)
  np.testing.assert_array_equal(scaled.per_example["pgd"],
                                arrays.per_example["pgd"])


def test_checks_pass_and_report_writes_the_evaluate_files(model, data_set,
                                                          tmp_path):
  images, labels = data_set
  report = rlfat_tf.evaluate_robustness(
      model, images, labels, epsilon=EPS, attacks=("pgd",),
      settings={"pgd_steps": 10}, check_examples=40)
  assert report.failed_checks == []
  assert "variables_unchanged" in report.checks
  output = tmp_path / "colour.json"
  payload = report.write(str(output))
  written = json.loads(output.read_text())
  assert written == json.loads(json.dumps(payload))
  assert written["schema_version"] == 1
  assert written["metrics"] == report.metrics
  assert written["eval"]["epsilon"] == EPS
  examples = np.load(tmp_path / "colour_examples.npz")
  np.testing.assert_array_equal(examples["labels"], labels)
  np.testing.assert_array_equal(examples["pgd"], report.per_example["pgd"])


@pytest.mark.parametrize("case, message", [
    ("range", r"image values span \[0, 255\], not \[0, 1\]: divide uint8"),
    ("one_hot", "pass one integer label per image"),
    ("no_labels", "no labels"),
    ("epsilon", "epsilon 8 is outside"),
    ("labels", "labels span 0 .. 7, but the model has 5 outputs"),
    ("softmax", "the model outputs probabilities, not logits"),
    ("attack", "unknown attack 'fgsm'"),
])
def test_bad_input_is_one_line(model, data_set, case, message):
  images, labels = data_set
  kwargs = {"epsilon": EPS, "attacks": ("pgd",)}
  target = model
  if case == "range":
    images = images * 255.0
    images[0] = 255.0
    images[1] = 0.0
  elif case == "one_hot":
    labels = np.eye(CLASSES)[labels]
  elif case == "no_labels":
    labels = None
  elif case == "epsilon":
    kwargs["epsilon"] = 8
  elif case == "labels":
    labels = labels.copy()
    labels[0] = 7
  elif case == "softmax":
    target = keras.Sequential([model, keras.layers.Softmax()])
  else:
    kwargs["attacks"] = ("fgsm",)
  with pytest.raises(errors.UserError, match=message) as e:
    rlfat_tf.evaluate_robustness(target, images, labels, **kwargs)
  assert "\n" not in str(e.value)


def test_attack_by_name_runs_alone_on_a_batch(model, data_set):
  images, labels = data_set
  attack = attacks.get("apgd_t", epsilon=EPS, apgd_steps=10, apgd_targets=2)
  assert (attack.spec.epsilon, attack.spec.steps) == (EPS, 10)
  adversarial = attacks.perturb(attack, model, images, labels).numpy()
  assert np.abs(adversarial - images).max() <= EPS + 1e-6
  survived = np.argmax(model(adversarial).numpy(), -1) == labels
  np.testing.assert_array_equal(survived, _robust_by_hand(images, labels))
  composite = attacks.get("autoattack", epsilon=EPS, **FAST)
  adversarial = attacks.perturb(composite, model, images, labels).numpy()
  survived = np.argmax(model(adversarial).numpy(), -1) == labels
  np.testing.assert_array_equal(survived, _robust_by_hand(images, labels))


@pytest.mark.parametrize("kwargs, message", [
    ({"epsilon": 8.0}, "epsilon 8 is outside"),
    ({"epsilon": EPS, "apgd_stepz": 3}, "unknown attack setting 'apgd_stepz'"),
])
def test_attack_get_refuses_bad_settings(kwargs, message):
  with pytest.raises(errors.UserError, match=message):
    attacks.get("apgd_ce", **kwargs)
