"""Tests of the atomic writes in rlfat_tf.files."""

import errno
import json
import os
import pathlib
import subprocess
import sys

import pytest

from rlfat_tf import errors
from rlfat_tf import files

from helpers import ROOT


def test_writes_replace_the_file_and_leave_no_temporary(tmp_path):
  path = tmp_path / "a.json"
  path.write_text("old")
  files.write_json(path, {"b": 1, "a": [1, 2]})
  assert path.read_text() == '{\n  "a": [\n    1,\n    2\n  ],\n  "b": 1\n}'
  files.write_text(path, "é\n")
  assert path.read_bytes() == "é\n".encode("utf-8")
  files.write_bytes(path, b"\x00\x01")
  assert path.read_bytes() == b"\x00\x01"
  assert os.listdir(tmp_path) == ["a.json"]


def test_a_payload_json_cannot_hold_leaves_the_old_file(tmp_path):
  path = tmp_path / "a.json"
  files.write_json(path, {"step": 1})
  with pytest.raises(TypeError):
    files.write_json(path, {"step": object()})
  assert json.loads(path.read_text()) == {"step": 1}
  assert os.listdir(tmp_path) == ["a.json"]


def test_a_failed_write_removes_its_temporary(tmp_path):
  target = tmp_path / "folder"
  target.mkdir()
  # Renaming a file onto a folder fails after the temporary is written.
  with pytest.raises(OSError):
    files.write_text(target, "x")
  assert os.listdir(tmp_path) == ["folder"]


def test_a_missing_folder_is_an_error_not_created(tmp_path):
  with pytest.raises(FileNotFoundError):
    files.write_text(tmp_path / "no" / "a.txt", "x")
  assert not (tmp_path / "no").exists()


def test_urls_go_through_tensorflow_file_systems():
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  path = "ram://files_test/metrics.json"
  tf.io.gfile.makedirs("ram://files_test")
  files.write_json(path, {"step": 3})
  with tf.io.gfile.GFile(path) as f:
    assert json.load(f) == {"step": 3}
  assert not tf.io.gfile.exists(path + files.TEMP_SUFFIX)


def test_importing_it_loads_neither_tensorflow_nor_absl(tmp_path):
  script = ("import sys; from rlfat_tf import files; "
            f"files.write_json({str(tmp_path / 'a.json')!r}, {{}}); "
            "print(sorted({m.split('.')[0] for m in sys.modules} & "
            "{'tensorflow', 'keras', 'absl'}))")
  result = subprocess.run([sys.executable, "-c", script], capture_output=True,
                          text=True, cwd=ROOT, check=True, timeout=60)
  assert result.stdout.strip() == "[]"


def test_check_writable_accepts_a_folder_still_to_be_made(tmp_path):
  files.check_writable(tmp_path / "a" / "b", "--output_dir")
  assert os.listdir(tmp_path) == []


# As root (the tests' user) chmod makes no folder unwritable: a path under a
# regular file, or under /proc, is one.
@pytest.mark.parametrize("under", ["file", "/proc"])
def test_check_writable_refuses_a_path_no_file_can_be_made_in(tmp_path,
                                                             under):
  blocker = tmp_path / "a_file"
  blocker.write_text("")
  base = blocker if under == "file" else pathlib.Path("/proc/rlfat_tf_test")
  with pytest.raises(errors.UserError, match=r"cannot write to .*: pass an "
                     r"--output_dir you can write to"):
    files.check_writable(base / "report", "--output_dir")
  assert os.listdir(tmp_path) == ["a_file"]


def test_check_output_file_refuses_a_folder(tmp_path):
  with pytest.raises(errors.UserError, match="is a folder, and --output "
                     "writes a file there"):
    files.check_output_file(tmp_path, "--output")
  files.check_output_file(tmp_path / "new" / "r.json", "--output")
  (tmp_path / "r.json").write_text("")
  with pytest.raises(errors.UserError, match="not a folder"):
    files.check_output_file(tmp_path / "r.json" / "x.json", "--output")


def test_write_failure_names_storage_errors_only():
  full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/run/metrics.json")
  assert files.write_failure(full) == ("no space left on device",
                                       "/run/metrics.json")
  read_only = OSError(errno.EROFS, os.strerror(errno.EROFS), "/ro/x")
  assert files.write_failure(read_only) == ("read-only file system", "/ro/x")
  assert files.write_failure(FileNotFoundError(errno.ENOENT, "gone")) is None

  class OpError(Exception):
    def __init__(self, message):
      super().__init__(message)
      self.message = message

  assert files.write_failure(OpError(
      "{{node SaveV2}} /r/ckpt-6_temp/part.tempstate123; Disk quota exceeded "
      "[Op:SaveV2]")) == ("disk quota exceeded", "/r/ckpt-6_temp/part")
  assert files.write_failure(OpError(
      "No space left on device")) == ("no space left on device", None)
  assert files.write_failure(OpError("OOM when allocating tensor")) is None
