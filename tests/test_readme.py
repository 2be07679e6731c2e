"""README.md is a front page: short, its links resolve, and its test command is CI's."""

import re

import pytest

from helpers import ROOT


README = ROOT / "README.md"
TEST_COMMAND = "python -m pytest -q tests"
# [text](target) outside code; targets with a scheme are left to the reader.
LINK = re.compile(r"\]\(([^)\s]+)\)")


def _prose(path):
  """A Markdown file's lines outside fenced code blocks."""
  lines, fenced = [], False
  for line in path.read_text(encoding="utf-8").splitlines():
    if line.startswith("```"):
      fenced = not fenced
    elif not fenced:
      lines.append(line)
  return lines


def _commands(path):
  """The first word-run of every line inside a fenced code block."""
  lines, fenced = [], False
  for line in path.read_text(encoding="utf-8").splitlines():
    if line.startswith("```"):
      fenced = not fenced
    elif fenced:
      lines.append(line.split("  #")[0].strip())
  return lines


def test_readme_is_a_front_page_of_at_most_250_lines():
  assert len(README.read_text(encoding="utf-8").splitlines()) <= 250


def test_ci_ends_with_the_readmes_test_command():
  assert TEST_COMMAND in _commands(README)
  ci = (ROOT / ".ci" / "run").read_text().rstrip("\n").splitlines()
  assert ci[-1] == TEST_COMMAND


def test_readme_shows_the_install_and_the_main_job():
  commands = _commands(README)
  install = "python -m pip install -r requirements.txt"
  assert install in commands
  assert f"python -m pip install --quiet --disable-pip-version-check -r " \
         f"requirements.txt" in (ROOT / ".ci" / "run").read_text()
  assert any(c.startswith("python -m rlfat_tf.train --dataset=")
             for c in commands)


def test_readme_says_how_to_build_and_serve_the_docs():
  assert any("pip install -r requirements-docs.txt && mkdocs serve" in c
             for c in _commands(README))
  assert (ROOT / "requirements-docs.txt").is_file()
  assert (ROOT / "mkdocs.yml").is_file()


@pytest.mark.parametrize("page", ["README.md"] + sorted(
    p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").glob("*.md")))
def test_relative_links_resolve(page):
  # mkdocs --strict checks the docs' links and anchors too; this also covers
  # README.md, which lives outside docs/, and runs without mkdocs.
  path = ROOT / page
  for line in _prose(path):
    for target in LINK.findall(line):
      if re.match(r"[a-z]+:", target) or target.startswith("#"):
        continue
      file = target.split("#")[0]
      assert (path.parent / file).exists(), f"{page}: {target} does not exist"


def test_readme_links_every_docs_page():
  linked = {t.split("#")[0] for line in _prose(README)
            for t in LINK.findall(line)}
  for page in (ROOT / "docs").glob("*.md"):
    if page.name != "index.md":
      assert f"docs/{page.name}" in linked, f"README does not link {page.name}"
