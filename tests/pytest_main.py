"""Runs test modules with pytest: the main of every Bazel py_test target."""

import sys

import pytest

if __name__ == "__main__":
  # Bazel's runfiles tree is read-only: no cache folder.
  sys.exit(pytest.main(["-q", "-p", "no:cacheprovider", *sys.argv[1:]]))
