"""Tests of the Madry-style WideResNet."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from rlfat_tf import models

pytestmark = pytest.mark.bazel_ci


def _expected_params(depth, width, num_classes, channels=3):
  """Parameter count of the Madry WRN, from its structure alone.

  Convolutions have no bias; every BatchNorm has gamma, beta and the two
  moving statistics; zero-pad shortcuts have no parameters.
  """
  n = (depth - 4) // 6
  filters = [16, 16 * width, 32 * width, 64 * width]
  total = 9 * channels * 16  # init conv
  for stage in (1, 2, 3):
    for unit in range(n):
      c_in = filters[stage - 1] if unit == 0 else filters[stage]
      c_out = filters[stage]
      total += 4 * c_in  # BN before the first conv
      total += 9 * c_in * c_out + 4 * c_out + 9 * c_out * c_out
  total += 4 * filters[3]  # final BN
  return total + filters[3] * num_classes + num_classes


@pytest.mark.parametrize("name, classes, shape, count", [
    ("wrn-34-10", 10, (32, 32, 3), 45_924_346),
    ("wrn-34-10", 100, (32, 32, 3), 45_982_036),
    ("wrn-40-2", 10, (96, 96, 3), 2_238_202),
])
def test_named_architectures_have_the_expected_size(name, classes, shape,
                                                    count):
  depth, width = models.ARCHITECTURES[name]
  model = models.wide_resnet(depth, width, classes, shape)
  assert _expected_params(depth, width, classes) == count
  assert model.count_params() == count


def test_depth_gives_units_per_stage():
  assert models.units_per_stage(34) == 5
  assert models.units_per_stage(40) == 6
  assert models.units_per_stage(10) == 1
  for bad in (9, 12, 33):
    with pytest.raises(ValueError):
      models.units_per_stage(bad)


def test_outputs_logits_not_probabilities():
  model = models.wide_resnet(10, 1, 10, (32, 32, 3))
  x = np.random.RandomState(0).rand(4, 32, 32, 3).astype(np.float32)
  logits = model(x, training=False).numpy()
  assert logits.shape == (4, 10)
  assert model.layers[-1].get_config()["activation"] == "linear"
  assert not np.allclose(logits.sum(axis=1), 1.0)


def test_official_layer_settings():
  model = models.wide_resnet(16, 2, 10, (32, 32, 3))
  bns = [l for l in model.layers if l.__class__.__name__ ==
         "BatchNormalization"]
  assert bns and all(l.momentum == 0.9 and l.epsilon == 1e-3 for l in bns)
  relus = [l for l in model.layers if l.__class__.__name__ == "LeakyReLU"]
  assert relus and all(l.negative_slope == 0.1 for l in relus)
  convs = [l for l in model.layers if l.__class__.__name__ == "Conv2D"]
  assert all(not l.use_bias for l in convs)
  # 16 -> 32 -> 64 -> 128 filters for width 2; strides 1, 2, 2.
  assert model.get_layer("stage1_unit0_conv1").filters == 32
  assert model.get_layer("stage3_unit0_conv1").strides == (2, 2)
  assert model.get_layer("stage3_unit1_conv2").filters == 128


def test_he_fan_out_initialisation():
  model = models.wide_resnet(10, 4, 10, (32, 32, 3))
  kernel = model.get_layer("stage2_unit0_conv2").kernel.numpy()
  # stddev sqrt(2 / (3 * 3 * out)) with out = 128, untruncated.
  assert abs(kernel.std() - np.sqrt(2 / (9 * 128))) < 0.003
  assert np.abs(kernel).max() > 2.5 * np.sqrt(2 / (9 * 128))


def test_zero_pad_shortcut_pools_and_pads_the_unit_input():
  # Stage 2 of WRN-10-1 goes from 16 to 32 channels with stride 2: its
  # shortcut averages 2x2 windows of the unit's input and puts the 16 input
  # channels between 8 zero channels on each side.
  model = models.wide_resnet(10, 1, 10, (8, 8, 3))
  unit_input = keras.Model(model.input,
                           model.get_layer("stage1_unit0_add").output)
  shortcut = keras.Model(model.input,
                         model.get_layer("stage2_unit0_add").input[1])
  x = np.random.RandomState(1).rand(2, 8, 8, 3).astype(np.float32)
  u = unit_input(x).numpy()
  pooled = u.reshape(2, 4, 2, 4, 2, 16).mean(axis=(2, 4))
  expected = np.pad(pooled, [(0, 0), (0, 0), (0, 0), (8, 8)])
  np.testing.assert_allclose(shortcut(x).numpy(), expected, rtol=1e-5,
                             atol=1e-6)


@pytest.mark.parametrize("policy, compute", [("mixed_bfloat16", "bfloat16"),
                                             ("mixed_float16", "float16")])
def test_mixed_precision_keeps_variables_logits_and_input_gradients_float32(
    policy, compute):
  previous = keras.config.dtype_policy()
  keras.config.set_dtype_policy(policy)
  try:
    model = models.wide_resnet(10, 1, 10, (8, 8, 3), sync_batch_norm=True)
  finally:
    keras.config.set_dtype_policy(previous)
  assert model.get_layer("stage2_unit0_conv1").compute_dtype == compute
  assert model.get_layer("logits").compute_dtype == "float32"
  assert {v.dtype for v in model.variables} == {"float32"}
  assert all(l.synchronized for l in model.layers
             if isinstance(l, keras.layers.BatchNormalization))
  x = tf.random.stateless_uniform([2, 8, 8, 3], [0, 1])
  with tf.GradientTape() as tape:
    tape.watch(x)
    logits = model(x, training=True)
    loss = tf.reduce_sum(logits)
  assert logits.dtype == tf.float32
  assert tape.gradient(loss, x).dtype == tf.float32
