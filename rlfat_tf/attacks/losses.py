"""Per-example losses of training objectives and attacks.

Cross-entropy and KL are what the training objectives minimise and the
training attacks maximise; the CW margin and DLR losses drive evaluation
attacks. The margin of the true logit over the best other logit, which CW,
DLR and the N attack's reward share, is ``margin``.
"""

import tensorflow as tf

# The confidence kappa of the official CW-margin attack.
CW_CONFIDENCE = 50.0


def cross_entropy(logits, labels):
  """Per-example softmax cross-entropy, [B]."""
  return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels,
                                                        logits=logits)


def kl_divergence(p_logits, q_logits):
  """Per-example KL(softmax(p_logits) || softmax(q_logits)), [B]."""
  log_p = tf.nn.log_softmax(p_logits)
  log_q = tf.nn.log_softmax(q_logits)
  return tf.reduce_sum(tf.exp(log_p) * (log_p - log_q), axis=-1)


def margin(logits, labels):
  """The true logit minus the best other logit, z_y - max_{j != y} z_j.

  The true class is masked out with a large negative offset before the max
  (multiplying by a mask instead would leave a 0 in the true slot, which wins
  whenever every other logit is negative).

  Args:
    logits: [..., K] logits (or log-probabilities).
    labels: int true labels, broadcastable against ``logits[..., 0]``.

  Returns:
    [...] margins; negative exactly when the example is misclassified.
  """
  onehot = tf.one_hot(labels, tf.shape(logits)[-1], dtype=logits.dtype)
  true = tf.reduce_sum(onehot * logits, axis=-1)
  other = tf.reduce_max(logits - 1e4 * onehot, axis=-1)
  return true - other


def cw_margin(logits, labels, confidence=CW_CONFIDENCE):
  """Carlini-Wagner margin loss, per example: -relu(z_y - max_j!=y z_j + k).

  The official RLFAT code masks the true class by multiplying, and so picks
  the wrong runner-up whenever every other logit is negative (the bug Madry
  fixed in cifar10_challenge 958b8f1); ``margin`` masks it correctly.
  """
  return -tf.nn.relu(margin(logits, labels) + confidence)


def dlr_loss(logits, labels):
  """Difference-of-logits-ratio loss of Croce & Hein (2020), per example.

  DLR = -(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3 + 1e-12), where z_pi1 >=
  z_pi2 >= z_pi3 are the three largest logits. It is invariant to shifting
  and rescaling the logits, so a model cannot hide from it by inflating them.
  It needs at least three classes.

  Args:
    logits: [B, K] logits, K >= 3.
    labels: int [B] true labels.

  Returns:
    [B] losses; positive exactly when the example is misclassified.
  """
  top3 = tf.math.top_k(logits, k=3).values
  return -margin(logits, labels) / (top3[:, 0] - top3[:, 2] + 1e-12)


# Each loss maps (adversarial logits, labels, clean logits) to a [B] loss that
# an attack maximises. Only "kl" reads the clean logits.
LOSSES = {
    "ce": lambda logits, labels, _: cross_entropy(logits, labels),
    "kl": lambda logits, _, clean: kl_divergence(clean, logits),
    "cw": lambda logits, labels, _: cw_margin(logits, labels),
    "dlr": lambda logits, labels, _: dlr_loss(logits, labels),
}
# Losses that compare with the clean logits, which the attack then computes.
NEEDS_CLEAN_LOGITS = frozenset({"kl"})
