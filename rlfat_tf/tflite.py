"""TFLite conversion of a classifier, in four numeric variants.

Each variant maps ``images`` float32 [batch, H, W, 3] in [0, 1] to ``logits``
[batch, classes] (signature ``serving_default``; the batch size is resizable),
and uses only LiteRT built-in ops, so the plain ``ai-edge-litert`` runtime
runs it:

- ``float32``: the model as trained.
- ``float16``: weights stored as float16, computed in float32.
- ``dynamic_int8``: weights stored as int8, activations quantised on the fly.
- ``int8``: full-integer; weights and activations are int8 with ranges
  calibrated on representative images, and the input and output tensors are
  int8 too (read their scale and zero point from the interpreter).
"""

import numpy as np
import tensorflow as tf

from rlfat_tf import classifier

VARIANTS = ("float32", "float16", "dynamic_int8", "int8")

INPUT_NAME = "images"
OUTPUT_NAME = "logits"


def convert(model, variant, representative_images=None):
  """Converts a Keras classifier to a TFLite flatbuffer.

  Args:
    model: a Keras model mapping [batch, H, W, 3] images in [0, 1] to logits.
    variant: one of ``VARIANTS``.
    representative_images: float32 [N, H, W, 3] in [0, 1], drawn from the
      training data; they calibrate the activation ranges of ``int8`` and are
      required for it only.

  Returns:
    The model as ``bytes``.

  Raises:
    ValueError: an unknown variant, or ``int8`` without representative images.
  """
  if variant not in VARIANTS:
    raise ValueError(f"unknown TFLite variant {variant!r}; use one of "
                     f"{', '.join(VARIANTS)}")
  if variant == "int8" and (representative_images is None or
                            not len(representative_images)):
    raise ValueError("full-integer int8 needs representative images")
  _, height, width, channels = model.input_shape

  # The converter freezes the variables that its trackable object reaches;
  # the tf.Variables under Keras 3 variables are reached only when tracked
  # directly, and are otherwise left as uninitialised resources.
  holder = tf.Module()
  holder.variables_to_freeze = classifier.tf_variables(model)
  logits_fn = tf.function(
      lambda images: {OUTPUT_NAME: model(images, training=False)},
      autograph=False, input_signature=[
          tf.TensorSpec([None, height, width, channels], tf.float32,
                        name=INPUT_NAME)])
  converter = tf.lite.TFLiteConverter.from_concrete_functions(
      [logits_fn.get_concrete_function()], holder)
  converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
  if variant != "float32":
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
  if variant == "float16":
    converter.target_spec.supported_types = [tf.float16]
  elif variant == "int8":
    images = np.asarray(representative_images, np.float32)

    def representative_dataset():
      for image in images:
        yield [image[np.newaxis]]

    converter.representative_dataset = representative_dataset
    converter.target_spec.supported_ops = [
        tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
  return converter.convert()
