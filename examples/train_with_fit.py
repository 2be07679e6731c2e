r"""Trains a small Keras CNN with RLFAT_P through ``compile`` / ``fit``.

  python -m examples.train_with_fit --steps=2000

``AdversarialTrainer`` wraps any Keras classifier of images in [0, 1]; its
train step is the command-line trainer's (PGD attack, Random Block Shuffle of
the adversarial example, the RLFAT_P objective). Validation reports clean and
PGD accuracy, which the callbacks can watch.
"""

import argparse
import os

import keras

import rlfat_tf


def small_cnn(image_shape, num_classes):
  """Not a WideResNet: any classifier of [0, 1] images to logits will do."""
  return keras.Sequential([
      keras.Input(image_shape),
      keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
      keras.layers.MaxPooling2D(),
      keras.layers.Conv2D(64, 3, padding="same", activation="relu"),
      keras.layers.GlobalAveragePooling2D(),
      keras.layers.Dense(num_classes),
  ])


def main(output_dir, steps=2000, batch_size=32, num_val=500, attack_steps=10,
         epsilon=0.03):
  """Trains on the embedded CIFAR-10 sample; returns the ``fit`` history."""
  x, y = rlfat_tf.datasets.load_split("cifar10_sample", "train")
  x_val, y_val = x[:num_val], y[:num_val]
  x, y = x[num_val:], y[num_val:]
  spec = rlfat_tf.datasets.get("cifar10_sample")
  trainer = rlfat_tf.AdversarialTrainer(
      small_cnn(spec.image_shape, spec.num_classes), "rlfat_p",
      epsilon=epsilon, step_size=epsilon / 4, attack_steps=attack_steps)
  trainer.compile(optimizer=keras.optimizers.Adam(1e-3, epsilon=1e-8))
  # An "epoch" here is a stretch of steps between validations.
  per_epoch = min(steps, 250)
  history = trainer.fit(
      x, y, batch_size=batch_size, epochs=-(-steps // per_epoch),
      steps_per_epoch=per_epoch,
      validation_data=(x_val, y_val),
      callbacks=[
          keras.callbacks.ModelCheckpoint(
              os.path.join(output_dir, "best.keras"),
              monitor="val_adv_accuracy", mode="max", save_best_only=True),
          keras.callbacks.EarlyStopping("val_adv_accuracy", mode="max",
                                        patience=3),
      ], verbose=2)
  trainer.model.save(os.path.join(output_dir, "classifier.keras"))
  return history


if __name__ == "__main__":
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--output_dir", default="runs/fit_example")
  parser.add_argument("--steps", type=int, default=2000)
  args = parser.parse_args()
  os.makedirs(args.output_dir, exist_ok=True)
  main(args.output_dir, args.steps)
