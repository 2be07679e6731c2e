"""Atomic file writes: a reader, or a killed writer, never leaves half a file.

Every file that a command writes whole (run records, metrics, results,
reports, manifests, arrays) goes to a temporary file beside its target and is
renamed onto it once complete. Local paths use the standard library only;
paths with a scheme (``gs://bucket/run/metrics.json``) go through
TensorFlow's file systems, which this module imports only for them, so that
``edge_eval`` can use it where TensorFlow is not installed.
"""

import errno
import json
import os
import re
import tempfile

from rlfat_tf import errors

TEMP_SUFFIX = ".tmp"

# Write failures that are the storage's, not the program's: what
# ``write_failure`` names them, by errno and by the strerror text TensorFlow's
# C++ file systems put in their messages (a full disk there raises
# ResourceExhaustedError, which reads like running out of memory).
_STORAGE_ERRORS = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EIO: "input/output error",
}


def _is_remote(path):
  return "://" in str(path)


def check_writable(folder, flag):
  """Fails at once if ``folder`` could not be made or written.

  Commands call it before any expensive work, so an unusable output path
  costs a second, not an evaluation. It creates nothing: the nearest existing
  ancestor of ``folder`` must be a folder that accepts a new file. Remote
  paths (``gs://...``) are not checked; their file system reports a failed
  write itself.

  Args:
    folder: the folder the command will write into.
    flag: the flag that named it, for the message (``"--output_dir"``).

  Raises:
    errors.UserError: naming the folder, the reason and the flag.
  """
  if _is_remote(folder):
    return
  existing = os.path.abspath(folder)
  while not os.path.exists(existing):
    existing = os.path.dirname(existing)
  try:
    if not os.path.isdir(existing):
      raise NotADirectoryError(20, "not a folder")
    with tempfile.TemporaryFile(dir=existing):
      pass
  except OSError as e:
    raise errors.UserError(
        f"cannot write to {folder} ({existing}: {e.strerror}): pass an "
        f"{flag} you can write to") from None


def check_output_file(path, flag):
  """Fails at once if the file ``path`` could not be written whole.

  Args:
    path: a file the command will write (its folder may not exist yet).
    flag: the flag that named it, for the message (``"--output"``).

  Raises:
    errors.UserError: ``path`` is a folder, or its folder is not writable
      (``check_writable``).
  """
  if _is_remote(path):
    return
  if os.path.isdir(path):
    raise errors.UserError(f"{path} is a folder, and {flag} writes a file "
                           f"there: pass another {flag}")
  check_writable(os.path.dirname(os.path.abspath(path)), flag)


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


def write_failure(error):
  """What a failed write was, when the storage refused it.

  Args:
    error: an ``OSError`` or a TensorFlow ``OpError`` (``.message``).

  Returns:
    ``(reason, path)``, e.g. ``("no space left on device",
    "run/checkpoints/ckpt-6_temp/part-00000-of-00001.data-00000-of-00001")``,
    with ``path`` None when the error names no file; None when the error is
    not a storage failure.
  """
  if isinstance(error, OSError) and error.errno in _STORAGE_ERRORS:
    return _STORAGE_ERRORS[error.errno], error.filename
  message = getattr(error, "message", None)
  if not isinstance(message, str):
    return None
  for code, reason in _STORAGE_ERRORS.items():
    text = os.strerror(code)
    if text in message:
      # TensorFlow writes "PATH[.tempstateN]; <strerror>" after the op's name.
      named = re.search(r"(\S+?)(?:\.tempstate\d+)?; " + re.escape(text),
                        message)
      return reason, named.group(1) if named else None
  return None
