"""Standard AutoAttack (Croce & Hein, ICML 2020) as one composite attack.

AutoAttack is an ensemble of four attacks with fixed settings, run in turn,
each only on the points that every earlier one left robust; a point counts
as robust only if it survives all four. The standard version (fra31/auto-
attack, commit a392200, ``autoattack/autoattack.py``, ``set_version`` and
``run_standard_evaluation``) runs, at the evaluation's epsilon:

1. APGD-CE, one run (no restarts) of 100 iterations;
2. APGD-T, the targeted DLR loss towards each of the 9 classes the clean
   point ranks 2nd to 10th, 100 iterations each, one run per target;
3. FAB-T, the same 9 targets, 100 iterations each, one run per target;
4. Square, 5,000 queries with p_init = 0.8, one run (black box).

Here the components are the registered attacks ``apgd_ce``, ``apgd_t``,
``fab_t`` and ``square``, built from the same settings as when they run on
their own (``--apgd_steps``, ``--apgd_targets``, ``--fab_steps``,
``--fab_targets``, ``--square_queries``, ``--square_p_init``; the defaults
are the standard ones) but with one run each, whatever the evaluation's
``--restarts``, and each from its own random starts (``base.Attack.stage``:
the reference draws every start afresh from one generator, so APGD-T's first
target does not start where APGD-CE did). ``robustness`` runs them as the reference does: over the
whole set, component after component, each on the points still robust
gathered into full batches, and reports the robust accuracy after each.
"""

import dataclasses
from typing import Callable

from rlfat_tf.attacks import base

# The registered attacks of standard AutoAttack, in the order they run.
COMPONENTS = ("apgd_ce", "apgd_t", "fab_t", "square")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Composite:
  """Attacks run in turn, each on the examples all earlier ones left robust.

  It has the attributes and methods of ``base.Attack`` that ``robustness``
  reads, but no ``run`` of its own: its ``stages`` are its components.

  Attributes:
    name: its key in the registry and in results ("autoattack").
    display_name: its name in reports ("AutoAttack").
    components: the ``base.Attack``s it runs, in order.
  """
  kind = "composite"
  examples = None
  name: str
  display_name: str
  components: tuple[base.Attack, ...]

  def settings(self):
    """The components in order, and each component's settings by name."""
    return {"components": [c.name for c in self.components],
            **{c.name: c.settings() for c in self.components}}

  def stages(self):
    """The components, which ``robustness`` runs in turn."""
    return self.components


def options(build: Callable[[str, dict], base.Attack]):
  """The ``Composite`` fields builder of standard AutoAttack.

  Args:
    build: the registry's ``build(name, values)``.

  Returns:
    A function of the evaluation values (``attacks.Registered.options``)
    that builds the components of ``COMPONENTS``, each with one run.
  """
  return lambda values: {"components": tuple(
      dataclasses.replace(build(name, {**values, "restarts": 1}), stage=s)
      for s, name in enumerate(COMPONENTS))}
