"""Every objective against a hand computation in numpy on fixed logits."""

import numpy as np
import pytest
import tensorflow as tf

from rlfat_tf import objectives

LABELS = np.array([0, 2, 1])
CLEAN = np.array([[2.0, 0.5, -1.0], [0.1, 0.2, 3.0], [-0.5, 1.5, 0.0]])
ADV = np.array([[0.5, 1.0, 0.0], [1.0, 0.0, 0.5], [0.3, 0.2, 0.1]])
RBS = np.array([[0.0, 2.0, -0.5], [0.4, -1.0, 0.9], [1.0, 1.0, -2.0]])
BETA, ETA = 6.0, 0.7


def _softmax(z):
  e = np.exp(z - z.max(axis=1, keepdims=True))
  return e / e.sum(axis=1, keepdims=True)


def _ce(z, y):
  return -np.log(_softmax(z)[np.arange(len(y)), y])


def _kl(p_logits, q_logits):
  p, q = _softmax(p_logits), _softmax(q_logits)
  return (p * np.log(p / q)).sum(axis=1)


def _sq(a, b):
  return ((a - b) ** 2).sum(axis=1)


EXPECTED = {
    "pgdat": {"ce": _ce(ADV, LABELS)},
    "trades": {"ce": _ce(CLEAN, LABELS), "kl": _kl(CLEAN, ADV)},
    "rlfat_p": {"ce": _ce(RBS, LABELS), "transfer": _sq(RBS, ADV)},
    "rlfat_t": {"ce": _ce(CLEAN, LABELS), "kl": _kl(CLEAN, RBS),
                "transfer": _sq(RBS, ADV)},
    "rbsat_p": {"ce": _ce(RBS, LABELS)},
    "rbsat_t": {"ce": _ce(CLEAN, LABELS), "kl": _kl(CLEAN, RBS)},
}


@pytest.mark.parametrize("name", sorted(objectives.METHODS))
def test_terms_and_total_match_numpy(name):
  method = objectives.METHODS[name]
  all_logits = {"clean": CLEAN, "adv": ADV, "rbs": RBS}
  logits = {p: tf.constant(all_logits[p], tf.float32) for p in method.passes}
  terms = objectives.compute(method, logits, tf.constant(LABELS), BETA, ETA)
  expected = EXPECTED[name]
  assert set(terms) == set(expected) | {"total"}
  for key, value in expected.items():
    np.testing.assert_allclose(terms[key].numpy(), value, rtol=1e-5)
  total = (expected["ce"] + BETA * expected.get("kl", 0.0)
           + ETA * expected.get("transfer", 0.0))
  np.testing.assert_allclose(terms["total"].numpy(), total, rtol=1e-5)


@pytest.mark.parametrize("name, passes", [
    ("pgdat", ("adv",)), ("trades", ("clean", "adv")),
    ("rlfat_p", ("adv", "rbs")), ("rlfat_t", ("clean", "adv", "rbs")),
    ("rbsat_p", ("rbs",)), ("rbsat_t", ("clean", "rbs"))])
def test_each_method_runs_only_the_passes_it_reads(name, passes):
  assert objectives.METHODS[name].passes == passes


def test_official_default_weights():
  assert objectives.METHODS["rlfat_p"].default_eta == 0.5
  assert objectives.METHODS["rlfat_t"].default_eta == 1.0
  assert not objectives.METHODS["rbsat_p"].has_transfer
  assert not objectives.METHODS["rbsat_t"].has_transfer


def test_kl_is_zero_for_equal_logits_and_asymmetric_otherwise():
  a = tf.constant(CLEAN, tf.float32)
  b = tf.constant(ADV, tf.float32)
  np.testing.assert_allclose(objectives.kl_divergence(a, a).numpy(), 0.0,
                             atol=1e-7)
  assert not np.allclose(objectives.kl_divergence(a, b).numpy(),
                         objectives.kl_divergence(b, a).numpy())


def test_transfer_gradient_reaches_both_branches():
  # The official code stops no gradient: both f(RBS(x')) and f(x') are pulled
  # towards each other.
  rbs_logits = tf.Variable(RBS, dtype=tf.float32)
  adv_logits = tf.Variable(ADV, dtype=tf.float32)
  with tf.GradientTape() as tape:
    terms = objectives.compute(objectives.METHODS["rlfat_p"],
                               {"rbs": rbs_logits, "adv": adv_logits},
                               tf.constant(LABELS), BETA, ETA)
    transfer = tf.reduce_sum(terms["transfer"])
  g_rbs, g_adv = tape.gradient(transfer, [rbs_logits, adv_logits])
  np.testing.assert_allclose(g_rbs.numpy(), 2 * (RBS - ADV), rtol=1e-5)
  np.testing.assert_allclose(g_adv.numpy(), -2 * (RBS - ADV), rtol=1e-5)
