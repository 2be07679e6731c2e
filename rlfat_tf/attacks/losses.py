"""Per-example losses of training objectives and attacks.

Cross-entropy and KL are what the training objectives minimise and the
training attacks maximise; the CW margin and the DLR losses (untargeted and
targeted) drive evaluation attacks. The margin of the true logit over the
best other logit, which CW, DLR, the N attack's reward and the Square
attack's loss share, is ``margin``.
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

  The best other logit is read off the two largest logits: the runner-up
  when the true class is on top, else the top one. It is exact however far
  the true logit leads (masking the true class with a finite offset picks the
  true logit whenever it leads by more than the offset; multiplying by a mask
  leaves a 0 in the true slot, which wins whenever every other logit is
  negative).

  Args:
    logits: [..., K] logits (or log-probabilities), K >= 2.
    labels: int true labels, broadcastable against ``logits[..., 0]``.

  Returns:
    [...] margins; negative exactly when another class scores higher.
  """
  labels = tf.broadcast_to(tf.cast(labels, tf.int32), tf.shape(logits)[:-1])
  true = tf.gather(logits, labels[..., None],
                   batch_dims=len(logits.shape) - 1)[..., 0]
  top = tf.math.top_k(logits, k=2)
  on_top = tf.equal(top.indices[..., 0], labels)
  return true - tf.where(on_top, top.values[..., 1], top.values[..., 0])


def cw_margin(logits, labels, confidence=CW_CONFIDENCE):
  """Carlini-Wagner margin loss, per example: -relu(z_y - max_j!=y z_j + k).

  The official RLFAT code multiplies by a mask instead of excluding the true
  class, which returns 0 for the true slot and so picks the wrong runner-up
  whenever every other logit is negative (the bug Madry fixed in
  cifar10_challenge 958b8f1); ``margin`` excludes it exactly.
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


def dlr_targeted_loss(logits, labels, targets):
  """Targeted DLR loss of Croce & Hein (2020), per example.

  -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2 + 1e-12) for the target class t,
  where z_pi1 >= ... >= z_pi4 are the four largest logits: maximising it pulls
  the target's logit above the true one. Like DLR, it ignores shifts and
  rescalings of the logits. It needs at least four classes.

  Args:
    logits: [B, K] logits, K >= 4.
    labels: int [B] true labels.
    targets: int [B] target classes.

  Returns:
    [B] losses; positive exactly when the target outscores the true class.
  """
  top4 = tf.math.top_k(logits, k=4).values
  true = tf.gather(logits, labels, batch_dims=1)
  target = tf.gather(logits, targets, batch_dims=1)
  return -(true - target) / (top4[:, 0] - 0.5 * (top4[:, 2] + top4[:, 3]) +
                             1e-12)


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
