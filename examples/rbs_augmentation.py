"""Adds the Random Block Shuffle to a keras-cv / tf.data augmentation pipeline.

  python -m examples.rbs_augmentation

RBS cuts each image into blocks at random rows and columns and shuffles them
(``rlfat_tf.RandomBlockShuffle``, a keras-cv layer); here it follows a flip in
an ordinary input pipeline, e.g. for RBS-augmented standard training or to
look at what the transform does.
"""

import keras_cv
import numpy as np
import tensorflow as tf

import rlfat_tf


def main(images, labels, batch_size=32, blocks=2, seed=0):
  """The augmented batches of ``images`` (float [N, H, W, C] in [0, 1])."""
  augment = tf.keras.Sequential([
      keras_cv.layers.RandomFlip("horizontal", seed=seed),
      rlfat_tf.RandomBlockShuffle(blocks=blocks, granularity="example",
                                  seed=seed + 1),
  ])
  return (tf.data.Dataset.from_tensor_slices((images, labels))
          .batch(batch_size)
          .map(lambda x, y: (augment(x, training=True), y),
               num_parallel_calls=tf.data.AUTOTUNE)
          .prefetch(tf.data.AUTOTUNE))


if __name__ == "__main__":
  x, y = rlfat_tf.datasets.load_split("cifar10_sample", "train")
  x = x[:64].astype(np.float32) / 255
  batch, _ = next(iter(main(x, y[:64])))
  # Flips and block shuffles only move pixels: each image keeps its values.
  kept = np.array_equal(np.sort(batch.numpy().reshape(32, -1), axis=1),
                        np.sort(x[:32].reshape(32, -1), axis=1))
  print(f"augmented batch {tuple(batch.shape)}; every image keeps its pixel "
        f"values: {kept}")
