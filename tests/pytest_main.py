"""Runs test modules with pytest: the main of every Bazel py_test target."""

import sys

import pytest

if __name__ == "__main__":
  # Bazel's runfiles tree is read-only: no cache folder. Bazel runs test
  # targets side by side: no pytest-xdist workers (pytest.ini) within one.
  sys.exit(pytest.main(["-q", "-p", "no:cacheprovider", "-n", "0",
                        *sys.argv[1:]]))
