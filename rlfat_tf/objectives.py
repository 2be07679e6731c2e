"""Training objectives of PGDAT, TRADES, RLFAT and the RBSAT ablations.

Every objective is a pure function of logits. The train step computes the
forward passes a method needs (``Method.passes``) and hands their logits here:

- ``clean``: f(x), the clean batch;
- ``adv``: f(x'), the adversarial example of the method's attack;
- ``rbs``: f(RBS(x')), the block-shuffled adversarial example.

Each objective returns per-example terms, so the trainer can average them over
the global batch under any ``tf.distribute`` strategy. The terms, with the
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
"""

import dataclasses

import tensorflow as tf


@dataclasses.dataclass(frozen=True)
class Method:
  """A training method: its attack, the passes its loss reads, its weights.

  Attributes:
    name: flag value.
    attack_loss: loss the training attack maximises: "ce" (PGD on
      cross-entropy) or "kl" (the TRADES inner maximisation).
    ce_pass: the pass whose cross-entropy with the labels is minimised.
    kl_pass: the pass compared with the clean pass by the beta-weighted KL
      term, or None when there is no KL term.
    default_eta: weight of the transfer term ||f(RBS(x')) - f(x')||^2; 0 means
      the method has no transfer term.
  """
  name: str
  attack_loss: str
  ce_pass: str
  kl_pass: str | None
  default_eta: float

  @property
  def has_transfer(self):
    return self.default_eta > 0

  @property
  def passes(self):
    """Forward passes the objective reads, in the order the step runs them."""
    needed = {self.ce_pass}
    if self.kl_pass:
      needed |= {"clean", self.kl_pass}
    if self.has_transfer:
      needed |= {"adv", "rbs"}
    return tuple(p for p in PASSES if p in needed)

  @property
  def uses_rbs(self):
    return "rbs" in self.passes


PASSES = ("clean", "adv", "rbs")

METHODS = {
    m.name: m for m in (
        Method("pgdat", "ce", ce_pass="adv", kl_pass=None, default_eta=0.0),
        Method("trades", "kl", ce_pass="clean", kl_pass="adv",
               default_eta=0.0),
        Method("rlfat_p", "ce", ce_pass="rbs", kl_pass=None, default_eta=0.5),
        Method("rlfat_t", "kl", ce_pass="clean", kl_pass="rbs",
               default_eta=1.0),
        Method("rbsat_p", "ce", ce_pass="rbs", kl_pass=None, default_eta=0.0),
        Method("rbsat_t", "kl", ce_pass="clean", kl_pass="rbs",
               default_eta=0.0),
    )
}


def cross_entropy(logits, labels):
  """Per-example softmax cross-entropy, [B]."""
  return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels,
                                                        logits=logits)


def kl_divergence(p_logits, q_logits):
  """Per-example KL(softmax(p_logits) || softmax(q_logits)), [B]."""
  log_p = tf.nn.log_softmax(p_logits)
  log_q = tf.nn.log_softmax(q_logits)
  return tf.reduce_sum(tf.exp(log_p) * (log_p - log_q), axis=-1)


def squared_distance(a, b):
  """Per-example squared L2 distance between logit vectors, [B]."""
  return tf.reduce_sum(tf.square(a - b), axis=-1)


def compute(method, logits, labels, beta, eta):
  """Per-example objective terms of a method.

  Args:
    method: a ``Method``.
    logits: dict holding the logits of every pass in ``method.passes``.
    labels: int [B] true labels.
    beta: weight of the KL term (TRADES lambda / beta).
    eta: weight of the transfer term; ignored by methods without one.

  Returns:
    Dict of [B] tensors: ``ce``, plus ``kl`` and ``transfer`` when the method
    has them (unweighted), and ``total``, the weighted sum to minimise.
  """
  terms = {"ce": cross_entropy(logits[method.ce_pass], labels)}
  total = terms["ce"]
  if method.kl_pass:
    terms["kl"] = kl_divergence(logits["clean"], logits[method.kl_pass])
    total += beta * terms["kl"]
  if method.has_transfer:
    terms["transfer"] = squared_distance(logits["rbs"], logits["adv"])
    total += eta * terms["transfer"]
  terms["total"] = total
  return terms
