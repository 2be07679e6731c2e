"""Tests of the attack registry and of the interface every attack implements
(``attacks.base``)."""

import dataclasses
import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from rlfat_tf import attacks
from rlfat_tf import errors
from rlfat_tf.attacks import base

EPS = 0.05
# Small budgets, so that every attack runs in a moment.
VALUES = {**attacks.default_values(), "epsilon": EPS, "step_size": 0.01,
          "restarts": 1, "pgd_steps": 3, "apgd_steps": 3, "apgd_targets": 2,
          "fab_steps": 3, "fab_targets": 2, "nattack_population": 4,
          "nattack_iterations": 3, "square_queries": 5}


def _colour_model():
  """Logit c < 3 is 20 times the mean of channel c, logits 3 and 4 those of
  pairs of channels (APGD-T needs four classes); BatchNorm would show any
  training-mode call in its moving statistics."""
  inputs = keras.Input((4, 4, 3))
  mean = keras.layers.GlobalAveragePooling2D()(inputs)
  kernel = np.concatenate([np.eye(3), [[0.5, 0.0], [0.5, 0.5], [0.0, 0.5]]],
                          axis=1)
  logits = keras.layers.Dense(
      5, kernel_initializer=keras.initializers.Constant(20.0 * kernel),
      use_bias=False)(mean)
  logits = keras.layers.BatchNormalization()(logits)
  return keras.Model(inputs, logits)


def test_registry_names_kinds_and_display_names():
  assert attacks.NAMES == ("pgd", "cw", "apgd_ce", "apgd_dlr", "apgd_t",
                           "fab_t", "nattack", "square", "autoattack")
  assert [attacks.entry(n).display_name for n in attacks.NAMES] == [
      "PGD", "CW", "APGD-CE", "APGD-DLR", "APGD-T", "FAB-T", "N attack",
      "Square", "AutoAttack"]
  assert attacks.of_kind("white_box") == ("pgd", "cw", "apgd_ce", "apgd_dlr",
                                          "apgd_t", "fab_t")
  assert attacks.of_kind("black_box") == ("nattack", "square")
  assert attacks.of_kind("composite") == ("autoattack",)
  assert attacks.of_kind("black_box", ("pgd",)) == ()
  # AutoAttack's components run inside it, not on their own by default.
  assert attacks.DEFAULTS == ("pgd", "cw", "apgd_ce", "apgd_dlr", "nattack",
                              "autoattack")


def test_unknown_attack_is_one_line_naming_the_choices():
  with pytest.raises(errors.UserError) as e:
    attacks.build("fgsm", VALUES)
  assert str(e.value) == ("unknown attack 'fgsm': choose from pgd, cw, "
                          "apgd_ce, apgd_dlr, apgd_t, fab_t, nattack, square, "
                          "autoattack")


def test_settings_are_unique_flags_with_typed_defaults():
  flags = [s.flag for s in attacks.settings()]
  assert len(flags) == len(set(flags))
  assert attacks.default_values() == {
      "pgd_steps": 20, "cw_steps": None, "apgd_steps": 100,
      "apgd_targets": 9, "fab_steps": 100, "fab_targets": 9,
      "nattack_examples": 1500, "nattack_population": 300,
      "nattack_sigma": 0.1, "nattack_lr": 0.008, "nattack_iterations": 200,
      "square_queries": 5000, "square_p_init": 0.8}
  for setting in attacks.settings():
    assert setting.default is None or isinstance(setting.default,
                                                 setting.type)
  assert not set(flags) & set(attacks.SHARED)


def test_cw_steps_follow_pgd_steps_unless_given():
  assert attacks.build("cw", VALUES).spec.steps == 3
  assert attacks.build("cw", {**VALUES, "cw_steps": 5}).spec.steps == 5


def test_column_titles():
  pgd = attacks.entry("pgd")
  assert (pgd.title(20), pgd.title(None)) == ("PGD-20", "PGD-k")
  nattack = attacks.entry("nattack")
  assert (nattack.title(1500), nattack.title(None)) == ("N attack (1500)",
                                                        "N attack")
  assert attacks.entry("apgd_ce").title(None) == "APGD-CE"


@pytest.mark.parametrize("name", [n for n in attacks.NAMES
                                  if attacks.entry(n).kind != "composite"])
def test_every_attack_implements_the_interface(name):
  entry = attacks.entry(name)
  attack = entry.build(VALUES)
  assert isinstance(attack, base.Attack)
  assert (attack.name, attack.display_name, attack.kind) == (
      name, entry.display_name, entry.kind)
  assert attack.kind in base.KINDS
  json.dumps(attack.settings())
  assert attack.stages() == (attack,)
  model = _colour_model()
  before = [v.numpy().copy() for v in model.variables]
  rng = np.random.default_rng(0)
  images = rng.uniform(0.0, 1.0, (3, 4, 4, 3)).astype(np.float32)
  images[0] = 0.0  # pixels at both ends of [0, 1]
  images[1] = 1.0
  labels = tf.constant([0, 1, 2], tf.int32)
  seeds = tf.constant([[5, i] for i in range(3)], tf.int64)
  adv = tf.function(attack.run)(model, tf.constant(images), labels, seeds)
  assert adv.shape == images.shape and adv.dtype == tf.float32
  assert np.abs(adv.numpy() - images).max() <= EPS + 1e-6
  assert adv.numpy().min() >= 0.0 and adv.numpy().max() <= 1.0
  for b, a in zip(before, model.variables):
    np.testing.assert_array_equal(a.numpy(), b)


def test_the_base_class_rejects_no_restarts():
  with pytest.raises(ValueError, match="restarts"):
    attacks.build("apgd_ce", {**VALUES, "restarts": 0})


def test_autoattack_is_its_standard_components_in_order_with_one_run_each():
  standard = {**attacks.default_values(), "epsilon": 8 / 255,
              "step_size": 0.0075, "restarts": 5}
  autoattack = attacks.build("autoattack", standard)
  assert (autoattack.kind, autoattack.display_name) == ("composite",
                                                        "AutoAttack")
  stages = autoattack.stages()
  assert [s.name for s in stages] == ["apgd_ce", "apgd_t", "fab_t", "square"]
  # Each component as it runs on its own, but once: --restarts is ignored;
  # each draws its starts from the stream of its place (base.Attack.stage).
  for place, stage in enumerate(stages):
    alone = attacks.build(stage.name, {**standard, "restarts": 1})
    assert stage == dataclasses.replace(alone, stage=place)
  settings = json.loads(json.dumps(autoattack.settings()))
  assert settings["components"] == ["apgd_ce", "apgd_t", "fab_t", "square"]
  assert settings["apgd_ce"] == {"steps": 100, "loss": "ce", "restarts": 1,
                                 "momentum": 0.75, "rho": 0.75,
                                 "initial_step": 2.0}
  assert (settings["apgd_t"]["steps"], settings["apgd_t"]["target_classes"],
          settings["apgd_t"]["restarts"]) == (100, 9, 1)
  assert (settings["fab_t"]["steps"], settings["fab_t"]["target_classes"],
          settings["fab_t"]["restarts"]) == (100, 9, 1)
  assert settings["square"] == {"queries": 5000, "p_init": 0.8,
                                "rescale_schedule": False, "restarts": 1}
  for stage in stages:
    assert stage.spec.epsilon == 8 / 255


def _starts(attack, images, labels, seeds):
  """Every perturbed input ``attack_batch`` gives the model, deduplicated.

  The model's logits do not depend on its input (its gradient is zero), so
  no example is ever broken and every iterate stays at its run's start:
  the distinct inputs are the distinct starts.
  """
  seen = []
  logits = tf.one_hot(labels, 10) * 5.0

  def model(x, training=False):
    del training
    seen.append(x.numpy())
    return logits[:tf.shape(x)[0]] + 0.0 * tf.reduce_sum(x, [1, 2, 3])[:, None]

  attacks.attack_batch(model, attack, images, labels, seeds)
  clean = images.numpy()
  return {x.tobytes(): x for x in seen
          if x.shape == clean.shape and not np.array_equal(x, clean)}


def test_each_autoattack_stage_starts_afresh():
  # The reference draws every start from one generator, so APGD-T's first
  # target does not start where APGD-CE did.
  images = tf.fill([2, 4, 4, 3], 0.5)
  labels = tf.constant([0, 1], tf.int32)
  seeds = tf.constant([[3, 0], [3, 1]], tf.int64)
  values = {**attacks.default_values(), "epsilon": EPS, "step_size": 0.0075,
            "apgd_steps": 1, "apgd_targets": 1}
  ce, targeted = attacks.build("autoattack", values).stages()[:2]
  (ce_start,) = _starts(ce, images, labels, seeds).values()
  (t_start,) = _starts(targeted, images, labels, seeds).values()
  assert np.abs(ce_start - t_start).max() > 0.01
  # Stage 0 starts where APGD-CE alone does; the stage's own stream is one
  # function of each example's seed.
  alone = attacks.build("apgd_ce", {**values, "restarts": 1})
  (alone_start,) = _starts(alone, images, labels, seeds).values()
  np.testing.assert_array_equal(ce_start, alone_start)
  (second,) = _starts(targeted, images[1:], labels[1:], seeds[1:]).values()
  np.testing.assert_array_equal(second, t_start[1:])


def test_every_apgd_t_target_and_restart_starts_afresh():
  # Folding the target index like a restart index gave target 1 of restart
  # 0 the start of target 0 of restart 1.
  images = tf.fill([1, 4, 4, 3], 0.5)
  values = {**attacks.default_values(), "epsilon": EPS, "step_size": 0.0075,
            "apgd_steps": 1, "apgd_targets": 3, "restarts": 3}
  starts = _starts(attacks.build("apgd_t", values), images,
                   tf.constant([0], tf.int32), tf.constant([[3, 0]], tf.int64))
  assert len(starts) == 9
