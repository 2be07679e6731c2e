"""The registry of evaluation attacks: one place per attack.

Each ``Registered`` entry names an attack, says how to build it from the
evaluation values, which flags of ``rlfat_tf.evaluate`` it adds, and how
reports name it. ``robustness`` runs every attack through ``base.Attack``;
``evaluate`` defines the flags from ``settings()``; ``report`` takes names
and Table 1 columns from here.

The values an attack is built from hold the settings every attack shares,
``epsilon``, ``step_size`` (of the sign-gradient attacks) and ``restarts``
(of the white-box attacks), plus the flag of every ``base.Setting``.

Used on its own, ``get(name, epsilon=...)`` builds an attack with the
standard settings (or given ones), and ``perturb`` runs it on a batch, with
its restarts or, for a composite attack, its stages in turn::

  attack = attacks.get("apgd_t", epsilon=8 / 255)
  adversarial = attacks.perturb(attack, model, images, labels, seed=0)

Adding an attack: write its module (an ``Attack`` subclass, its settings and
an options function), add one ``Registered`` line below, and its test. A
composite attack (kind "composite", ``autoattack.Composite``) runs registered
attacks in turn.
"""

import dataclasses
from typing import Any, Callable

import numpy as np
import tensorflow as tf

from rlfat_tf import data
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
    """The attack's kind: "white_box", "black_box" or "composite"."""
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


def entry(name):
  """The ``Registered`` entry of the attack ``name``.

  Raises:
    errors.UserError: no attack has that name.
  """
  return errors.lookup(ATTACKS, name, "attack")


def of_kind(kind, names=NAMES):
  """The names among ``names`` of the attacks of a kind, in registry order."""
  return tuple(n for n in NAMES if n in names and ATTACKS[n].kind == kind)


def get(name, *, epsilon, step_size=None, restarts=1, **settings):
  """The attack ``name`` at radius ``epsilon``, ready to run.

  Args:
    name: one of ``NAMES``.
    epsilon: L-infinity radius, in the units of [0, 1] images (8 / 255, say).
    step_size: step of the sign-gradient attacks (PGD, CW); default
      ``epsilon / 4``, the evaluation's default ratio (0.0075 at 0.03).
    restarts: random restarts of a white-box attack (AutoAttack's
      components always run once, as in its standard version).
    **settings: any attack setting by its flag name (``apgd_steps=50``,
      ``square_queries=1000``, see ``settings``); the rest keep their
      defaults, the standard ones.

  Returns:
    A ``base.Attack``, or an ``autoattack.Composite`` for "autoattack".

  Raises:
    errors.UserError: an unknown attack or setting, or a radius outside
      (0, 1].
  """
  if not 0.0 < epsilon <= 1.0:
    raise errors.UserError(
        f"epsilon {epsilon:g} is outside (0, 1]: images are in [0, 1], so "
        f"pass e.g. 8 / 255, not 8")
  unknown = sorted(set(settings) - set(default_values()))
  if unknown:
    raise errors.UserError(
        f"unknown attack setting {unknown[0]!r}: choose from "
        f"{', '.join(default_values())}")
  return build(name, {**default_values(), **settings, "epsilon": epsilon,
                      "step_size": (epsilon / 4 if step_size is None
                                    else step_size),
                      "restarts": restarts})


def _predictions(model, images, labels):
  return tf.argmax(model(images, training=False), -1, output_type=labels.dtype)


def attack_batch(model, attack, images, labels, seeds):
  """The worst case of an attack over its restarts, for one batch.

  Each restart runs only on the examples no earlier restart broke, gathered
  into a smaller batch, and not at all when none is left. Traceable inside
  a ``tf.function``.

  Args:
    model: maps images to logits; called with ``training=False``.
    attack: a ``base.Attack``.
    images: [B, H, W, C] clean images in [0, 1].
    labels: int [B] true labels.
    seeds: int64 [B, 2] per-example seeds; restart r of stage s uses
      ``pgd.restart_seeds(pgd.stream_seeds(seeds, pgd.STAGE_STREAM, s), r)``
      (``base.Attack.stage``).

  Returns:
    [B, H, W, C]: per example, the clean image if it is misclassified, else
    the first adversarial example that broke it, else that of the last
    restart.
  """
  broken = tf.not_equal(_predictions(model, images, labels), labels)
  best = images
  seeds = pgd.stream_seeds(seeds, pgd.STAGE_STREAM, attack.stage)
  for restart in tf.range(attack.restarts):

    def run(best, broken, restart=restart):
      todo = tf.where(tf.logical_not(broken))[:, 0]
      pick = lambda t: tf.gather(t, todo)
      adv = attack.run(model, pick(images), pick(labels),
                       pgd.restart_seeds(pick(seeds), restart))
      wrong = tf.not_equal(_predictions(model, adv, pick(labels)),
                           pick(labels))
      rows = todo[:, None]
      return (tf.tensor_scatter_nd_update(best, rows, adv),
              tf.tensor_scatter_nd_update(broken, rows, wrong))

    # The model cannot run on an empty batch (convolutions fail on it).
    best, broken = tf.cond(tf.reduce_all(broken), lambda: (best, broken),
                           lambda: run(best, broken))
  return best


def perturb(attack, model, images, labels, *, seed=0):
  """Runs an attack on one batch, as an evaluation runs it.

  Each example draws its random start from (``seed``, its position in the
  batch), as ``rlfat_tf.evaluate`` keys it by position in the split; the
  stages of a composite attack run in turn, each on the examples every
  earlier one left robust.

  Args:
    attack: an attack of ``get``.
    model: maps float32 images in [0, 1] to logits (a ``keras.Model``, or
      any callable taking ``training=False``; see ``classifier.Classifier``
      for SavedModel signatures and functions).
    images: [B, H, W, C] images, uint8 or float32 in [0, 1].
    labels: int [B] true labels.
    seed: seed of the random starts and draws.

  Returns:
    float32 [B, H, W, C] adversarial examples: for each example, the clean
    image if the model misclassifies it, else the first example that broke
    it, else the last one tried.
  """
  batch = next(iter(data.eval_dataset(np.asarray(images),
                                      np.asarray(labels, np.int32),
                                      batch_size=len(images), seed=seed)))
  images, labels, seeds = batch["image"], batch["label"], batch["seed"]
  stage = tf.function(lambda s, x, y, z: attack_batch(model, s, x, y, z),
                      reduce_retracing=True)
  best = images
  for component in attack.stages():
    robust = tf.equal(_predictions(model, best, labels), labels)
    todo = tf.where(robust)[:, 0]
    if not len(todo):
      break
    adv = stage(component, tf.gather(images, todo), tf.gather(labels, todo),
                tf.gather(seeds, todo))
    best = tf.tensor_scatter_nd_update(best, todo[:, None], adv)
  return best


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
  """Builds the attack ``name`` from evaluation values (``entry`` raises)."""
  return entry(name).build(values)
