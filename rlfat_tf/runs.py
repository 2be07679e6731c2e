"""A training run on disk: its resolved flags, its model and its checkpoints.

``rlfat_tf.train`` writes ``flags.json`` (every flag after defaults are
resolved) into the run directory; evaluation and export read it back to
rebuild the same model and restore its weights.
"""

import json
import os

from absl import flags
import tensorflow as tf

from rlfat_tf import datasets
from rlfat_tf import errors
from rlfat_tf import models

FLAGS_FILE = "flags.json"


def flags_path(model_dir):
  return os.path.join(model_dir, FLAGS_FILE)


def load_flags(model_dir):
  """The resolved flags of the run in ``model_dir``.

  Raises:
    errors.UserError: the directory holds no run.
  """
  path = flags_path(model_dir)
  if not tf.io.gfile.exists(path):
    raise errors.UserError(
        f"{model_dir} holds no training run ({FLAGS_FILE} is missing): pass "
        f"the --model_dir given to rlfat_tf.train")
  with tf.io.gfile.GFile(path) as f:
    return json.load(f)


def save_flags(model_dir, values):
  """Writes the resolved flags atomically."""
  tf.io.gfile.makedirs(model_dir)
  path = flags_path(model_dir)
  with tf.io.gfile.GFile(path + ".tmp", "w") as f:
    json.dump(values, f, indent=2, sort_keys=True)
  tf.io.gfile.rename(path + ".tmp", path, overwrite=True)


def build_model(run_flags, sync_batch_norm=False):
  """The (untrained) model that a run with these flags trains."""
  info = datasets.get(run_flags["dataset"])
  return models.wide_resnet(run_flags["depth"], run_flags["width"],
                            info.num_classes, info.image_shape,
                            sync_batch_norm=sync_batch_norm)


def checkpoint_path(model_dir, which="last"):
  """Path of the run's last or best checkpoint.

  Raises:
    errors.UserError: there is no such checkpoint.
  """
  folder = {"last": "checkpoints", "best": "best"}[which]
  path = tf.train.latest_checkpoint(os.path.join(model_dir, folder))
  if path is None:
    hint = ("train with --val_size > 0 to keep a best checkpoint"
            if which == "best" else "train first, or check --model_dir")
    raise errors.UserError(f"{model_dir} has no {which} checkpoint: {hint}")
  return path


def restore_model(model_dir, which="last"):
  """Rebuilds a run's model and restores its weights.

  Returns:
    ``(model, run_flags, checkpoint_path)``.
  """
  run_flags = load_flags(model_dir)
  model = build_model(run_flags)
  path = checkpoint_path(model_dir, which)
  status = tf.train.Checkpoint(model=model).restore(path)
  # Every model variable must come from the checkpoint; the optimizer and
  # iterator it also holds are not needed here.
  status.assert_existing_objects_matched().expect_partial()
  return model, run_flags, path


def register_radius_validators(flag_values, names=("epsilon", "step_size")):
  """Makes the named float flags accept only values in (0, 1] (or unset).

  Attack radii and steps are in pixel units of [0, 1] images; the message
  says so, since 8 (for 8/255) is the usual mistake.
  """
  for name in names:
    flags.register_validator(
        name, lambda v: v is None or 0.0 < v <= 1.0,
        message=f"--{name} must be in (0, 1] (images are in [0, 1]; e.g. "
        f"0.03 for 7.65/255)", flag_values=flag_values)
