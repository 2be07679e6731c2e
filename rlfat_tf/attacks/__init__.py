"""The registry of evaluation attacks: one place per attack.

Each ``Registered`` entry names an attack, says how to build it from the
evaluation values, which flags of ``rlfat_tf.evaluate`` it adds, and how
reports name it. ``robustness`` runs every attack through ``base.Attack``;
``evaluate`` defines the flags from ``settings()``; ``report`` takes names
and Table 1 columns from here.

The values an attack is built from hold the settings every attack shares,
``epsilon``, ``step_size`` (of the sign-gradient attacks) and ``restarts``
(of the white-box attacks), plus the flag of every ``base.Setting``.

Adding an attack: write its module (an ``Attack`` subclass, its settings and
an options function), add one ``Registered`` line below, and its test. A
composite attack (kind "composite", ``autoattack.Composite``) runs registered
attacks in turn.
"""

import dataclasses
from typing import Any, Callable

from rlfat_tf import errors
from rlfat_tf.attacks import apgd
from rlfat_tf.attacks import autoattack
from rlfat_tf.attacks import base
from rlfat_tf.attacks import fab
from rlfat_tf.attacks import nattack
from rlfat_tf.attacks import pgd
from rlfat_tf.attacks import square

# The values every attack may read besides its own settings.
SHARED = ("epsilon", "step_size", "restarts")


@dataclasses.dataclass(frozen=True)
class Registered:
  """A registered attack.

  Attributes:
    name: its key in flags, results and metric names.
    display_name: its name in reports.
    cls: its ``base.Attack`` subclass, whose ``kind`` it has.
    options: maps the evaluation values to the fields of ``cls`` other than
      ``name`` and ``display_name``.
    settings: the ``base.Setting`` flags it reads (several attacks may share
      one, e.g. the two APGD losses share ``apgd_steps``).
    title_setting: the setting of its results entry that Table 1's column
      title shows when every row shares it (e.g. PGD's "steps"), or None.
    title_format: the column title with that shared value in ``{}``.
    title_unshared: the column title when the value is not shared (default:
      the display name).
    default: whether an evaluation runs it unless ``--attacks`` says
      otherwise (AutoAttack's components run inside it already).
  """
  name: str
  display_name: str
  cls: type
  options: Callable[[dict], dict]
  settings: tuple[base.Setting, ...] = ()
  title_setting: str | None = None
  title_format: str = "{}"
  title_unshared: str | None = None
  default: bool = True

  @property
  def kind(self):
    return self.cls.kind

  def build(self, values):
    """The attack, from the evaluation values (see the module docstring)."""
    return self.cls(name=self.name, display_name=self.display_name,
                    **self.options(values))

  def title(self, shared):
    """Table 1's column title, given the shared value of ``title_setting``."""
    if self.title_setting is None:
      return self.display_name
    if shared is None:
      return self.title_unshared or self.display_name
    return self.title_format.format(shared)


ATTACKS = {entry.name: entry for entry in (
    Registered("pgd", "PGD", pgd.PGD, pgd.pgd_options, (pgd.PGD_STEPS,),
               "steps", "PGD-{}", "PGD-k"),
    Registered("cw", "CW", pgd.PGD, pgd.cw_options,
               (pgd.PGD_STEPS, pgd.CW_STEPS), "steps", "CW-{}", "CW-k"),
    Registered("apgd_ce", "APGD-CE", apgd.APGD, apgd.options("ce"),
               (apgd.STEPS,)),
    Registered("apgd_dlr", "APGD-DLR", apgd.APGD, apgd.options("dlr"),
               (apgd.STEPS,)),
    Registered("apgd_t", "APGD-T", apgd.APGD, apgd.options("dlr_targeted"),
               (apgd.STEPS, apgd.TARGETS), default=False),
    Registered("fab_t", "FAB-T", fab.FAB, fab.options,
               (fab.STEPS, fab.TARGETS), default=False),
    Registered("nattack", "N attack", nattack.NAttack, nattack.options,
               nattack.SETTINGS, "num_examples", "N attack ({})"),
    Registered("square", "Square", square.Square, square.options,
               square.SETTINGS, default=False),
    Registered("autoattack", "AutoAttack", autoattack.Composite,
               autoattack.options(lambda name, values: build(name, values))),
)}
NAMES = tuple(ATTACKS)
# The attacks an evaluation runs by default.
DEFAULTS = tuple(name for name in NAMES if ATTACKS[name].default)


def get(name):
  """The registered attack ``name``.

  Raises:
    errors.UserError: no attack has that name.
  """
  return errors.lookup(ATTACKS, name, "attack")


def of_kind(kind, names=NAMES):
  """The names among ``names`` of the attacks of a kind, in registry order."""
  return tuple(n for n in NAMES if n in names and ATTACKS[n].kind == kind)


def settings():
  """Every attack's settings, each flag once, in registry order."""
  found = {}
  for entry in ATTACKS.values():
    for setting in entry.settings:
      found.setdefault(setting.flag, setting)
  return tuple(found.values())


def default_values():
  """The default of every setting, by flag."""
  return {s.flag: s.default for s in settings()}


def build(name, values: dict[str, Any]):
  """Builds the attack ``name`` from evaluation values (``get`` raises)."""
  return get(name).build(values)
