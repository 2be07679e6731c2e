"""Tests of the model registry and its families: the Madry-style
WideResNet, PreAct ResNet-18 and a Keras model file."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from rlfat_tf import errors
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


_SMALL = {"wrn": {"depth": 10, "width": 1}, "preact_resnet18": {}}


@pytest.mark.parametrize("policy, compute", [("mixed_bfloat16", "bfloat16"),
                                             ("mixed_float16", "float16")])
@pytest.mark.parametrize("name, conv", [("wrn", "stage2_unit0_conv1"),
                                        ("preact_resnet18", "layer2_0_conv1")])
def test_mixed_precision_keeps_variables_logits_and_input_gradients_float32(
    policy, compute, name, conv):
  previous = keras.config.dtype_policy()
  keras.config.set_dtype_policy(policy)
  try:
    model = models.build(name, num_classes=10, image_shape=(8, 8, 3),
                         sync_batch_norm=True, **_SMALL[name])
  finally:
    keras.config.set_dtype_policy(previous)
  assert model.get_layer(conv).compute_dtype == compute
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


# The registry ---------------------------------------------------------------


def test_registry_names_defaults_and_display_strings():
  assert models.NAMES == ("wrn", "preact_resnet18", "keras")
  assert models.DEFAULT == "wrn"
  assert models.SETTINGS == ("depth", "width", "model_path", "model_weights")
  assert models.get("keras").defaults == {"model_weights": "scratch"}
  assert models.describe("wrn", {}) == "WRN-34-10"
  assert models.describe("wrn", {"depth": 10, "width": 1}) == "WRN-10-1"
  assert models.describe("preact_resnet18", {}) == "PreAct ResNet-18"
  assert models.describe("keras", {"model_path": "/a/net.keras"}) == (
      "Keras model file net.keras")


def test_registry_builds_the_wrn_that_wide_resnet_builds():
  keras.utils.set_random_seed(0)
  built = models.build("wrn", num_classes=10, image_shape=(8, 8, 3), depth=10,
                       width=1)
  keras.utils.set_random_seed(0)
  direct = models.wide_resnet(10, 1, 10, (8, 8, 3))
  assert [l.name for l in built.layers] == [l.name for l in direct.layers]
  for a, b in zip(built.get_weights(), direct.get_weights()):
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name, settings, message", [
    ("resnet50", {}, "unknown model 'resnet50': choose from wrn, "
     "preact_resnet18, keras"),
    ("preact_resnet18", {"depth": 10},
     "--depth does not apply to --model=preact_resnet18: drop --depth"),
    ("wrn", {"model_path": "a.keras"}, "--model_path does not apply to "
     "--model=wrn: drop --model_path (it takes --depth, --width)"),
    ("keras", {}, "--model=keras needs --model_path: pass --model_path"),
    ("wrn", {"depth": 12}, "depth 12 and width 10 make no WideResNet"),
    ("wrn", {"depth": 10, "width": 0}, "depth 10 and width 0 make no "
     "WideResNet (ValueError: WRN width must be at least 1, got 0)"),
])
def test_bad_names_and_settings_are_one_line_user_errors(name, settings,
                                                         message):
  with pytest.raises(errors.UserError) as e:
    models.build(name, num_classes=10, image_shape=(8, 8, 3), **settings)
  assert message in str(e.value) and "\n" not in str(e.value)


# PreAct ResNet-18 -----------------------------------------------------------

# locuslab/robust_overfitting's PreActResNet18(num_classes=10), summed over
# its parameters() as PyTorch counts them: conv and linear weights, the linear
# bias, BatchNorm gamma and beta, not BatchNorm's running statistics (buffers).
# RobustBench's PreActResNet18() without the final BatchNorm has 1,024 fewer.
_REFERENCE_PARAMETERS = 11_172_170


def _preact_parameters(num_classes, channels=3):
  """PyTorch's parameter count of PreAct ResNet-18, from its structure."""
  total = 9 * channels * 64  # conv1
  c_in = 64
  for filters, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
    for block in range(2):
      total += 2 * c_in + 9 * c_in * filters  # bn1, conv1
      total += 2 * filters + 9 * filters * filters  # bn2, conv2
      if (stride if block == 0 else 1) != 1 or c_in != filters:
        total += c_in * filters  # 1x1 shortcut, no bias
      c_in = filters
  total += 2 * 512  # final bn
  return total + 512 * num_classes + num_classes  # linear, with its bias


@pytest.fixture(scope="module")
def preact():
  """PreAct ResNet-18 for 10 classes on 32x32x3 images."""
  return models.build("preact_resnet18", num_classes=10,
                      image_shape=(32, 32, 3))


def test_preact_resnet18_has_the_reference_parameter_count(preact):
  assert _preact_parameters(10) == _REFERENCE_PARAMETERS == 11_171_146 + 1_024
  # PyTorch's parameters are Keras's trainable weights; Keras also counts the
  # BatchNorm moving mean and variance, as non-trainable weights.
  trainable = sum(int(np.prod(w.shape)) for w in preact.trainable_weights)
  assert trainable == _REFERENCE_PARAMETERS
  bn_channels = sum(l.gamma.shape[0] for l in preact.layers
                    if isinstance(l, keras.layers.BatchNormalization))
  assert preact.count_params() == _REFERENCE_PARAMETERS + 2 * bn_channels
  assert preact.count_params() == 11_179_978


def _kinds(model, names):
  return [type(model.get_layer(n)).__name__ for n in names]


def test_preact_resnet18_layers_follow_the_reference(preact):
  assert [l.name for l in preact.layers[:9]] == [
      "images", "conv1", "layer1_0_bn1", "layer1_0_relu1", "layer1_0_conv1",
      "layer1_0_bn2", "layer1_0_relu2", "layer1_0_conv2", "layer1_0_add"]
  assert [l.name for l in preact.layers[-4:]] == ["bn", "relu", "pool",
                                                  "logits"]
  assert _kinds(preact, ("conv1", "bn", "relu", "pool", "logits")) == [
      "Conv2D", "BatchNormalization", "ReLU", "GlobalAveragePooling2D",
      "Dense"]
  assert preact.get_layer("conv1").filters == 64
  convs = [l for l in preact.layers if isinstance(l, keras.layers.Conv2D)]
  # The stem, 16 block convolutions and 3 shortcuts, all without bias.
  assert len(convs) == 20 and not any(l.use_bias for l in convs)
  assert preact.get_layer("logits").use_bias
  bns = [l for l in preact.layers
         if isinstance(l, keras.layers.BatchNormalization)]
  assert len(bns) == 17
  assert all(l.epsilon == 1e-5 and l.momentum == 0.9 for l in bns)
  for stage, (filters, stride) in enumerate(
      ((64, 1), (128, 2), (256, 2), (512, 2)), start=1):
    first = preact.get_layer(f"layer{stage}_0_conv1")
    assert (first.filters, first.strides) == (filters, (stride, stride))
    assert preact.get_layer(f"layer{stage}_1_conv1").strides == (1, 1)
  # A block that changes shape: the 1x1 stride-2 shortcut reads the
  # pre-activated input, the same tensor as conv1 (after PyTorch's padding
  # of one pixel on every side).
  relu1 = preact.get_layer("layer2_0_relu1").output
  shortcut = preact.get_layer("layer2_0_shortcut")
  assert (shortcut.kernel_size, shortcut.strides) == ((1, 1), (2, 2))
  assert shortcut.input is relu1
  pad = preact.get_layer("layer2_0_conv1_pad")
  assert pad.input is relu1 and pad.padding == ((1, 1), (1, 1))
  assert preact.get_layer("layer2_0_conv1").padding == "valid"
  add = preact.get_layer("layer2_0_add")
  assert add.input[0] is preact.get_layer("layer2_0_conv2").output
  assert add.input[1] is shortcut.output
  # A block that keeps its shape adds its input itself, not pre-activated.
  assert (preact.get_layer("layer2_1_add").input[1] is
          preact.get_layer("layer2_0_add").output)
  assert "layer1_0_shortcut" not in [l.name for l in preact.layers]
  assert preact.get_layer("layer4_1_add").output.shape[1:] == (4, 4, 512)


def test_preact_resnet18_outputs_logits_and_trains_a_step():
  model = models.build("preact_resnet18", num_classes=3,
                       image_shape=(8, 8, 3))
  x = tf.random.stateless_uniform([4, 8, 8, 3], [0, 2])
  y = tf.constant([0, 1, 2, 0])
  assert model(x, training=False).shape == (4, 3)
  optimizer = keras.optimizers.SGD(0.1)
  before = [w.numpy() for w in model.trainable_weights]
  with tf.GradientTape() as tape:
    loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(
        y, model(x, training=True), from_logits=True))
  optimizer.apply(tape.gradient(loss, model.trainable_weights),
                  model.trainable_weights)
  assert np.isfinite(loss.numpy())
  after = [w.numpy() for w in model.trainable_weights]
  assert all(not np.array_equal(a, b) for a, b in zip(before, after))


# A Keras model file ---------------------------------------------------------


def _saved(path, input_shape=(8, 8, 3), units=10, activation=None,
           inputs=1):
  """Saves a small functional model and returns its path and the model."""
  ins = [keras.Input(input_shape) for _ in range(inputs)]
  x = ins[0] if inputs == 1 else keras.layers.Concatenate()(ins)
  if len(input_shape) == 3:
    x = keras.layers.Conv2D(4, 3)(x)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
  out = keras.layers.Dense(units, activation=activation)(x)
  model = keras.Model(ins if inputs > 1 else ins[0], out)
  model.save(path)
  return str(path), model


def _build_file(path, **settings):
  return models.build("keras", num_classes=10, image_shape=(8, 8, 3),
                      model_path=path, **settings)


def test_keras_file_builds_from_scratch_or_from_its_saved_weights(tmp_path):
  path, saved = _saved(tmp_path / "net.keras")
  scratch = _build_file(path, sync_batch_norm=True)
  assert [type(l) for l in scratch.layers] == [type(l) for l in saved.layers]
  # New variables, re-initialised: the kernels differ, BatchNorm's are 1, 0.
  assert scratch.weights[0] is not saved.weights[0]
  assert not np.array_equal(scratch.get_weights()[0], saved.get_weights()[0])
  bns = [l for l in scratch.layers
         if isinstance(l, keras.layers.BatchNormalization)]
  assert bns and all(l.synchronized for l in bns)
  loaded = _build_file(path, model_weights="saved")
  assert loaded.weights[0] is not saved.weights[0]
  for a, b in zip(loaded.get_weights(), saved.get_weights()):
    np.testing.assert_array_equal(a, b)
  x = np.random.RandomState(0).rand(2, 8, 8, 3).astype(np.float32)
  np.testing.assert_allclose(loaded(x, training=False),
                             saved(x, training=False), rtol=1e-6)


@keras.saving.register_keras_serializable(package="test_models")
class _Subclassed(keras.Model):

  def __init__(self, **kwargs):
    super().__init__(**kwargs)
    self.dense = keras.layers.Dense(10)

  def call(self, x):
    return self.dense(keras.ops.mean(x, axis=(1, 2)))


def _save_subclassed(path):
  model = _Subclassed()
  model(np.zeros((1, 8, 8, 3), np.float32))
  model.save(path)


@pytest.mark.parametrize("write, settings, message", [
    (lambda p: _saved(p, input_shape=(16, 16, 3)), {},
     "takes inputs of shape (16, 16, 3), but the dataset's images are "
     "(8, 8, 3): save the model with keras.Input((8, 8, 3))"),
    (lambda p: _saved(p, input_shape=(192,)), {},
     "takes inputs of shape (192,)"),
    (lambda p: _saved(p, units=100), {}, "outputs shape (100,) per image, "
     "but the dataset has 10 classes: end the model with 10 logits"),
    (lambda p: _saved(p, activation="softmax"), {},
     "with a probability output: save it without the final softmax"),
    (lambda p: _saved(p, inputs=2), {}, "has 2 inputs and 1 outputs"),
    (_save_subclassed, {}, "holds a subclassed model, with no declared "
     "input: save a functional or Sequential model"),
    (lambda p: p.write_bytes(b"not a zip file"), {},
     "cannot read the Keras model"),
    (lambda p: None, {}, "cannot read the Keras model"),
    (lambda p: _saved(p), {"model_weights": "pretrained"},
     "--model_weights=pretrained is not one of scratch, saved"),
])
def test_a_keras_file_that_does_not_fit_is_a_one_line_user_error(
    tmp_path, write, settings, message):
  path = tmp_path / "net.keras"
  write(path)
  with pytest.raises(errors.UserError) as e:
    _build_file(str(path), **settings)
  assert message in str(e.value), str(e.value)
  assert "\n" not in str(e.value)


def test_a_keras_model_path_must_name_a_keras_file(tmp_path):
  with pytest.raises(errors.UserError, match=r"net.h5 is not a \.keras file: "
                     r"pass --model_path=a \.keras file"):
    _build_file(str(tmp_path / "net.h5"))
