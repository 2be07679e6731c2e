"""How every command starts and ends: its exit status and its error line.

Every ``python -m rlfat_tf.<command>`` runs its ``main`` through this module,
so all of them end alike:

- 0: done;
- 2 (``BAD_INPUT``): bad input, reported as one ``error: ...`` line on stderr
  and no traceback: an ``errors.UserError``, an unknown flag, a flag value a
  validator refuses, a missing required flag or a stray argument;
- 3 (``CHECK_FAILED``): the results were written, but an integrity check
  failed (``evaluate`` and ``report``; the command prints which);
- 130 (128 + SIGINT, Ctrl-C) and 143 (128 + SIGTERM): ``train``,
  ``evaluate`` or ``study`` was asked to stop, saved a checkpoint or the
  evaluation's progress and stopped; the same command resumes it
  (``preemption.Stopped``). A second Ctrl-C during that stop ends the
  command at once, also with 130, leaving what was saved before to resume
  from.

Nothing here imports TensorFlow or absl at module level: ``edge_eval``, which
runs where only numpy and LiteRT are installed, starts through it too.
"""

import argparse
import sys

from rlfat_tf import errors

BAD_INPUT = 2
CHECK_FAILED = 3


def fail(message):
  """Prints ``message`` as the one ``error:`` line and exits ``BAD_INPUT``."""
  # An absl or argparse message may wrap; the contract is one line.
  text = " ".join(str(message).split())
  print(f"error: {text}", file=sys.stderr, flush=True)
  sys.exit(BAD_INPUT)


def warn(message):
  """Prints ``message`` as one ``warning:`` line on stderr (not fatal)."""
  text = " ".join(str(message).split())
  print(f"warning: {text}", file=sys.stderr, flush=True)


def call(main, *args):
  """Runs ``main(*args)`` and exits with its status.

  Args:
    main: the command; it returns None (success) or an exit status such as
      ``CHECK_FAILED``, and raises ``errors.UserError`` on bad input.
    *args: passed to ``main``.
  """
  try:
    status = main(*args)
  except errors.UserError as e:
    fail(e)
  sys.exit(status or 0)


class ArgumentParser(argparse.ArgumentParser):
  """An argparse parser whose errors are ``errors.UserError``s.

  argparse's own errors print the usage and exit with status 2; raised
  instead, ``call`` prints them as the one error line of every command.
  """

  def error(self, message):
    raise errors.UserError(f"{message}: {self.prog} --help lists the "
                           f"arguments")


def module_values(module_name, parsed):
  """The parsed values of the flags that module ``module_name`` defined.

  Args:
    module_name: the defining module's ``__name__``.
    parsed: the parsed ``absl.flags.FlagValues``.

  Returns:
    ``{flag name: value}``.
  """
  return {f.name: f.value
          for f in parsed.get_flags_for_module(module_name)}


def parse_argv(define_flags, argv):
  """Parses ``argv`` into fresh flags that ``define_flags`` defines.

  How a command's own parsing runs outside its ``__main__`` (the study, the
  tests), without touching the global ``FLAGS``.

  Args:
    define_flags: the command's flag definitions; takes the ``FlagValues``.
    argv: the command line, program name first.

  Returns:
    The parsed ``absl.flags.FlagValues``.

  Raises:
    absl.flags.Error: a flag is unknown or a validator refuses its value.
  """
  from absl import flags  # pylint: disable=import-outside-toplevel
  parsed = flags.FlagValues()
  define_flags(parsed)
  parsed(argv)
  return parsed


def run_absl(main, define_flags):
  """Defines a command's absl flags, parses the command line and calls ``main``.

  The program's ``__main__`` block, in place of ``absl.app.run``. Logging
  defaults to warnings and above unless ``--verbosity`` is given.

  Args:
    main: the command, called with no arguments once the flags are parsed
      (see ``call``).
    define_flags: defines the command's flags in ``absl.flags.FLAGS``.
  """
  # Imported here so that argparse commands never load absl.
  from absl import app  # pylint: disable=import-outside-toplevel
  from absl import flags  # pylint: disable=import-outside-toplevel
  from absl import logging  # pylint: disable=import-outside-toplevel

  define_flags()

  def parse(argv):
    try:
      return flags.FLAGS(argv)
    except flags.Error as e:
      fail(f"{e} (--helpfull lists every flag)")

  def start(argv):
    if len(argv) > 1:
      fail(f"unexpected arguments {' '.join(argv[1:])}: pass every setting "
           f"as --name=value")
    if not flags.FLAGS["verbosity"].present:
      logging.set_verbosity(logging.WARNING)
    call(main)

  app.run(start, flags_parser=parse)
