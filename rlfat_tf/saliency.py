"""SmoothGrad salience maps (the paper's Figure 3).

SmoothGrad (Smilkov et al., 2017, "SmoothGrad: removing noise by adding
noise") averages the input gradient of the true-class logit over noisy copies
of the image:

    g(x) = (1 / n) sum_s grad_x z_y(x + e_s),  e_s ~ N(0, sigma^2),
    sigma = noise_level * (max(x) - min(x)),

with the range taken over the pixels and channels of each image. The noisy
copies are not clipped to [0, 1], as in the paper. A map is the sum over
channels of |g(x)|: the absolute value follows the paper's visualisation, and
summing (rather than taking the maximum) over channels is the grayscale
reduction of the authors' PAIR ``saliency`` library. BatchNorm runs in eval
mode.

Maps are saved with their images and labels in one ``.npz`` file, so the
report can place several models' maps of the same images side by side.
"""

import io

import numpy as np
import tensorflow as tf

from rlfat_tf import data
from rlfat_tf import errors
from rlfat_tf import files
from rlfat_tf import progress


def smoothgrad(model, images, labels, noise_level=0.1, samples=50, seed=0,
               batch_size=100, verbose=1):
  """SmoothGrad magnitude maps of the true-class logit.

  The noise of each image comes from a stateless seed keyed by ``seed`` and
  the image's position, so the maps do not depend on ``batch_size``.

  Args:
    model: Keras model mapping images in [0, 1] to logits.
    images: [K, H, W, 3] images, uint8 or float in [0, 1].
    labels: int [K] true labels; the gradient is that of their logits.
    noise_level: noise standard deviation as a fraction of each image's value
      range (the paper recommends 0.1 to 0.2).
    samples: noisy copies averaged per image.
    seed: integer seed of the noise.
    batch_size: images per gradient computation.
    verbose: how progress over batches is shown, a ``progress.Mode``
      (1: a bar on a terminal, plain lines otherwise; 2: the bar; 0: none).

  Returns:
    float32 [K, H, W]: per image, the channel sum of the absolute averaged
    gradient.
  """
  if samples < 1:
    raise ValueError(f"samples must be at least 1, got {samples}")
  if noise_level < 0:
    raise ValueError(f"noise_level must be non-negative, got {noise_level}")
  dataset = data.eval_dataset(images, labels, batch_size=batch_size,
                              seed=seed)
  spec = dataset.element_spec

  @tf.function(input_signature=[spec["image"], spec["label"], spec["seed"]])
  def batch_maps(batch_images, batch_labels, seeds):
    ranges = (tf.reduce_max(batch_images, axis=[1, 2, 3]) -
              tf.reduce_min(batch_images, axis=[1, 2, 3]))
    sigma = noise_level * ranges[:, tf.newaxis, tf.newaxis, tf.newaxis]
    shape = tf.shape(batch_images)[1:]
    total = tf.zeros_like(batch_images)
    for sample in tf.range(samples):
      noise = tf.map_fn(
          lambda s: tf.random.stateless_normal(
              shape, tf.random.experimental.stateless_fold_in(s, sample)),
          seeds, fn_output_signature=tf.float32)
      noisy = batch_images + sigma * noise
      with tf.GradientTape() as tape:
        tape.watch(noisy)
        # With BatchNorm in eval mode each logit depends only on its own
        # image, so the gradient of the sum holds per-image gradients.
        logits = model(noisy, training=False)
        target = tf.reduce_sum(
            tf.one_hot(batch_labels, tf.shape(logits)[-1]) * logits)
      total += tape.gradient(target, noisy)
    return tf.reduce_sum(tf.abs(total / samples), axis=-1)

  num_batches = -(-len(images) // batch_size)
  progbar = progress.progbar(num_batches, verbose=verbose, unit_name="batch")
  maps = []
  for batch in dataset:
    maps.append(batch_maps(batch["image"], batch["label"], batch["seed"]))
    progbar.add(1)
  if not maps:
    return np.zeros((0,) + tuple(np.shape(images)[1:3]), np.float32)
  return np.concatenate([m.numpy() for m in maps]).astype(np.float32)


def save_maps(path, images, labels, maps):
  """Writes images, labels and salience maps to one ``.npz`` file atomically.

  Args:
    path: destination file (local or any ``tf.io.gfile`` path).
    images: [K, H, W, 3] images, uint8 or float in [0, 1]; stored as float32.
    labels: int [K].
    maps: [K, H, W] salience maps.
  """
  images = np.asarray(images)
  if images.dtype == np.uint8:
    images = images.astype(np.float32) / 255.0
  images = images.astype(np.float32)
  labels = np.asarray(labels, np.int32)
  maps = np.asarray(maps, np.float32)
  _check_shapes(path, images, labels, maps)
  buffer = io.BytesIO()
  np.savez(buffer, images=images, labels=labels, maps=maps)
  files.write_bytes(path, buffer.getvalue())


def load_maps(path):
  """Reads a file written by ``save_maps``.

  Args:
    path: the ``.npz`` file.

  Returns:
    ``(images, labels, maps)``: float32 [K, H, W, 3], int32 [K], float32
    [K, H, W].

  Raises:
    errors.UserError: the file is missing, unreadable or malformed.
  """
  fix = "rerun rlfat_tf.evaluate to rewrite it"
  if not tf.io.gfile.exists(path):
    raise errors.UserError(f"salience file {path} is missing: {fix}")
  try:
    with tf.io.gfile.GFile(path, "rb") as f:
      content = np.load(io.BytesIO(f.read()))
      arrays = {key: content[key] for key in ("images", "labels", "maps")}
  except (OSError, ValueError, KeyError) as e:
    raise errors.UserError(
        f"salience file {path} is not a readable images/labels/maps .npz "
        f"({type(e).__name__}): {fix}") from e
  images = arrays["images"].astype(np.float32)
  labels = arrays["labels"].astype(np.int32)
  maps = arrays["maps"].astype(np.float32)
  try:
    _check_shapes(path, images, labels, maps)
  except ValueError as e:
    raise errors.UserError(f"{e}: {fix}") from e
  return images, labels, maps


def _check_shapes(path, images, labels, maps):
  if (images.ndim != 4 or images.shape[-1] != 3 or
      labels.shape != images.shape[:1] or maps.shape != images.shape[:3]):
    raise ValueError(
        f"salience file {path} needs images [K, H, W, 3], labels [K] and maps "
        f"[K, H, W], got {images.shape}, {labels.shape} and {maps.shape}")
