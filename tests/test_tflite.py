"""Tests of TFLite conversion, run in the ai-edge-litert interpreter."""

import keras
import numpy as np
import pytest
from ai_edge_litert import interpreter as litert

from rlfat_tf import datasets
from rlfat_tf import models
from rlfat_tf import tflite

CLASSES = 10


@pytest.fixture(scope="module")
def model():
  keras.utils.set_random_seed(0)
  return models.wide_resnet(10, 1, CLASSES, (32, 32, 3))


@pytest.fixture(scope="module")
def test_images():
  images, _ = datasets.load_split("cifar10_sample", "test")
  return images[:200].astype(np.float32) / 255


@pytest.fixture(scope="module")
def converted(model):
  train, _ = datasets.load_split("cifar10_sample", "train")
  representative = train[:100].astype(np.float32) / 255
  return {variant: tflite.convert(model, variant, representative)
          for variant in tflite.VARIANTS}


def _run(content, images):
  """Float logits of a converted model, run in batches of 50."""
  interpreter = litert.Interpreter(model_content=content)
  (inp,), (out,) = (interpreter.get_input_details(),
                    interpreter.get_output_details())
  logits = []
  for start in range(0, len(images), 50):
    batch = images[start:start + 50]
    if inp["dtype"] != np.float32:
      scale, zero_point = inp["quantization"]
      batch = np.clip(np.round(batch / scale) + zero_point, -128,
                      127).astype(inp["dtype"])
    interpreter.resize_tensor_input(inp["index"], batch.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(inp["index"], batch)
    interpreter.invoke()
    values = interpreter.get_tensor(out["index"])
    if out["dtype"] != np.float32:
      scale, zero_point = out["quantization"]
      values = (values.astype(np.float32) - zero_point) * scale
    logits.append(values)
  return np.concatenate(logits)


def test_every_variant_has_the_logits_signature(converted):
  for content in converted.values():
    interpreter = litert.Interpreter(model_content=content)
    assert interpreter.get_signature_list() == {
        "serving_default": {"inputs": ["images"], "outputs": ["logits"]}}
    (inp,) = interpreter.get_input_details()
    assert list(inp["shape_signature"]) == [-1, 32, 32, 3]
    (out,) = interpreter.get_output_details()
    assert list(out["shape_signature"]) == [-1, CLASSES]


def test_float32_equals_keras(converted, model, test_images):
  expected = model(test_images, training=False).numpy()
  np.testing.assert_allclose(_run(converted["float32"], test_images),
                             expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("variant", ["float16", "dynamic_int8"])
def test_weight_quantised_variants_stay_close(converted, model, test_images,
                                              variant):
  # Measured max |diff|: 6e-4 (float16) and 1e-2 (dynamic int8) on this
  # model, logits up to 0.95; 1.6e-3 and 1.9e-2 on the smoke model, logits up
  # to 1.9; 2.8e-3 and 2.3e-2 on a WRN-10-1 trained 600 steps, logits up to
  # 3.9. A tenth of the largest logit leaves room for other CPUs' kernels and
  # still fails a variant that lost a layer's weights.
  expected = model(test_images, training=False).numpy()
  logits = _run(converted[variant], test_images)
  assert np.abs(logits - expected).max() <= 0.1 * np.abs(expected).max()
  assert np.mean(logits.argmax(-1) == expected.argmax(-1)) >= 0.98


def test_full_integer_int8_has_int8_io_and_agrees(converted, model,
                                                  test_images):
  interpreter = litert.Interpreter(model_content=converted["int8"])
  (inp,), (out,) = (interpreter.get_input_details(),
                    interpreter.get_output_details())
  assert inp["dtype"] == np.int8 and out["dtype"] == np.int8
  # The calibration images span 0..255, so [0, 1] maps onto all 256 levels.
  scale, zero_point = inp["quantization"]
  assert scale == pytest.approx(1 / 255, rel=1e-6) and zero_point == -128
  expected = model(test_images, training=False).numpy()
  logits = _run(converted["int8"], test_images)
  # See test_export for the measured agreement on trained models and the
  # justification of 0.9.
  assert np.mean(logits.argmax(-1) == expected.argmax(-1)) >= 0.9


def test_sizes_follow_the_weight_type(converted, model):
  params = model.count_params()
  sizes = {variant: len(content) for variant, content in converted.items()}
  # float32 stores 4 bytes a weight, float16 2, the int8 variants 1 (plus
  # per-channel scales and the graph itself).
  assert 4 * params <= sizes["float32"] <= 4 * params + 64 * 1024
  assert 2 * params <= sizes["float16"] <= 2 * params + 64 * 1024
  for variant in ("dynamic_int8", "int8"):
    assert params <= sizes[variant] <= params + 64 * 1024


def test_convert_refuses_unknown_variant_and_missing_calibration(model):
  with pytest.raises(ValueError, match="unknown TFLite variant 'int4'"):
    tflite.convert(model, "int4")
  with pytest.raises(ValueError, match="representative images"):
    tflite.convert(model, "int8")
