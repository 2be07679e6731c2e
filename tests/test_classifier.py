"""Tests of ``classifier``: any model as the attacks' classifier."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from rlfat_tf import classifier
from rlfat_tf import errors

import helpers

pytestmark = pytest.mark.bazel_ci

SHAPE = (4, 4, 3)


@pytest.fixture(scope="module")
def model():
  return helpers.colour_model()


@pytest.fixture(scope="module")
def saved(model, tmp_path_factory):
  """The colour model as a .keras file and as SavedModels (one signature,
  and two signatures, one of them of images)."""
  root = tmp_path_factory.mktemp("saved")
  keras_file = str(root / "colour.keras")
  model.save(keras_file)
  single = str(root / "single")
  model.export(single, format="tf_saved_model", verbose=0)

  module = tf.Module()
  module.variables_ = model.variables
  module.images = tf.function(
      lambda images: {"logits": model(images, training=False),
                      "probabilities": tf.nn.softmax(model(images))},
      input_signature=[tf.TensorSpec([None, *SHAPE], tf.float32)])
  module.halves = tf.function(
      lambda images: model(images * 0.5),
      input_signature=[tf.TensorSpec([None, *SHAPE], tf.float32)])
  several = str(root / "several")
  tf.saved_model.save(module, several, signatures={
      "images": module.images.get_concrete_function(),
      "halves": module.halves.get_concrete_function()})
  return {"keras": keras_file, "single": single, "several": several,
          "root": root}


def _images(num=5):
  images, _ = helpers.colour_data(num)
  return images


def test_keras_model_is_returned_as_is_and_scaled_when_asked(model):
  assert classifier.wrap(model) is model
  scaled = classifier.wrap(model, input_scale=255.0)
  images = _images()
  np.testing.assert_allclose(scaled(images), 255.0 * model(images).numpy(),
                             rtol=1e-5)
  assert scaled.input_shape == (None, *SHAPE)
  assert len(scaled.variables) == len(model.variables)


def test_function_is_wrapped_and_refuses_training_mode(model):
  wrapped = classifier.wrap(lambda x: model(x) * 2.0)
  images = _images()
  np.testing.assert_allclose(wrapped(images), 2.0 * model(images).numpy(),
                             rtol=1e-6)
  with pytest.raises(ValueError, match="inference mode only"):
    wrapped(images, training=True)


def test_keras_file_and_savedmodels_give_the_model_logits(model, saved):
  images = _images()
  expected = model(images).numpy()
  for path, signature in ((saved["keras"], None), (saved["single"], None),
                          (saved["several"], "images")):
    loaded = classifier.load(path, signature=signature)
    np.testing.assert_allclose(loaded(images), expected, rtol=1e-6,
                               atol=1e-6)
  halves = classifier.load(saved["several"], signature="halves")
  np.testing.assert_allclose(halves(images), model(images * 0.5).numpy(),
                             rtol=1e-6, atol=1e-6)
  assert classifier.load(saved["single"]).description.endswith(
      "signature serving_default")


def test_signature_wrap_reads_its_logits(model, saved):
  loaded = tf.saved_model.load(saved["several"])
  wrapped = classifier.wrap(loaded.signatures["images"])
  images = _images()
  np.testing.assert_allclose(wrapped(images), model(images).numpy(),
                             rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("case, message", [
    ("missing", "does not exist: pass --model=a .keras file or a SavedModel "
     "folder"),
    ("folder", "is a folder without saved_model.pb"),
    ("text", "is neither a .keras file nor a SavedModel folder"),
    ("broken", "cannot read the Keras model"),
    ("several", "has the signatures halves, images: pass --signature"),
    ("unknown_signature", "has no signature 'logits': pass --signature from "
     "halves, images"),
    ("keras_signature", "applies to SavedModels"),
])
def test_unusable_model_paths_are_one_line(saved, case, message):
  root = saved["root"]
  (root / "empty").mkdir(exist_ok=True)
  (root / "notes.txt").write_text("not a model")
  (root / "broken.keras").write_bytes(b"PK\x03\x04 truncated")
  path, signature = {
      "missing": (str(root / "nothing.keras"), None),
      "folder": (str(root / "empty"), None),
      "text": (str(root / "notes.txt"), None),
      "broken": (str(root / "broken.keras"), None),
      "several": (saved["several"], None),
      "unknown_signature": (saved["several"], "logits"),
      "keras_signature": (saved["keras"], "serving_default"),
  }[case]
  with pytest.raises(errors.UserError, match=message) as e:
    classifier.load(path, signature=signature)
  assert "\n" not in str(e.value)


def test_check_passes_a_fitting_model(model):
  classifier.check(model, SHAPE, 3, "colours")


@pytest.mark.parametrize("case, message", [
    ("shape", r"takes images of shape \(4, 4, 3\), but colours has "
     r"\(8, 8, 3\)"),
    ("classes", "outputs shape \\(3,\\) per image, but colours has 10 "
     "classes"),
    ("softmax", "the model outputs probabilities, not logits: evaluate the "
     "model without its final softmax"),
    ("fails", "the model fails on \\[4, 8, 8, 3\\] float images"),
])
def test_check_refuses_a_model_that_does_not_fit(model, case, message):
  if case == "shape":
    target, shape, classes = model, (8, 8, 3), 3
  elif case == "classes":
    target, shape, classes = model, SHAPE, 10
  elif case == "softmax":
    target, shape, classes = helpers.colour_model(softmax=True), SHAPE, 3
  else:
    # A function declares no shape; it fails on the images instead.
    target = classifier.wrap(
        lambda x: tf.reduce_mean(tf.ensure_shape(x, [None, *SHAPE]), [1, 2]))
    shape, classes = (8, 8, 3), 3
  with pytest.raises(errors.UserError, match=message):
    classifier.check(target, shape, classes, "colours")
