"""mkdocs hook: fails the build on a public name of rlfat_tf without a docstring.

mkdocstrings renders a name without a docstring as an empty section and does
not fail; this hook reads the same source (``rlfat_tf.pages.missing_docstrings``,
no import of TensorFlow) and stops the build, strict or not, naming each one.
"""

import pathlib
import sys

from mkdocs.exceptions import PluginError

ROOT = pathlib.Path(__file__).resolve().parents[1]


def on_config(config):
  """Checks the docstrings before any page is built."""
  if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
  from rlfat_tf import pages  # pylint: disable=import-outside-toplevel
  missing = pages.missing_docstrings(ROOT)
  if missing:
    raise PluginError(
        f"{len(missing)} public name(s) of rlfat_tf without a docstring: "
        f"{', '.join(missing)}: add one (the API reference shows it)")
  return config
