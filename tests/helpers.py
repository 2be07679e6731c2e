"""Constants and helpers that several test modules share.

Test modules import it as ``helpers`` (pytest puts tests/ on the import path);
the shared fixtures, the smoke run among them, are in conftest.py. It imports
TensorFlow and Keras only inside the helpers that need them, so that a test
module without TensorFlow (the run lock, the files, the CLI) stays quick to
run on its own.
"""

import os
import pathlib
import socket
import subprocess
import sys
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
SMOKE = str(ROOT / "flags" / "smoke.cfg")
# Every command a test starts: quiet TensorFlow on the CPU, this checkout
# importable, and no cluster inherited from the shell that runs the tests.
ENV = dict({k: v for k, v in os.environ.items() if k != "TF_CONFIG"},
           TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="",
           PYTHONPATH=str(ROOT))


def run_module(module, *argv, timeout=600, cwd=ROOT, **kwargs):
  """Runs ``python -m module argv`` as a user would; never raises on failure.

  Args:
    module: the module to run, e.g. "rlfat_tf.train".
    *argv: its command-line arguments.
    timeout: seconds before ``subprocess.TimeoutExpired``.
    cwd: the folder to run it in (the repository root by default, where the
      flagfiles' nested paths resolve).
    **kwargs: more ``subprocess.run`` arguments.

  Returns:
    The ``subprocess.CompletedProcess``, with its output as text.
  """
  return subprocess.run([sys.executable, "-m", module, *argv],
                        capture_output=True, text=True, env=ENV, cwd=cwd,
                        timeout=timeout, check=False, **kwargs)


def evaluate_values(*argv):
  """``rlfat_tf.evaluate``'s values for ``argv``, to call ``evaluate.run``."""
  from rlfat_tf import evaluate  # pylint: disable=import-outside-toplevel
  return evaluate.values_from_argv(["evaluate", *argv])


def checkpoint_values(path, prefix="model/"):
  """The numeric values of a checkpoint whose names start with ``prefix``."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  reader = tf.train.load_checkpoint(path)
  # The iterator's state is a variant tensor with no numpy form; the weights
  # and optimizer slots are what must agree.
  return {k: reader.get_tensor(k)
          for k, dtype in reader.get_variable_to_dtype_map().items()
          if k.startswith(prefix) and dtype != tf.variant
          and "OBJECT_GRAPH" not in k}


def wait_for_checkpoint(folder, step, alive, timeout=240):
  """Waits until checkpoint ``step`` in ``folder`` is wholly written.

  A checkpoint's ``.index`` file appears before its last byte is written, so
  a process killed the moment it appears leaves that checkpoint damaged; the
  ``checkpoint`` state file, replaced atomically once the save is done, names
  it only then. Returns whether it was, giving up once ``alive()`` is false
  or after ``timeout`` seconds.
  """
  state = pathlib.Path(folder) / "checkpoint"
  deadline = time.time() + timeout
  while time.time() < deadline and alive():
    if state.exists() and f'"ckpt-{step}"' in state.read_text():
      return True
    time.sleep(0.01)
  return False


def free_ports(n):
  """``n`` distinct TCP ports on 127.0.0.1 that were free a moment ago."""
  sockets = [socket.socket() for _ in range(n)]
  for s in sockets:
    s.bind(("127.0.0.1", 0))
  ports = [s.getsockname()[1] for s in sockets]
  for s in sockets:
    s.close()
  return ports


def colour_model(scale=20.0, stage=None, softmax=False):
  """An undefended 3-class model: logit c is ``scale`` times channel c's mean.

  Args:
    scale: the logit per unit of channel mean.
    stage: a function applied to the input first (a Lambda layer), or None.
    softmax: end in a softmax, so the outputs are probabilities, not logits.

  Returns:
    A ``keras.Model`` of [N, 4, 4, 3] images.
  """
  import keras  # pylint: disable=import-outside-toplevel
  inputs = keras.Input((4, 4, 3))
  x = inputs if stage is None else keras.layers.Lambda(stage)(inputs)
  mean = keras.layers.GlobalAveragePooling2D()(x)
  logits = keras.layers.Dense(
      3, kernel_initializer=keras.initializers.Constant(scale * np.eye(3)),
      use_bias=False)(mean)
  if softmax:
    logits = keras.layers.Softmax()(logits)
  return keras.Model(inputs, logits)


def colour_data(num, seed=0):
  """Grey images with the true class's channel raised by 0.005 .. 0.08.

  Lowering that channel and raising another by eps = 0.03 closes a gap of
  0.06, so an optimal attack on ``colour_model`` breaks about three quarters
  of them.

  Returns:
    ``(images, labels)``: [num, 4, 4, 3] float32 and [num] int32.
  """
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, 3, num).astype(np.int32)
  colours = np.full((num, 3), 0.5, np.float32)
  colours[np.arange(num), labels] += rng.uniform(0.005, 0.08, num)
  images = np.broadcast_to(colours[:, None, None, :], (num, 4, 4, 3)).copy()
  return images, labels


def mock_tfds_metadata(root, tfds_name, splits=("train", "test"), count=5,
                       file_format=None):
  """Writes the dataset_info.json that ``tfds.testing.mock_data`` reads.

  The mock generates ``num_examples`` records for any split, but reports the
  split sizes (which ``datasets.get`` needs) only from this file under
  ``root``, its ``data_dir``.

  Args:
    root: the mock's data folder.
    tfds_name: "NAME" or "NAME/CONFIG".
    splits: the splits to declare.
    count: the examples declared per split (the mock's ``num_examples``).
    file_format: e.g. "array_record", to declare a random-access dataset.
  """
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  builder = tfds.builder(tfds_name, data_dir=str(root))
  builder.info.set_splits(tfds.core.SplitDict([
      tfds.core.SplitInfo(name=s, shard_lengths=[count], num_bytes=0,
                          filename_template=None) for s in splits]))
  if file_format:
    builder.info.as_proto.file_format = file_format
  os.makedirs(builder.data_dir)
  builder.info.write_to_directory(builder.data_dir)
