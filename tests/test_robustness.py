"""Tests of robust-accuracy evaluation and its integrity checks."""

import dataclasses

import keras
import numpy as np
import pytest
import tensorflow as tf

from rlfat_tf import attacks
from rlfat_tf import data
from rlfat_tf import errors
from rlfat_tf import models
from rlfat_tf import robustness
from rlfat_tf.attacks import autoattack
from rlfat_tf.attacks import base
from rlfat_tf.attacks import pgd

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


def _colour_model(scale=20.0, softmax=False):
  """An undefended classifier: logit c is ``scale`` times channel c's mean."""
  inputs = keras.Input((4, 4, 3))
  mean = keras.layers.GlobalAveragePooling2D()(inputs)
  logits = keras.layers.Dense(
      3, kernel_initializer=keras.initializers.Constant(scale * np.eye(3)),
      use_bias=False)(mean)
  if softmax:
    logits = keras.layers.Softmax()(logits)
  return keras.Model(inputs, logits)


def _colour_data(num, seed=0):
  """Grey images with the true class's channel raised by 0.005 .. 0.08.

  Lowering that channel and raising another by eps = 0.03 closes a gap of
  0.06, so an optimal attack breaks about three quarters of them.
  """
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, 3, num).astype(np.int32)
  colours = np.full((num, 3), 0.5, np.float32)
  colours[np.arange(num), labels] += rng.uniform(0.005, 0.08, num)
  images = np.broadcast_to(colours[:, None, None, :], (num, 4, 4, 3)).copy()
  return images, labels


@pytest.fixture(scope="module")
def colour_model():
  return _colour_model()


def test_worst_case_needs_every_attack_to_fail():
  robust = {"clean": [True, True, True, False, True],
            "pgd": [True, False, True, False, True],
            "apgd_ce": [True, True, False, False, True],
            "cw": [True, True, True, True, False]}
  np.testing.assert_array_equal(robustness.worst_case(robust),
                                [True, False, False, False, False])


def test_zero_epsilon_check():
  assert robustness.check_zero_epsilon([True, False], [True, False])["passed"]
  failed = robustness.check_zero_epsilon([True, False, True],
                                         [True, True, True])
  assert not failed["passed"] and "1 of 3" in failed["detail"]


def test_large_epsilon_check():
  assert robustness.check_large_epsilon(0.0, 0.5)["passed"]
  assert robustness.check_large_epsilon(0.01, 0.5)["passed"]
  assert not robustness.check_large_epsilon(0.02, 0.5)["passed"]


def test_monotone_check_allows_noise_only():
  # 1,000 images: the slack is 0.5%.
  ok = robustness.check_monotone(
      "steps", [("PGD-20", 0.40), ("PGD-40", 0.404), ("PGD-80", 0.39)], 1000)
  assert ok["passed"]
  bad = robustness.check_monotone(
      "steps", [("PGD-20", 0.40), ("PGD-40", 0.39), ("PGD-80", 0.396)], 100)
  assert bad["passed"]  # 100 images: one image (1%) is noise
  bad = robustness.check_monotone(
      "restarts", [("1", 0.40), ("2", 0.42)], 1000)
  assert not bad["passed"] and "2 beats 1" in bad["detail"]


def test_black_box_check():
  assert robustness.check_black_box(0.50, 0.45, 1500)["passed"]
  assert robustness.check_black_box(0.445, 0.45, 1500)["passed"]
  failed = robustness.check_black_box(0.30, 0.45, 1500, "N attack")
  assert not failed["passed"] and "0.3000" in failed["detail"]
  assert failed["detail"].startswith("N attack accuracy")


def test_bounds_check():
  good = {"pgd": {"linf": np.array([0.03, 0.01]), "low": np.array([0.0, .2]),
                  "high": np.array([1.0, 0.5])}}
  assert robustness.check_bounds(good, EPS)["passed"]
  far = {"cw": dict(good["pgd"], linf=np.array([0.0301, 0.0]))}
  assert not robustness.check_bounds(far, EPS)["passed"]
  low = {"cw": dict(good["pgd"], low=np.array([-0.01, 0.0]))}
  failed = robustness.check_bounds({**good, **low}, EPS)
  assert not failed["passed"] and "cw" in failed["detail"]


def test_logits_check():
  logits = np.array([[2.0, -1.0, 0.5], [0.1, 0.3, -4.0]])
  assert robustness.check_logits(logits)["passed"]
  probs = tf.nn.softmax(logits).numpy()
  assert "probabilities" in robustness.check_logits(probs)["detail"]
  assert not robustness.check_logits(probs)["passed"]
  log_probs = tf.nn.log_softmax(logits).numpy()
  assert not robustness.check_logits(log_probs)["passed"]


def test_variables_check_sees_a_moved_batchnorm_statistic():
  model = models.wide_resnet(10, 1, 3, (8, 8, 3))
  before = robustness.snapshot_variables(model)
  assert robustness.check_variables_unchanged(
      before, robustness.snapshot_variables(model))["passed"]
  # A training-mode attack moves the BatchNorm averages: the check sees it.
  images = tf.random.stateless_uniform([4, 8, 8, 3], [0, 1])
  pgd.perturb(model, pgd.pgd(EPS, 0.0075, 1, "train"), images,
              tf.zeros([4], tf.int32), tf.zeros([4, 2], tf.int64))
  failed = robustness.check_variables_unchanged(
      before, robustness.snapshot_variables(model))
  assert not failed["passed"] and "moving" in failed["detail"]


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
  worst = robustness.attack_batch(
      colour_model, pgd.PGD(name="start", display_name="start", spec=spec,
                            restarts=3),
      tf.constant(images), tf.constant(labels), seeds)
  got = np.argmax(colour_model(worst).numpy(), -1) == 0
  np.testing.assert_array_equal(got, np.logical_and.reduce(survived))
  assert got.sum() < survived[0].sum() < 24


def test_evaluate_reports_every_attack_and_passes_every_check(colour_model):
  images, labels = _colour_data(32)
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
  assert set(out["checks"]) == {
      "outputs_are_logits", "zero_epsilon_gives_clean",
      "large_epsilon_breaks_all", "more_steps_no_gain",
      "more_restarts_no_gain", "black_box_not_stronger",
      "perturbation_within_bounds"}
  assert all(c["passed"] for c in out["checks"].values()), out["checks"]
  assert out["adversarial"]["pgd"].shape == images.shape


def test_zero_epsilon_attack_gives_clean_accuracy_exactly(colour_model):
  images, labels = _colour_data(32, seed=1)
  out = robustness.run_attack(
      colour_model, pgd.PGD(name="zero", display_name="zero",
                            spec=pgd.pgd(0.0, 0.0075, 3, "eval")),
      images, labels, batch_size=10, verbose=0)
  np.testing.assert_array_equal(out["robust"], out["attacked"])
  np.testing.assert_array_equal(out["linf"], 0.0)


def test_checks_catch_softmax_outputs_and_saturated_gradients():
  images, labels = _colour_data(16, seed=2)
  config = dataclasses.replace(TINY, attacks=("pgd",))
  softmax = robustness.evaluate(_colour_model(softmax=True), images, labels,
                                config, verbose=0)["checks"]
  assert not softmax["outputs_are_logits"]["passed"]
  # Logits 1e4 times larger: the softmax saturates, cross-entropy gradients
  # vanish in float32, and PGD cannot move even with eps = 0.5.
  masked = robustness.evaluate(_colour_model(scale=1e4), images, labels,
                               config, verbose=0)["checks"]
  assert not masked["large_epsilon_breaks_all"]["passed"]


def test_evaluation_leaves_every_variable_bit_identical():
  # A small network with BatchNorm: any forward pass in training mode would
  # move its moving averages.
  keras.utils.set_random_seed(4)
  model = keras.Sequential([
      keras.Input((4, 4, 3)), keras.layers.Conv2D(4, 3, padding="same"),
      keras.layers.BatchNormalization(momentum=0.5),
      keras.layers.ReLU(), keras.layers.GlobalAveragePooling2D(),
      keras.layers.Dense(3)])
  images, labels = _colour_data(12, seed=3)
  before = robustness.snapshot_variables(model)
  config = dataclasses.replace(TINY, check_examples=6, batch_size=6)
  robustness.evaluate(model, images, labels, config, verbose=0)
  after = robustness.snapshot_variables(model)
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
