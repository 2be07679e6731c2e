"""Errors that the user can fix from the command line."""


class UserError(Exception):
  """Bad input: the message is one line that names the problem and the fix.

  Entry points print it as a single ``error:`` line and exit non-zero instead
  of showing a traceback.
  """


class TrainingDiverged(UserError):
  """The loss became NaN or Inf; checkpoints written before it are kept."""


def lookup(registry, name, what):
  """``registry[name]``, or a UserError naming the choices.

  Args:
    registry: a dict from names to entries.
    name: the name asked for.
    what: what the entries are, for the message ("method", "attack").
  """
  if name not in registry:
    raise UserError(f"unknown {what} {name!r}: choose from "
                    f"{', '.join(registry)}")
  return registry[name]


def first_line(e: BaseException) -> str:
  """'Type: first line of the message', to quote an error in a one-line one."""
  lines = str(e).strip().splitlines()
  return f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__
