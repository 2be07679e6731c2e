"""Loss sensitivity under brightness and gamma changes (the paper's Table 2).

The loss sensitivity of a model at a set of images is the mean L2 norm of the
input gradient of its cross-entropy loss,

    (1 / N) sum_i || grad_x CE(f(t(x_i)), y_i) ||_2,

where ``t`` is an image transformation: a brightness change (the official
``utils.brightness``, applied with c = -0.15 by ``run_smooth_test.py``) or a
gamma mapping x -> x^gamma. The gradient is taken with respect to the model's
input, i.e. the transformed image, because the official code feeds the
transformed array into the model's input placeholder. BatchNorm runs in eval
mode.

The official ``run_smooth_test.py`` reads the adversarial test set written by
its PGD script, ``pgd_attack_test.py``: the PGD output of every test image,
including those the model already misclassifies, made with the config's k
(10 steps on CIFAR-10, 7 on CIFAR-100 and STL-10), step 0.0075, epsilon 0.03,
a uniform start and BatchNorm in eval mode. ``attacked_inputs`` makes those
images; ``loss_sensitivity`` measures whatever images it is given.
"""

import time

import numpy as np
import tensorflow as tf

from rlfat_tf import data
from rlfat_tf import progress
from rlfat_tf.attacks import losses
from rlfat_tf.attacks import pgd


def brightness(images, delta):
  """Shifts the HSV value (brightness) of images, as ``utils.brightness``.

  Args:
    images: float [..., H, W, 3] RGB images in [0, 1].
    delta: amount added to the HSV value channel (negative darkens).

  Returns:
    Images of the same shape: RGB -> HSV, V + delta clipped to [0, 1],
    HSV -> RGB, clipped to [0, 1].
  """
  hsv = tf.image.rgb_to_hsv(images)
  hue, saturation, value = tf.unstack(hsv, axis=-1)
  value = tf.clip_by_value(value + delta, 0.0, 1.0)
  rgb = tf.image.hsv_to_rgb(tf.stack([hue, saturation, value], axis=-1))
  return tf.clip_by_value(rgb, 0.0, 1.0)


def gamma(images, g):
  """Gamma mapping x -> x^g of images in [0, 1].

  Args:
    images: float images in [0, 1].
    g: the exponent, > 0 (below 1 brightens, above 1 darkens).

  Returns:
    ``images ** g``, same shape.
  """
  if g <= 0:
    raise ValueError(f"gamma must be positive, got {g}")
  return tf.pow(images, g)


def attacked_inputs(model, images, labels, spec, *, batch_size, seed=0,
                    verbose=1, saved=None):
  """The output of an attack for every image, as the official inputs.

  Unlike the evaluation attacks of ``robustness``, which keep the clean image
  of an example the model misclassifies, every image is attacked.

  Args:
    model: Keras model mapping images in [0, 1] to logits.
    images: [N, H, W, 3] images, uint8 or float in [0, 1].
    labels: int [N] true labels.
    spec: the ``pgd.AttackSpec`` to run (officially ``pgd.pgd(0.03, 0.0075,
      k, "eval")``).
    batch_size: images per compiled call.
    seed: seed of the per-example random starts (``data.eval_dataset``).
    verbose: how progress over batches is shown, a ``progress.Mode``
      (1: a bar on a terminal, plain lines otherwise; 2: the bar; 0: none).
    saved: an ``evalstate.Run`` whose batches are taken as they are, the
      rest saved as they finish; or None.

  Returns:
    float32 [N, H, W, 3] adversarial examples.
  """
  total = -(-len(images) // batch_size)
  out = [b["adversarial"] for b in (saved.batches if saved else [])]
  progbar = progress.progbar(total, verbose=verbose, unit_name="batch")
  if out:
    progbar.update(len(out))
  # The batches on disk are the first ones: the rest starts where they end.
  start = sum(len(b) for b in out)
  if start == len(images):
    return np.concatenate(out)
  positions = np.arange(start, len(images))
  dataset = data.eval_dataset(images[start:], labels[start:],
                              batch_size=batch_size, seed=seed,
                              positions=positions)
  spec_of = dataset.element_spec
  attack = tf.function(
      lambda x, y, s: pgd.perturb(model, spec, x, y, s),
      input_signature=[spec_of["image"], spec_of["label"], spec_of["seed"]])
  mark = time.perf_counter()
  for number, batch in enumerate(dataset, start=len(out)):
    out.append(attack(batch["image"], batch["label"], batch["seed"]).numpy())
    progbar.add(1)
    if saved is not None:
      now = time.perf_counter()
      saved.save(number, {"adversarial": out[-1],
                          "seconds": np.float64(now - mark)}, total)
      mark = now
  return np.concatenate(out)


def setting_key(kind, value):
  """The metric key of one setting, e.g. ``sensitivity/brightness_-0.15``."""
  return f"sensitivity/{kind}_{value:g}"


def _transforms(brightness_values, gamma_values):
  """Metric key -> image transformation, for every requested setting."""
  out = {}
  for value in brightness_values:
    out[setting_key("brightness", value)] = (
        lambda x, v=float(value): brightness(x, v))
  for value in gamma_values:
    out[setting_key("gamma", value)] = lambda x, v=float(value): gamma(x, v)
  return out


def loss_sensitivity(  # pylint: disable=redefined-outer-name
    model, images, labels, brightness=(-0.15,), gamma=(), batch_size=100,
    verbose=1):
  """Mean input-gradient norm of the cross-entropy after each transformation.

  Args:
    model: Keras model mapping images in [0, 1] to logits.
    images: [N, H, W, 3] images, uint8 or float in [0, 1].
    labels: int [N] true labels.
    brightness: brightness deltas, one setting each.
    gamma: gamma exponents, one setting each.
    batch_size: images per gradient computation.
    verbose: how progress over batches is shown, a ``progress.Mode``
      (1: a bar on a terminal, plain lines otherwise; 2: the bar; 0: none).

  Returns:
    Dict mapping ``sensitivity/brightness_<v>`` and ``sensitivity/gamma_<v>``
    (``v`` formatted with ``:g``) to the mean L2 norm over the N images.
  """
  transforms = _transforms(brightness, gamma)
  if not transforms or not len(images):
    return {}
  dataset = data.eval_dataset(images, labels, batch_size=batch_size)
  spec = dataset.element_spec

  @tf.function(input_signature=[spec["image"], spec["label"]])
  def gradient_norm_sums(batch_images, batch_labels):
    sums = []
    for transform in transforms.values():
      inputs = transform(batch_images)
      with tf.GradientTape() as tape:
        tape.watch(inputs)
        # Each example's loss depends only on its own input (BatchNorm is in
        # eval mode), so the gradient of the summed loss holds the
        # per-example gradients in its rows, as in the official code.
        loss = tf.reduce_sum(losses.cross_entropy(
            model(inputs, training=False), batch_labels))
      grad = tape.gradient(loss, inputs)
      flat = tf.reshape(grad, [tf.shape(grad)[0], -1])
      sums.append(tf.reduce_sum(tf.norm(flat, axis=1)))
    return tf.stack(sums)

  totals = np.zeros(len(transforms), np.float64)
  num_batches = -(-len(images) // batch_size)
  progbar = progress.progbar(num_batches, verbose=verbose, unit_name="batch")
  for batch in dataset:
    totals += gradient_norm_sums(batch["image"], batch["label"]).numpy()
    progbar.add(1)
  return {key: float(total / len(images))
          for key, total in zip(transforms, totals)}
