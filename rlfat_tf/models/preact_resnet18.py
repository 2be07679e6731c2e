"""PreAct ResNet-18, the model of Rice, Wong and Kolter (2020).

The architecture of ``preactresnet.py`` in locuslab/robust_overfitting
(commit c47a25c), "Overfitting in adversarially robust deep learning" (ICML
2020), which RobustBench builds for Rice et al.'s PreAct ResNet-18 entries
(``PreActResNet(..., bn_before_fc=True)`` in its ``model_zoo``):
- a 3x3 convolution to 64 filters;
- four stages of two ``PreActBlock``s with 64, 128, 256 and 512 filters and
  strides 1, 2, 2, 2; a block is BN-ReLU, 3x3 convolution (with the stride),
  BN-ReLU, 3x3 convolution, plus a shortcut: the block's input, or, where
  the shape changes, a 1x1 convolution with the stride (no BatchNorm) of the
  pre-activated input;
- a final BN-ReLU, global average pooling and a linear layer to logits.

The reference pools with ``avg_pool2d(4)`` over the 4x4 maps of a 32x32
input, which is global average pooling; pooling globally here gives the same
model on 32x32 images and a working one on other sizes (STL-10's 96x96).
Its parameters, as PyTorch counts them (weights, the linear layer's bias and
BatchNorm's gamma and beta), number 11,172,170 for 10 classes; Keras also
counts BatchNorm's moving mean and variance, 7,808 more non-trainable
weights. (RobustBench's ``PreActResNet18()`` and kuangliu/pytorch-cifar have
no final BatchNorm: 1,024 parameters fewer, 11,171,146.)

Faithful to PyTorch's layers, so the reference's weights could be ported
layer by layer (the names follow its modules: ``layer2_0_conv1`` is
``layer2.0.conv1``):
- convolutions have no bias; the linear layer has one;
- a stride-2 3x3 convolution pads one pixel on every side, as PyTorch's
  ``padding=1`` does (Keras's "same" would pad only the bottom and right,
  shifting the sampling grid by a pixel);
- BatchNorm epsilon 1e-5 and momentum 0.9 (PyTorch's momentum 0.1 weighs
  the new batch; Keras's weighs the old average);
- PyTorch's default initialisation: kernels uniform in +-1/sqrt(fan_in)
  (``kaiming_uniform_`` with a = sqrt(5)), the linear bias too, BatchNorm
  gamma 1 and beta 0.

Raw pixels in [0, 1] go in, with no normalisation inside the model (Rice et
al. normalise by CIFAR-10's mean and deviation before the model; here, as
with the WideResNet, nothing does). Mixed precision follows the WideResNet:
layers take Keras's dtype policy, except the logits layer, which computes in
float32, and the float32 input is cast by the first convolution.
"""

import math

import keras

BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5
# (filters, stride of the first block) of each stage; two blocks per stage.
STAGES = ((64, 1), (128, 2), (256, 2), (512, 2))
BLOCKS_PER_STAGE = 2
STEM_FILTERS = 64


def _pytorch_uniform():
  """PyTorch's default kernel initialiser: uniform in +-1/sqrt(fan_in)."""
  return keras.initializers.VarianceScaling(1.0 / 3.0, mode="fan_in",
                                            distribution="uniform")


def _conv(x, filters, kernel_size, strides, name):
  if strides > 1 and kernel_size > 1:
    x = keras.layers.ZeroPadding2D(kernel_size // 2, name=f"{name}_pad")(x)
    padding = "valid"
  else:
    padding = "same"
  return keras.layers.Conv2D(
      filters, kernel_size, strides=strides, padding=padding, use_bias=False,
      kernel_initializer=_pytorch_uniform(), name=name)(x)


def _bn_relu(x, bn_name, relu_name, synchronized):
  x = keras.layers.BatchNormalization(
      momentum=BN_MOMENTUM, epsilon=BN_EPSILON, synchronized=synchronized,
      name=bn_name)(x)
  return keras.layers.ReLU(name=relu_name)(x)


def _block(x, in_filters, filters, strides, name, synchronized):
  """One ``PreActBlock``: the residual branch plus the shortcut."""
  out = _bn_relu(x, f"{name}_bn1", f"{name}_relu1", synchronized)
  if strides != 1 or in_filters != filters:
    shortcut = _conv(out, filters, 1, strides, f"{name}_shortcut")
  else:
    shortcut = x
  out = _conv(out, filters, 3, strides, f"{name}_conv1")
  out = _bn_relu(out, f"{name}_bn2", f"{name}_relu2", synchronized)
  out = _conv(out, filters, 3, 1, f"{name}_conv2")
  return keras.layers.Add(name=f"{name}_add")([out, shortcut])


def preact_resnet18(num_classes, image_shape, sync_batch_norm=False):
  """Builds PreAct ResNet-18 as a Keras functional model.

  Takes the arguments of ``wrn.wide_resnet`` but depth and width, and
  returns, like it, a ``keras.Model`` from float32 images in [0, 1] to
  float32 logits.
  """
  inputs = keras.Input(image_shape, name="images")
  x = _conv(inputs, STEM_FILTERS, 3, 1, "conv1")
  in_filters = STEM_FILTERS
  for stage, (filters, stride) in enumerate(STAGES, start=1):
    for block in range(BLOCKS_PER_STAGE):
      x = _block(x, in_filters, filters, stride if block == 0 else 1,
                 f"layer{stage}_{block}", sync_batch_norm)
      in_filters = filters
  x = _bn_relu(x, "bn", "relu", sync_batch_norm)
  x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
  bound = 1.0 / math.sqrt(in_filters)
  logits = keras.layers.Dense(
      num_classes, kernel_initializer=_pytorch_uniform(),
      bias_initializer=keras.initializers.RandomUniform(-bound, bound),
      dtype="float32", name="logits")(x)
  return keras.Model(inputs, logits, name="preact_resnet18")


def build(*, num_classes, image_shape, sync_batch_norm=False):
  """``preact_resnet18`` for the registry (it has no settings)."""
  return preact_resnet18(num_classes, image_shape,
                         sync_batch_norm=sync_batch_norm)


def describe():
  """The architecture's name in reports."""
  return "PreAct ResNet-18"
