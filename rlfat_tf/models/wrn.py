"""The Madry-style WideResNet that the official RLFAT code trains.

Structure (MadryLab/cifar10_challenge ``model.py``, as RLFAT uses it):
- a 3x3 convolution to 16 filters;
- three stages of ``n = (depth - 4) / 6`` pre-activation residual units with
  16k, 32k and 64k filters and strides 1, 2, 2;
- the first unit activates before the residual split, so its shortcut sees the
  normalised input; shortcuts that change shape average-pool with the stride
  and zero-pad the channels;
- BatchNorm, leaky ReLU 0.1, global average pooling and a dense layer to
  logits.

Raw pixels in [0, 1] go in: RLFAT removed Madry's per-image standardisation,
and nothing normalises the input outside the model either. Convolutions use
He initialisation on fan-out from an untruncated normal (the TF1 code's
``stddev = sqrt(2 / (k * k * out))``), the dense layer the uniform unit
scaling initialiser, BatchNorm momentum 0.9 and epsilon 1e-3.

Mixed precision: layers follow Keras's dtype policy at build time (e.g.
``mixed_bfloat16``), except the logits layer, which always computes in
float32, so losses, softmaxes and attack gradients never see 16-bit logits.
The input stays float32 and is cast by the first convolution, so the
gradient with respect to the image is float32 too.

``wide_resnet`` builds it; ``build`` and ``describe`` are what the registry
(``rlfat_tf.models``) calls, with the settings checked.
"""

import keras

from rlfat_tf import errors

LEAKY_SLOPE = 0.1
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-3

# Named configurations of the paper: (depth, width).
ARCHITECTURES = {
    "wrn-34-10": (34, 10),  # CIFAR-10 and CIFAR-100 (Madry's model).
    "wrn-40-2": (40, 2),  # STL-10.
}


def units_per_stage(depth):
  """Residual units per stage for a WRN of the given depth."""
  if depth < 10 or (depth - 4) % 6:
    raise ValueError(f"WRN depth must be 6n + 4 with n >= 1, got {depth}")
  return (depth - 4) // 6


def _conv(filters, strides, name):
  return keras.layers.Conv2D(
      filters, 3, strides=strides, padding="same", use_bias=False,
      kernel_initializer=keras.initializers.VarianceScaling(
          2.0, mode="fan_out", distribution="untruncated_normal"),
      name=name)


def _bn_relu(x, name, synchronized):
  x = keras.layers.BatchNormalization(
      momentum=BN_MOMENTUM, epsilon=BN_EPSILON, synchronized=synchronized,
      name=f"{name}_bn")(x)
  return keras.layers.LeakyReLU(negative_slope=LEAKY_SLOPE,
                                name=f"{name}_relu")(x)


def _shortcut(x, in_filters, out_filters, strides, name):
  if strides > 1:
    x = keras.layers.AveragePooling2D(strides, strides, padding="valid",
                                      name=f"{name}_pool")(x)
  if in_filters != out_filters:
    pad = (out_filters - in_filters) // 2
    x = keras.ops.pad(x, [[0, 0], [0, 0], [0, 0], [pad, pad]])
  return x


def _residual_unit(x, in_filters, out_filters, strides, activate_first, name,
                   synchronized):
  if activate_first:
    x = _bn_relu(x, f"{name}_pre", synchronized)
    orig = x
  else:
    orig = x
    x = _bn_relu(x, f"{name}_pre", synchronized)
  x = _conv(out_filters, strides, f"{name}_conv1")(x)
  x = _bn_relu(x, f"{name}_mid", synchronized)
  x = _conv(out_filters, 1, f"{name}_conv2")(x)
  orig = _shortcut(orig, in_filters, out_filters, strides, f"{name}_short")
  return keras.layers.Add(name=f"{name}_add")([x, orig])


def wide_resnet(depth, width, num_classes, image_shape,
                sync_batch_norm=False):
  """Builds the WideResNet WRN-depth-width as a Keras functional model.

  Args:
    depth: 6n + 4 (34 for the CIFAR model, 40 for STL-10, 10 for tests).
    width: widening factor k (stage filters 16k, 32k, 64k).
    num_classes: number of logits.
    image_shape: (H, W, C) of the [0, 1] input images.
    sync_batch_norm: use cross-replica batch statistics under a
      ``tf.distribute`` strategy, so a batch split across replicas is
      normalised as one batch.

  Returns:
    A ``keras.Model`` mapping float32 images to float32 logits.
  """
  n = units_per_stage(depth)
  filters = [16, 16 * width, 32 * width, 64 * width]
  inputs = keras.Input(image_shape, name="images")
  x = _conv(filters[0], 1, "init_conv")(inputs)
  for stage, strides in enumerate((1, 2, 2), start=1):
    for unit in range(n):
      first = unit == 0
      x = _residual_unit(
          x,
          in_filters=filters[stage - 1] if first else filters[stage],
          out_filters=filters[stage],
          strides=strides if first else 1,
          activate_first=first and stage == 1,
          name=f"stage{stage}_unit{unit}",
          synchronized=sync_batch_norm)
  x = _bn_relu(x, "final", sync_batch_norm)
  x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
  logits = keras.layers.Dense(
      num_classes,
      kernel_initializer=keras.initializers.VarianceScaling(
          1.0, mode="fan_in", distribution="uniform"),
      bias_initializer="zeros", dtype="float32", name="logits")(x)
  return keras.Model(inputs, logits, name=f"wrn-{depth}-{width}")


def build(*, depth, width, num_classes, image_shape, sync_batch_norm=False):
  """``wide_resnet`` for the registry, with its settings checked.

  Raises:
    errors.UserError: the depth is not 6n + 4 or the width is below 1.
  """
  try:
    units_per_stage(depth)
    if width < 1:
      raise ValueError(f"WRN width must be at least 1, got {width}")
  except ValueError as e:
    raise errors.UserError(
        f"depth {depth} and width {width} make no WideResNet "
        f"({errors.first_line(e)}): pass --depth=6n+4 (e.g. 10, 16, 28, 34 "
        f"or 40) and --width of at least 1") from None
  return wide_resnet(depth, width, num_classes, image_shape,
                     sync_batch_norm=sync_batch_norm)


def describe(*, depth, width):
  """The architecture's name in reports, e.g. "WRN-34-10"."""
  return f"WRN-{depth}-{width}"
