"""Keeps the Bazel BUILD file true to the code: every module, entry point and
test has a target, and every target depends on the project modules it
imports."""

import configparser
import importlib.util

import pytest

from helpers import ROOT

pytestmark = pytest.mark.bazel_ci

_SPEC = importlib.util.spec_from_file_location(
    "write_build", ROOT / "scripts" / "write_build.py")
write_build = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(write_build)


def _targets(text):
  """Evaluates BUILD text with recording stand-ins for the rules it calls."""
  targets = {}

  def rule(kind):
    def record(name, **attrs):
      assert name not in targets, f"duplicate target {name}"
      targets[name] = dict(attrs, kind=kind)
    return record

  scope = {k: rule(k) for k in ("py_library", "py_binary", "py_test")}
  scope.update(package=lambda **_: None,
               glob=lambda patterns, **_: [f"glob:{p}" for p in patterns])
  exec(compile(text, "BUILD", "exec"), scope)  # pylint: disable=exec-used
  return targets


def _deps(target):
  return {d.lstrip(":") for d in target["deps"]}


@pytest.fixture(scope="module")
def targets():
  return _targets((ROOT / "BUILD").read_text())


def test_build_file_is_current():
  assert (ROOT / "BUILD").read_text() == write_build.render(), (
      "BUILD is stale: run python scripts/write_build.py")


def test_every_module_has_a_library_with_its_imports_as_deps(targets):
  modules = [p for p in (ROOT / "rlfat_tf").glob("*.py")
             if p.stem != "__init__"]
  assert len(modules) > 10
  for path in modules:
    target = targets[path.stem]
    assert target["kind"] == "py_library"
    assert f"rlfat_tf/{path.name}" in target["srcs"]
    assert _deps(target) == set(write_build.project_imports(path))


def test_every_package_has_one_library_of_all_its_files(targets):
  # Its srcs are a glob, so a module added to the package needs no new BUILD.
  packages = write_build.packages()
  assert "datasets" in packages
  for name, files in packages.items():
    target = targets[name]
    assert target["kind"] == "py_library"
    assert target["srcs"] == ["rlfat_tf/__init__.py",
                              f"glob:rlfat_tf/{name}/*.py"]
    imported = set().union(*(write_build.project_imports(p) for p in files))
    assert _deps(target) == imported - {name}


def test_entry_points_have_binaries(targets):
  binaries = {name for name, t in targets.items() if t["kind"] == "py_binary"}
  assert binaries == {f"{name}_main" for name in (
      "train", "evaluate", "export", "report", "edge_eval", "benchmark",
      "evalbench_art", "aabench_reference", "study", "pages")}
  for name in binaries:
    assert _deps(targets[name]) == {name[:-len("_main")]}


@pytest.mark.parametrize("source, expected", [
    ('def main():\n  pass\n\n\nif __name__ == "__main__":\n  main()\n', True),
    ("def main():\n  pass\n", False),
    # A guard inside a function is not a command.
    ('def f():\n  if __name__ == "__main__":\n    pass\n', False),
])
def test_a_module_is_an_entry_point_by_its_main_guard(tmp_path, source,
                                                       expected):
  path = tmp_path / "module.py"
  path.write_text(source)
  assert write_build.is_entry_point(path) is expected


def test_every_test_module_has_a_py_test(targets):
  for path in (ROOT / "tests").glob("test_*.py"):
    target = targets[path.stem]
    assert target["kind"] == "py_test"
    assert f"tests/{path.name}" in target["srcs"]
    assert _deps(target) == set(write_build.project_imports(path))


def test_fast_tests_are_tagged_for_bazel_in_ci_by_their_marker(targets):
  tagged = {n for n, t in targets.items() if "bazel_ci" in t.get("tags", [])}
  # Read from each module's text, apart from write_build's parser.
  marked = {p.stem for p in (ROOT / "tests").glob("test_*.py")
            if "\npytestmark = pytest.mark.bazel_ci\n" in p.read_text()}
  assert tagged == marked and "test_build" in tagged


def test_every_module_marker_is_registered_in_pytest_ini():
  parser = configparser.ConfigParser()
  parser.read(ROOT / "pytest.ini")
  registered = {line.split(":")[0].strip()
                for line in parser["pytest"]["markers"].splitlines()
                if line.strip()}
  used = {m for p in (ROOT / "tests").glob("test_*.py")
          for m in write_build.module_markers(p)}
  assert write_build.BAZEL_CI in used and used <= registered
  assert "--strict-markers" in parser["pytest"]["addopts"]


@pytest.mark.parametrize("source, markers", [
    ("pytestmark = pytest.mark.bazel_ci\n", ["bazel_ci"]),
    ("pytestmark = [pytest.mark.slow, pytest.mark.bazel_ci]\n",
     ["bazel_ci", "slow"]),
    ("pytestmark = (pytest.mark.skipif(True, reason='x'),)\n", []),
    ("def f():\n  pytestmark = pytest.mark.bazel_ci\n", []),
    ("@pytest.mark.slow\ndef test_a():\n  pass\n", []),
])
def test_module_markers_are_the_bare_ones_of_pytestmark(source, markers,
                                                        tmp_path):
  path = tmp_path / "test_x.py"
  path.write_text(source)
  assert write_build.module_markers(path) == markers


def test_bazel_ci_on_a_test_function_is_refused(tmp_path):
  path = tmp_path / "test_x.py"
  path.write_text("import pytest\n\n\n@pytest.mark.bazel_ci\n"
                  "def test_a():\n  pass\n")
  with pytest.raises(ValueError, match=r"test_x.py:4: pytest.mark.bazel_ci "
                     r"on test_a: Bazel runs whole modules"):
    write_build.module_markers(path)
