"""The registry of training methods: PGDAT, TRADES, RLFAT and the ablations.

A ``Method`` is data: the forward passes its objective reads, the objective
(a pure function of those passes' logits), the names of its terms, the
training attack it builds, its default weights, its display name and the
framework whose ablation group (Figure 2) it belongs to. One train step
(``trainer``) serves every method; ``train``, ``report`` and ``benchmark``
read this registry. The passes:

- ``clean``: f(x), the clean batch;
- ``adv``: f(x'), the adversarial example of the method's attack;
- ``rbs``: f(RBS(x')), the block-shuffled adversarial example.

Objectives return per-example terms, so the trainer can average them over the
global batch under any ``tf.distribute`` strategy. The terms, with the
official code's weights (``train_*.py`` of JHL-HUST/RLFAT):

| method  | objective                                                      |
|---------|----------------------------------------------------------------|
| pgdat   | CE(f(x'), y)                                                   |
| trades  | CE(f(x), y) + beta KL(p(x) || p(x'))                           |
| rlfat_p | CE(f(RBS(x')), y) + eta ||f(RBS(x')) - f(x')||^2  (eta 0.5)    |
| rlfat_t | CE(f(x), y) + beta KL(p(x) || p(RBS(x')))                      |
|         |   + eta ||f(RBS(x')) - f(x')||^2  (eta 1.0)                    |
| rbsat_p | CE(f(RBS(x')), y)                      (rlfat_p without transfer) |
| rbsat_t | CE(f(x), y) + beta KL(p(x) || p(RBS(x')))  (rlfat_t without transfer) |

The squared norm sums over logits (the batch mean is taken by the trainer).
KL is computed from log-softmax, so it is exact where the official Keras KL
clips probabilities to [1e-7, 1]; the two differ only where a probability is
below 1e-7. Gradients flow through every branch, as in the official code.

Adding a method: write its objective in a module of its own, add one
``Method`` line to ``METHODS``, a flagfile and its test.
"""

import dataclasses
from typing import Callable, Mapping

import tensorflow as tf

from rlfat_tf import errors
from rlfat_tf.attacks import losses
from rlfat_tf.attacks import pgd

PASSES = ("clean", "adv", "rbs")
# The official weight of the KL term (TRADES's beta, 1/lambda in its paper).
TRADES_BETA = 6.0


@dataclasses.dataclass(frozen=True)
class Method:
  """A training method.

  Attributes:
    name: flag value and key of ``METHODS``.
    display_name: its name in reports ("PGDAT", "RLFAT_P", ...).
    framework: the baseline method it builds on (itself for a baseline); the
      ablation (Figure 2) compares the methods of one framework.
    attack: builds the training attack's ``pgd.AttackSpec`` from (epsilon,
      step_size, steps, bn_mode): ``pgd.pgd`` or ``pgd.trades_kl``.
    passes: the forward passes the objective reads, from ``PASSES``.
    objective: ``(logits, labels, weights) -> terms``: ``logits`` maps each
      pass to its logits, ``weights`` maps each name of ``weights`` to its
      value; ``terms`` maps each name of ``terms`` to its unweighted [B]
      term, and "total" to the weighted sum to minimise.
    terms: the names of its terms, which name its metrics
      (``train/loss_<term>``).
    weights: the weights it reads and their defaults ("beta": the KL term,
      "eta": the transfer term).
  """
  name: str
  display_name: str
  framework: str
  attack: Callable[[float, float, int, str], pgd.AttackSpec]
  passes: tuple[str, ...]
  objective: Callable[[dict, tf.Tensor, Mapping[str, float]], dict]
  terms: tuple[str, ...]
  weights: Mapping[str, float] = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    if tuple(p for p in PASSES if p in self.passes) != self.passes:
      raise ValueError(f"{self.name}: passes must be in the order {PASSES}, "
                       f"got {self.passes}")

  @property
  def uses_rbs(self):
    """Whether the method trains on the Random Block Shuffle of x'."""
    return "rbs" in self.passes

  @property
  def is_baseline(self):
    """Whether the method is its framework's baseline (PGDAT, TRADES)."""
    return self.framework == self.name


def squared_distance(a, b):
  """Per-example squared L2 distance between logit vectors, [B]."""
  return tf.reduce_sum(tf.square(a - b), axis=-1)


def _objective(ce_pass, kl_pass=None, transfer=False):
  """The RLFAT family's objective: CE on a pass, [beta KL], [eta transfer].

  Args:
    ce_pass: the pass whose cross-entropy with the labels is minimised.
    kl_pass: the pass compared with the clean pass by the beta-weighted KL
      term, or None.
    transfer: add eta ||f(RBS(x')) - f(x')||^2.
  """

  def objective(logits, labels, weights):
    terms = {"ce": losses.cross_entropy(logits[ce_pass], labels)}
    total = terms["ce"]
    if kl_pass:
      terms["kl"] = losses.kl_divergence(logits["clean"], logits[kl_pass])
      total += weights["beta"] * terms["kl"]
    if transfer:
      terms["transfer"] = squared_distance(logits["rbs"], logits["adv"])
      total += weights["eta"] * terms["transfer"]
    terms["total"] = total
    return terms

  return objective


METHODS = {m.name: m for m in (
    Method("pgdat", "PGDAT", "pgdat", pgd.pgd, ("adv",), _objective("adv"),
           ("ce",)),
    Method("trades", "TRADES", "trades", pgd.trades_kl, ("clean", "adv"),
           _objective("clean", "adv"), ("ce", "kl"), {"beta": TRADES_BETA}),
    Method("rlfat_p", "RLFAT_P", "pgdat", pgd.pgd, ("adv", "rbs"),
           _objective("rbs", transfer=True), ("ce", "transfer"),
           {"eta": 0.5}),
    Method("rlfat_t", "RLFAT_T", "trades", pgd.trades_kl,
           ("clean", "adv", "rbs"), _objective("clean", "rbs", True),
           ("ce", "kl", "transfer"), {"beta": TRADES_BETA, "eta": 1.0}),
    Method("rbsat_p", "RBSAT_P", "pgdat", pgd.pgd, ("rbs",),
           _objective("rbs"), ("ce",)),
    Method("rbsat_t", "RBSAT_T", "trades", pgd.trades_kl, ("clean", "rbs"),
           _objective("clean", "rbs"), ("ce", "kl"), {"beta": TRADES_BETA}),
)}


def get(name):
  """The method ``name``.

  Raises:
    errors.UserError: no method has that name.
  """
  return errors.lookup(METHODS, name, "method")


def with_weight(weight):
  """Names of the methods that read a weight ("beta", "eta")."""
  return tuple(n for n, m in METHODS.items() if weight in m.weights)


def frameworks():
  """The ablation groups: framework -> its methods, in ablation order.

  Within a framework the baseline comes first, then its variants by their
  number of terms (RBS training alone before RLFAT, which adds transfer).
  """
  groups = {}
  for method in METHODS.values():
    groups.setdefault(method.framework, []).append(method)
  return {f: tuple(m.name for m in sorted(
      ms, key=lambda m: (not m.is_baseline, len(m.terms))))
          for f, ms in groups.items()}
