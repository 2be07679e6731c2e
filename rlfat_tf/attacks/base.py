"""The interface every evaluation attack implements, and its settings.

An attack is a frozen dataclass built by the registry (``rlfat_tf.attacks``)
from the evaluation settings. ``robustness`` runs any attack through this
interface alone: it runs the attack's ``stages`` in turn, each only on the
examples still robust (classified correctly, and not broken by an earlier
stage); it calls a stage's ``run`` once per restart with that restart's
seeds, on the examples no earlier restart broke, and keeps each example's
first success. It takes the per-example worst case over the attacks of kind
"white_box", and another over every attack. An attack of kind "composite"
(``autoattack.Composite``) is a sequence of registered attacks, its stages.
"""

import abc
import dataclasses
from typing import Any

KINDS = ("white_box", "black_box", "composite")


@dataclasses.dataclass(frozen=True)
class Setting:
  """An attack's evaluation setting, a flag of ``rlfat_tf.evaluate``.

  Attributes:
    flag: the flag's name, also the key of the setting in the values an
      attack is built from (``pgd_steps``, ``nattack_sigma``, ...).
    default: its default; None only for settings that fall back on another.
    help: the flag's help text.
    type: ``int`` or ``float``.
    lower_bound: the smallest accepted value, or None.
  """
  flag: str
  default: int | float | None
  help: str
  type: type = int
  lower_bound: int | float | None = None


@dataclasses.dataclass(frozen=True, kw_only=True)
class Attack(abc.ABC):
  """An L-infinity evaluation attack.

  Attributes:
    name: its key in the registry and in results ("pgd", "apgd_ce", ...).
    display_name: its name in reports ("PGD", "APGD-CE", ...).
    spec: a frozen dataclass of the attack's parameters, ``epsilon`` among
      them.
    restarts: runs from independent random starts; an example survives only
      if it survives all of them.
    examples: the attack runs on the first this-many images of a set (None:
      all of them), for attacks too slow to run on every image.
    stage: its place in a composite attack (0 on its own): stage s > 0 draws
      its starts from ``pgd.stream_seeds(seeds, pgd.STAGE_STREAM, s)``, so
      each stage of AutoAttack starts afresh, as the reference's do, while
      stage 0 draws what the attack run alone draws.
  """
  kind = None  # "white_box" or "black_box", set by each subclass.
  name: str
  display_name: str
  spec: Any
  restarts: int = 1
  examples: int | None = None
  stage: int = 0

  def __post_init__(self):
    if self.restarts < 1:
      raise ValueError(f"restarts must be positive, got {self.restarts}")

  def settings(self):
    """The attack's settings as recorded in results files (JSON values).

    Every field of ``spec`` but ``epsilon`` (which results record once for
    all attacks), and ``restarts`` unless the spec has its own (FAB's).
    """
    out = {"restarts": self.restarts, **dataclasses.asdict(self.spec)}
    del out["epsilon"]
    return out

  def stages(self):
    """The attacks ``robustness`` runs in turn for this one: itself."""
    return (self,)

  @abc.abstractmethod
  def run(self, model, images, labels, seeds):
    """Attacks a batch; traceable inside a ``tf.function``.

    Args:
      model: maps float32 [B, H, W, C] images in [0, 1] to logits; called with
        ``training=False``.
      images: float32 [B, H, W, C] clean images in [0, 1].
      labels: int32 [B] true labels.
      seeds: int64 [B, 2] per-example stateless seeds.

    Returns:
      float32 [B, H, W, C] adversarial examples within the attack's epsilon
      of ``images`` and inside [0, 1], gradients stopped.
    """
