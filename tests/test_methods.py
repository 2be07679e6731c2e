"""The method registry; every objective against numpy on fixed logits."""

import numpy as np
import pytest
import tensorflow as tf

from rlfat_tf import errors
from rlfat_tf import methods
from rlfat_tf.attacks import pgd

pytestmark = pytest.mark.bazel_ci

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


WEIGHTS = {"beta": BETA, "eta": ETA}


@pytest.mark.parametrize("name", sorted(methods.METHODS))
def test_terms_and_total_match_numpy(name):
  method = methods.METHODS[name]
  all_logits = {"clean": CLEAN, "adv": ADV, "rbs": RBS}
  logits = {p: tf.constant(all_logits[p], tf.float32) for p in method.passes}
  terms = method.objective(logits, tf.constant(LABELS),
                           {w: WEIGHTS[w] for w in method.weights})
  expected = EXPECTED[name]
  assert set(terms) == set(expected) | {"total"}
  assert set(method.terms) == set(expected)
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
  assert methods.METHODS[name].passes == passes


def test_passes_out_of_order_are_rejected():
  with pytest.raises(ValueError, match="order"):
    methods.Method("bad", "BAD", "bad", pgd.pgd, ("rbs", "clean"),
                   methods.METHODS["rbsat_t"].objective, ("ce", "kl"))


def test_official_default_weights():
  assert methods.METHODS["rlfat_p"].weights == {"eta": 0.5}
  assert methods.METHODS["rlfat_t"].weights == {"beta": 6.0, "eta": 1.0}
  assert methods.METHODS["trades"].weights == {"beta": 6.0}
  assert "eta" not in methods.METHODS["rbsat_p"].weights
  assert "eta" not in methods.METHODS["rbsat_t"].weights
  assert methods.with_weight("eta") == ("rlfat_p", "rlfat_t")


@pytest.mark.parametrize("name, loss, start", [
    ("pgdat", "ce", "uniform"), ("rlfat_p", "ce", "uniform"),
    ("rbsat_p", "ce", "uniform"), ("trades", "kl", "normal"),
    ("rlfat_t", "kl", "normal"), ("rbsat_t", "kl", "normal")])
def test_training_attacks(name, loss, start):
  spec = methods.METHODS[name].attack(0.03, 0.0075, 10, "train")
  assert (spec.loss, spec.start, spec.epsilon, spec.step_size, spec.steps,
          spec.bn_mode) == (loss, start, 0.03, 0.0075, 10, "train")


def test_display_names_and_ablation_groups():
  assert [m.display_name for m in methods.METHODS.values()] == [
      "PGDAT", "TRADES", "RLFAT_P", "RLFAT_T", "RBSAT_P", "RBSAT_T"]
  assert methods.frameworks() == {"pgdat": ("pgdat", "rbsat_p", "rlfat_p"),
                                  "trades": ("trades", "rbsat_t", "rlfat_t")}


def test_unknown_method_is_one_line_naming_the_choices():
  with pytest.raises(errors.UserError) as e:
    methods.get("mart")
  assert str(e.value) == ("unknown method 'mart': choose from pgdat, trades, "
                          "rlfat_p, rlfat_t, rbsat_p, rbsat_t")


def test_transfer_gradient_reaches_both_branches():
  # The official code stops no gradient: both f(RBS(x')) and f(x') are pulled
  # towards each other.
  rbs_logits = tf.Variable(RBS, dtype=tf.float32)
  adv_logits = tf.Variable(ADV, dtype=tf.float32)
  with tf.GradientTape() as tape:
    terms = methods.METHODS["rlfat_p"].objective(
        {"rbs": rbs_logits, "adv": adv_logits}, tf.constant(LABELS),
        {"eta": ETA})
    transfer = tf.reduce_sum(terms["transfer"])
  g_rbs, g_adv = tape.gradient(transfer, [rbs_logits, adv_logits])
  np.testing.assert_allclose(g_rbs.numpy(), 2 * (RBS - ADV), rtol=1e-5)
  np.testing.assert_allclose(g_adv.numpy(), -2 * (RBS - ADV), rtol=1e-5)
