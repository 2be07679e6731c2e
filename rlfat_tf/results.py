"""The results file of an evaluation, and the per-example file beside it.

``rlfat_tf.evaluate`` and ``robustness.Report.write`` write the same two
files: ``<stem>.json`` (settings, metrics, checks, times, hardware) and
``<stem>_examples.npz`` (the labels and each per-example verdict), so a
``report`` reads either. Both are written whole or not at all
(``files.write_json``, ``files.write_bytes``).
"""

import io
import os
import platform

import keras
import numpy as np
import tensorflow as tf

from rlfat_tf import files

SCHEMA_VERSION = 1
EXAMPLES_SUFFIX = "examples.npz"


def hardware():
  """Where the evaluation ran."""
  return {"platform": platform.platform(),
          "processor": platform.processor(),
          "cpu_count": os.cpu_count(),
          "devices": [d.name for d in tf.config.list_logical_devices()],
          "tensorflow": tf.__version__, "keras": keras.__version__,
          "python": platform.python_version()}


def sibling(output, suffix):
  """A file beside the results file: <stem>_<suffix>."""
  stem = os.path.splitext(os.path.basename(output))[0]
  return os.path.join(os.path.dirname(output), f"{stem}_{suffix}")


def write(output, payload, labels, per_example):
  """Writes the per-example file, then the results file that names it.

  Args:
    output: the results file (.json).
    payload: its content but ``schema_version``, ``per_example`` and
      ``hardware``, which are filled in here.
    labels: int [N] labels of the evaluated images.
    per_example: name -> bool array of per-example verdicts.

  Returns:
    The payload written.
  """
  examples_path = sibling(output, EXAMPLES_SUFFIX)
  buffer = io.BytesIO()
  np.savez(buffer, labels=np.asarray(labels), **per_example)
  files.write_bytes(examples_path, buffer.getvalue())
  payload = {"schema_version": SCHEMA_VERSION, **payload,
             "per_example": {"file": os.path.basename(examples_path)},
             "hardware": hardware()}
  files.write_json(output, payload)
  return payload
