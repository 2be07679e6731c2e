"""Atomic file writes: a reader, or a killed writer, never leaves half a file.

Every file that a command writes whole (run records, metrics, results,
reports, manifests, arrays) goes to a temporary file beside its target and is
renamed onto it once complete. Local paths use the standard library only;
paths with a scheme (``gs://bucket/run/metrics.json``) go through
TensorFlow's file systems, which this module imports only for them, so that
``edge_eval`` can use it where TensorFlow is not installed.
"""

import json
import os

TEMP_SUFFIX = ".tmp"


def _is_remote(path):
  return "://" in str(path)


def write_bytes(path, data):
  """Writes ``data`` to ``path`` atomically; the folder must exist.

  Args:
    path: a local path or a TensorFlow file-system URL (``gs://...``).
    data: the file's whole content.

  Raises:
    OSError: (local paths) the file cannot be written; no temporary file is
      left behind.
  """
  path = str(path)
  tmp = path + TEMP_SUFFIX
  if _is_remote(path):
    # Imported here: local writes, the edge evaluator's among them, must not
    # need TensorFlow.
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    with tf.io.gfile.GFile(tmp, "wb") as f:
      f.write(data)
    tf.io.gfile.rename(tmp, path, overwrite=True)
    return
  try:
    with open(tmp, "wb") as f:
      f.write(data)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def write_text(path, text):
  """Writes ``text`` as UTF-8 to ``path`` atomically (see ``write_bytes``)."""
  write_bytes(path, text.encode("utf-8"))


def write_json(path, payload):
  """Writes ``payload`` as JSON (2-space indents, sorted keys) atomically.

  The payload is serialised before anything is written, so a value JSON
  cannot hold leaves the previous file in place. See ``write_bytes``.
  """
  write_text(path, json.dumps(payload, indent=2, sort_keys=True))
