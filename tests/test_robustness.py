"""Tests of robust-accuracy evaluation and its integrity checks."""

import dataclasses

import keras
import numpy as np
import pytest
import tensorflow as tf

from rlfat_tf import attacks
from rlfat_tf import data
from rlfat_tf import errors
from rlfat_tf import integrity
from rlfat_tf import robustness
from rlfat_tf.attacks import autoattack
from rlfat_tf.attacks import base
from rlfat_tf.attacks import losses
from rlfat_tf.attacks import pgd

import helpers

EPS = 0.03
WHITE_BOX = ("pgd", "cw", "apgd_ce", "apgd_dlr")
# Ten PGD steps of 0.0075 reach the far side of the ball from any start.
# The three-class model cannot take APGD-T, and so neither AutoAttack.
TINY = robustness.EvalConfig(
    attacks=(*WHITE_BOX, "nattack"),
    settings={"pgd_steps": 10, "cw_steps": 10, "apgd_steps": 8,
              "nattack_population": 20, "nattack_iterations": 30,
              "nattack_examples": 8},
    check_examples=16, batch_size=16)
# The checks of every evaluation (black_box_not_stronger needs a black-box
# attack).
CHECKS = ("outputs_are_logits", "epsilon_sweep_monotone", "pgd_beats_noise",
          "gradients_not_masked", "large_epsilon_breaks_all",
          "more_steps_no_gain", "fresh_restarts_no_gain",
          "perturbation_within_bounds")


@pytest.fixture(scope="module")
def colour_model():
  return helpers.colour_model()


def test_worst_case_needs_every_attack_to_fail():
  robust = {"clean": [True, True, True, False, True],
            "pgd": [True, False, True, False, True],
            "apgd_ce": [True, True, False, False, True],
            "cw": [True, True, True, True, False]}
  np.testing.assert_array_equal(robustness.worst_case(robust),
                                [True, False, False, False, False])


def test_restarts_keep_each_examples_worst_case(colour_model):
  # Gaps of 0.001 .. 0.01 against a random start alone (0 steps): each
  # restart flips a different subset.
  gaps = np.linspace(0.001, 0.01, 24)
  colours = np.stack([0.5 + gaps, 0.5 - 0 * gaps, 0.5 - gaps], axis=1)
  images = np.broadcast_to(colours[:, None, None, :].astype(np.float32),
                           (24, 4, 4, 3)).copy()
  labels = np.zeros(24, np.int32)
  spec = pgd.AttackSpec(EPS, 0.0, 0, "ce", "uniform", "eval")
  seeds = tf.constant([[9, i] for i in range(24)], tf.int64)
  survived = []
  for r in range(3):
    adv = pgd.perturb(colour_model, spec, images, labels,
                      pgd.restart_seeds(seeds, r))
    survived.append(np.argmax(colour_model(adv).numpy(), -1) == 0)
  worst = attacks.attack_batch(
      colour_model, pgd.PGD(name="start", display_name="start", spec=spec,
                            restarts=3),
      tf.constant(images), tf.constant(labels), seeds)
  got = np.argmax(colour_model(worst).numpy(), -1) == 0
  np.testing.assert_array_equal(got, np.logical_and.reduce(survived))
  assert got.sum() < survived[0].sum() < 24


def test_evaluate_reports_every_attack_and_passes_every_check(colour_model):
  images, labels = helpers.colour_data(32)
  out = robustness.evaluate(colour_model, images, labels, TINY, verbose=0)
  metrics, per_example = out["metrics"], out["per_example"]
  assert set(metrics) == {f"test/{k}_accuracy" for k in (
      "clean", "pgd", "cw", "apgd_ce", "apgd_dlr", "worst_case", "nattack",
      "overall_worst_case")}
  assert metrics["test/clean_accuracy"] == 1.0
  for name in WHITE_BOX:
    assert metrics[f"test/{name}_accuracy"] < 0.6
    assert metrics[f"test/{name}_accuracy"] >= metrics[
        "test/worst_case_accuracy"]
  np.testing.assert_array_equal(
      per_example["worst_case"],
      np.logical_and.reduce([per_example[k] for k in WHITE_BOX]))
  # The N attack ran on the first 8 images only: the overall worst case
  # takes it there, and the white-box worst case elsewhere.
  overall = per_example["worst_case"].copy()
  overall[:8] &= per_example["nattack"]
  np.testing.assert_array_equal(per_example["overall_worst_case"], overall)
  assert len(per_example["nattack"]) == 8
  assert metrics["test/nattack_accuracy"] == per_example["nattack"].mean()
  # The linear model's optimal attack breaks exactly the gaps below 0.06.
  gap = images[:, 0, 0, :].max(-1) - 0.5
  np.testing.assert_array_equal(per_example["pgd"], gap > 0.06 + 1e-3)
  assert out["attacks"]["cw"]["confidence"] == 50
  assert out["attacks"]["nattack"]["population"] == 20
  assert out["attacks"]["nattack"]["num_examples"] == 8
  assert "num_examples" not in out["attacks"]["pgd"]
  for name in (*WHITE_BOX, "nattack"):
    entry = out["attacks"][name]
    images_seen = 8 if name == "nattack" else 32
    assert entry["images_per_second"] == pytest.approx(
        images_seen / entry["seconds"])
  assert set(out["checks"]) == set(CHECKS) | {"black_box_not_stronger"}
  assert all(c["passed"] for c in out["checks"].values()), out["checks"]
  assert out["adversarial"]["pgd"].shape == images.shape


def test_zero_epsilon_attack_gives_clean_accuracy_exactly(colour_model):
  images, labels = helpers.colour_data(32, seed=1)
  out = robustness.run_attack(
      colour_model, pgd.PGD(name="zero", display_name="zero",
                            spec=pgd.pgd(0.0, 0.0075, 3, "eval")),
      images, labels, batch_size=10, verbose=0)
  np.testing.assert_array_equal(out["robust"], out["attacked"])
  np.testing.assert_array_equal(out["linf"], 0.0)


def test_checks_catch_softmax_outputs_and_saturated_gradients():
  images, labels = helpers.colour_data(16, seed=2)
  config = dataclasses.replace(TINY, attacks=("pgd",))
  softmax = robustness.evaluate(helpers.colour_model(softmax=True), images,
                                labels, config, verbose=0)["checks"]
  assert not softmax["outputs_are_logits"]["passed"]
  # Logits 1e4 times larger: the softmax saturates, cross-entropy gradients
  # vanish in float32, and PGD cannot move even with eps = 0.5.
  masked = robustness.evaluate(helpers.colour_model(scale=1e4), images, labels,
                               config, verbose=0)["checks"]
  assert not masked["large_epsilon_breaks_all"]["passed"]
  assert not masked["gradients_not_masked"]["passed"]
  assert not masked["pgd_beats_noise"]["passed"]


def test_evaluation_leaves_every_variable_bit_identical():
  # A small network with BatchNorm: any forward pass in training mode would
  # move its moving averages.
  keras.utils.set_random_seed(4)
  model = keras.Sequential([
      keras.Input((4, 4, 3)), keras.layers.Conv2D(4, 3, padding="same"),
      keras.layers.BatchNormalization(momentum=0.5),
      keras.layers.ReLU(), keras.layers.GlobalAveragePooling2D(),
      keras.layers.Dense(3)])
  images, labels = helpers.colour_data(12, seed=3)
  before = integrity.snapshot_variables(model)
  config = dataclasses.replace(TINY, check_examples=6, batch_size=6)
  robustness.evaluate(model, images, labels, config, verbose=0)
  after = integrity.snapshot_variables(model)
  assert before.keys() == after.keys()
  assert any("moving_variance" in k for k in before)
  for key in before:
    np.testing.assert_array_equal(after[key], before[key], err_msg=key)


def test_config_values_and_bad_names():
  values = TINY.values(epsilon=0.5)
  assert values["epsilon"] == 0.5 and values["pgd_steps"] == 10
  assert values["apgd_steps"] == 8 and values["nattack_sigma"] == 0.1
  assert [a.name for a in dataclasses.replace(
      TINY, attacks=("nattack", "pgd")).build()] == ["pgd", "nattack"]
  with pytest.raises(errors.UserError, match="unknown attack 'fgsm'"):
    robustness.EvalConfig(attacks=("pgd", "fgsm"))
  with pytest.raises(ValueError, match="pgd_step"):
    robustness.EvalConfig(settings={"pgd_step": 3})


# Deliberately broken attacks. Each replaces the registered PGD, so the
# evaluation and every check's sweep run it as "the evaluation's PGD".


@dataclasses.dataclass(frozen=True, kw_only=True)
class _Descending(pgd.PGD):
  """PGD with the sign of its step flipped: it minimises the loss."""

  def run(self, model, images, labels, seeds):
    spec = self.spec
    adv = pgd.random_start(spec, images, seeds)
    for _ in range(spec.steps):
      with tf.GradientTape() as tape:
        tape.watch(adv)
        loss = tf.reduce_sum(losses.cross_entropy(model(adv, training=False),
                                                  labels))
      adv = pgd.project(adv - spec.step_size * tf.sign(
          tape.gradient(loss, adv)), images, spec.epsilon)
    return tf.stop_gradient(adv)


@dataclasses.dataclass(frozen=True, kw_only=True)
class _ReturnsClean(pgd.PGD):
  """An attack that returns the clean images."""

  def run(self, model, images, labels, seeds):
    return images


@dataclasses.dataclass(frozen=True, kw_only=True)
class _Unprojected(pgd.PGD):
  """PGD that doubles its perturbation and forgets to project it back."""

  def run(self, model, images, labels, seeds):
    adv = super().run(model, images, labels, seeds)
    return tf.clip_by_value(2.0 * adv - images, 0.0, 1.0)


@dataclasses.dataclass(frozen=True, kw_only=True)
class _TunedSeeds(pgd.PGD):
  """PGD whose start is degenerate for every seed but the ones it knows.

  From a known seed it runs PGD; from any other it returns the clean image,
  as if its start never left it.
  """
  known: tuple = ()

  def run(self, model, images, labels, seeds):
    known = tf.constant(self.known, tf.int64)
    tuned = tf.reduce_any(tf.reduce_all(
        tf.equal(seeds[:, None, :], known[None]), axis=-1), axis=-1)
    return pgd.select(tuned, super().run(model, images, labels, seeds),
                      images)


def _replace_pgd(monkeypatch, cls, **options):
  entry = attacks.ATTACKS["pgd"]
  monkeypatch.setitem(attacks.ATTACKS, "pgd", dataclasses.replace(
      entry, cls=cls,
      options=lambda values: {**entry.options(values), **options}))


def _failed(checks):
  return {name for name, check in checks.items() if not check["passed"]}


# The N attack (against the descending PGD) is dear: it runs once.
@pytest.mark.parametrize("broken,black_box", [(_Descending, ("nattack",)),
                                              (_ReturnsClean, ())])
def test_checks_catch_a_pgd_that_does_not_ascend(broken, black_box,
                                                 colour_model, monkeypatch):
  _replace_pgd(monkeypatch, broken)
  images, labels = helpers.colour_data(32)
  config = dataclasses.replace(TINY, attacks=("pgd", *black_box))
  out = robustness.evaluate(colour_model, images, labels, config, verbose=0)
  assert out["metrics"]["test/pgd_accuracy"] == 1.0
  # The model is healthy; every check of the attack's strength fails.
  expected = {"epsilon_sweep_monotone", "pgd_beats_noise",
              "large_epsilon_breaks_all"}
  if black_box:
    expected.add("black_box_not_stronger")
  assert _failed(out["checks"]) == expected, out["checks"]
  sweep = out["checks"]["epsilon_sweep_monotone"]["detail"]
  assert "cross-entropy did not rise from clean to eps/4" in sweep


def test_more_steps_check_catches_an_attack_weakened_by_steps(monkeypatch):
  # One pixel per image, gaps 0.001 .. 0.02: the uniform start breaks many
  # images, and each step of the descending PGD restores 0.008 of the gap to
  # each other class, so PGD-2 leaves more images than PGD-1.
  _replace_pgd(monkeypatch, _Descending)
  inputs = keras.Input((1, 1, 3))
  model = keras.Model(inputs, keras.layers.Dense(
      3, kernel_initializer=keras.initializers.Constant(20 * np.eye(3)),
      use_bias=False)(keras.layers.Flatten()(inputs)))
  rng = np.random.default_rng(5)
  labels = rng.integers(0, 3, 32).astype(np.int32)
  colours = np.full((32, 3), 0.5, np.float32)
  colours[np.arange(32), labels] += rng.uniform(0.001, 0.02, 32)
  config = dataclasses.replace(
      TINY, attacks=("pgd",), step_size=0.004, check_examples=32,
      settings={"pgd_steps": 1})
  checks = robustness.evaluate(model, colours[:, None, None, :], labels,
                               config, verbose=0)["checks"]
  assert not checks["more_steps_no_gain"]["passed"], checks
  assert "PGD-2 beats PGD-1" in checks["more_steps_no_gain"]["detail"]


def test_fresh_restarts_catch_starts_degenerate_for_other_seeds(
    colour_model, monkeypatch):
  images, labels = helpers.colour_data(32)
  known = np.concatenate([b["seed"].numpy() for b in data.eval_dataset(
      images, labels, batch_size=32, seed=TINY.seed)])
  _replace_pgd(monkeypatch, _TunedSeeds, known=tuple(map(tuple, known)))
  config = dataclasses.replace(TINY, attacks=("pgd",), check_examples=32)
  checks = robustness.evaluate(colour_model, images, labels, config,
                               verbose=0)["checks"]
  # Every run from the evaluation's seeds is healthy PGD.
  assert _failed(checks) == {"fresh_restarts_no_gain"}, checks
  assert "only the base run" in checks["fresh_restarts_no_gain"]["detail"]


def test_bounds_check_catches_an_unprojected_attack(colour_model):
  images, labels = helpers.colour_data(16)
  attack = _Unprojected(name="pgd", display_name="PGD",
                        spec=pgd.pgd(EPS, 0.0075, 10, "eval"))
  out = robustness.run_attack(colour_model, attack, images, labels,
                              batch_size=16, verbose=0)
  failed = integrity.check_bounds({"pgd": out}, EPS)
  assert not failed["passed"] and "max |delta| 0.06" in failed["detail"]


def _grey_data(num):
  """Grey images of class 0 ahead by 0.01: any attack can break each one."""
  colours = np.tile(np.float32([0.51, 0.5, 0.5]), (num, 1))
  return (np.broadcast_to(colours[:, None, None, :], (num, 4, 4, 3)).copy(),
          np.zeros(num, np.int32))


@dataclasses.dataclass(frozen=True)
class _Script:
  epsilon: float
  breaks: tuple[int, ...]


@dataclasses.dataclass(frozen=True, kw_only=True)
class _Scripted(base.Attack):
  """Breaks the examples ``spec.breaks`` (positions in the set, read off
  their seeds) and records the positions of the examples it is given."""
  kind = "white_box"
  seen: list

  def run(self, model, images, labels, seeds):
    del model

    def positions(batch_seeds):
      found = [SEED_POSITIONS[tuple(s)] for s in batch_seeds]
      self.seen.extend(found)
      return np.isin(found, self.spec.breaks)

    hit = tf.numpy_function(positions, [seeds], tf.bool)
    hit.set_shape(labels.shape)
    # Lowering the true channel and raising the next one by epsilon.
    shift = (tf.one_hot((labels + 1) % 3, 3) - tf.one_hot(labels, 3))
    moved = pgd.project(images + EPS * shift[:, None, None, :], images, EPS)
    return pgd.select(hit, moved, images)


# The seed of each example position, as data.eval_dataset draws it.
SEED_POSITIONS = {
    tuple(s): i for i, s in enumerate(np.concatenate([
        b["seed"].numpy() for b in data.eval_dataset(
            *_grey_data(8), batch_size=8, seed=TINY.seed)]))}


def test_composite_runs_each_stage_on_the_survivors_in_order(colour_model,
                                                             monkeypatch):
  images, labels = _grey_data(8)
  labels[7] = 1  # misclassified: never attacked
  script = {"first": (0, 1), "second": (1, 2, 3), "third": (4,),
            "fourth": ()}
  seen = {name: [] for name in script}

  def options(values):
    return {"components": tuple(
        _Scripted(name=name, display_name=name.title(), seen=seen[name],
                  spec=_Script(values["epsilon"], breaks))
        for name, breaks in script.items())}

  entry = attacks.Registered("scripted", "Scripted", autoattack.Composite,
                             options)
  monkeypatch.setitem(attacks.ATTACKS, "scripted", entry)
  monkeypatch.setattr(attacks, "NAMES", (*attacks.NAMES, "scripted"))
  config = dataclasses.replace(TINY, attacks=("scripted",), checks=False,
                               batch_size=3)
  out = robustness.evaluate(colour_model, images, labels, config,
                            verbose=0, keep_adversarial=("scripted",))
  # Each stage is given only the examples every earlier one left robust,
  # in order (over batches of 3).
  assert seen == {
      "first": [0, 1, 2, 3, 4, 5, 6], "second": [2, 3, 4, 5, 6],
      "third": [4, 5, 6], "fourth": [5, 6]}
  metrics = out["metrics"]
  assert metrics == {
      "test/clean_accuracy": 7 / 8,
      "test/scripted/after_first_accuracy": 5 / 8,
      "test/scripted/after_second_accuracy": 3 / 8,
      "test/scripted/after_third_accuracy": 2 / 8,
      "test/scripted/after_fourth_accuracy": 2 / 8,
      "test/scripted_accuracy": 2 / 8,
      "test/overall_worst_case_accuracy": 2 / 8}
  robust = out["per_example"]["scripted"]
  np.testing.assert_array_equal(robust, [0, 0, 0, 0, 0, 1, 1, 0])
  np.testing.assert_array_equal(out["per_example"]["overall_worst_case"],
                                robust)
  # Each broken example keeps the stage's example that broke it.
  adv = out["adversarial"]["scripted"]
  predicted = np.argmax(colour_model(adv).numpy(), -1)
  np.testing.assert_array_equal(predicted[:5], 1)
  np.testing.assert_array_equal(adv[5:], images[5:])
  settings = out["attacks"]["scripted"]
  assert settings["components"] == list(script)
  for name in script:
    assert settings[name]["breaks"] == script[name]
    assert settings[name]["images_per_second"] == pytest.approx(
        8 / settings[name]["seconds"])
  assert settings["images_per_second"] == pytest.approx(
      8 / settings["seconds"])
