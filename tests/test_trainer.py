"""The trainer's parts alone: the loop's cadence and stops, and its actions.

The loop is driven by stand-ins (no TensorFlow graph); the actions run with a
one-layer model. ``test_train.py`` trains end to end.
"""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorboard.backend.event_processing import event_accumulator

from rlfat_tf import data
from rlfat_tf import errors
from rlfat_tf import methods
from rlfat_tf import models
from rlfat_tf import trainer
from rlfat_tf.attacks import pgd
from rlfat_tf.trainer import actions
from rlfat_tf.trainer import loop
from rlfat_tf.trainer import step

S = loop.Stop


# Cadence ---------------------------------------------------------------------


@pytest.mark.parametrize("cadence, start, expected", [
    # Calls of 4 steps, cut short to land on each multiple of 6 and on 10.
    (loop.Cadence(10, 4, 6), 0,
     [S(4, False, False), S(6, False, True), S(10, False, True)]),
    # Validation every 3 adds stops at 3 and 9; the last step does all.
    (loop.Cadence(10, 4, 6, eval_every=3), 0,
     [S(3, True, False), S(6, True, True), S(9, True, False),
      S(10, True, True)]),
    # Resumed at step 5: the multiples still count from 0.
    (loop.Cadence(10, 4, 6), 5, [S(6, False, True), S(10, False, True)]),
    (loop.Cadence(12, 5, 4, eval_every=6), 7,
     [S(8, False, True), S(12, True, True)]),
    # One step per call: a stop at every step.
    (loop.Cadence(3, 1, 2), 0,
     [S(1, False, False), S(2, False, True), S(3, False, True)]),
    # Resumed at the end: nothing to do.
    (loop.Cadence(6, 2, 2), 6, []),
])
def test_stops_fall_on_each_multiple_and_at_most_a_loop_apart(
    cadence, start, expected):
  assert list(cadence.stops(start)) == expected


# Loop, with stand-ins ---------------------------------------------------------


class _Actions:
  """Records what the loop asks for, in order."""

  def __init__(self):
    self.events = []
    self.elapsed = []
    self.latest = {}

  def start(self, step):
    self.events.append(("start", step))

  def check_finite(self, step, totals):
    if totals["nonfinite"]:
      raise errors.TrainingDiverged(f"NaN by step {step}")

  def train_metrics(self, totals, elapsed):
    self.elapsed.append(elapsed)
    return {"train/loss": totals["loss"]}

  def offer_best(self, step, val):
    self.events.append(("best", step, val["val/pgd_ce_accuracy"]))

  def save(self, step):
    self.events.append(("save", step))

  def record(self, step, metrics):
    self.latest.update(metrics)
    self.events.append(("record", step))


class _Steps:
  """``run_steps`` that counts steps; step ``bad_step`` is not finite."""

  def __init__(self, start=0, bad_step=None):
    self.step = start
    self.calls = []
    self._bad_step = bad_step

  def __call__(self, num_steps):
    self.calls.append(num_steps)
    done = num_steps
    if self._bad_step is not None and self.step < self._bad_step <= (
        self.step + num_steps):
      done = self._bad_step - self.step
    self.step += done
    bad = self.step == self._bad_step
    return {"loss": float(self.step), "nonfinite": float(bad)}, done


def test_loop_runs_to_the_end_acting_at_each_stop():
  acts, steps = _Actions(), _Steps()
  result = loop.Loop(loop.Cadence(6, 2, 4, eval_every=3), steps, acts,
                     validate=lambda: {"val/pgd_ce_accuracy": 0.5}).run(0)
  # Stops at 2, 3 (validate), 4 (checkpoint), 6 (validate, checkpoint).
  assert steps.calls == [2, 1, 1, 2]
  assert acts.events == [
      ("start", 0), ("record", 2), ("best", 3, 0.5), ("record", 3),
      ("record", 4), ("save", 4), ("best", 6, 0.5), ("record", 6), ("save", 6)]
  # The first call's time includes tracing: no speed is reported for it.
  assert acts.elapsed[0] is None
  assert all(e >= 0.0 for e in acts.elapsed[1:])
  assert result == loop.Result(
      6, {"train/loss": 6.0, "val/pgd_ce_accuracy": 0.5}, preempted=False)


def test_requested_stop_saves_and_returns_early():
  acts, steps = _Actions(), _Steps(start=2)
  asked = []

  def stop_requested():
    asked.append(steps.step)
    return steps.step >= 5

  result = loop.Loop(loop.Cadence(20, 3, 10), steps, acts,
                     stop_requested=stop_requested).run(2)
  # Asked after each call; the stop at 5 is no checkpoint step, but a stop
  # saves one there, and no step runs after it.
  assert asked == [5]
  assert acts.events == [("start", 2), ("record", 5), ("save", 5)]
  assert result.step == 5 and result.preempted


def test_requested_stop_at_a_checkpoint_saves_once_and_not_at_the_end():
  acts, steps = _Actions(), _Steps()
  asked = []

  def stop_requested():
    asked.append(steps.step)
    return True

  result = loop.Loop(loop.Cadence(4, 2, 2), steps, acts,
                     stop_requested=stop_requested).run(0)
  assert acts.events == [("start", 0), ("record", 2), ("save", 2)]
  assert result.preempted and asked == [2]
  # At the last step there is nothing left to stop: it is never asked.
  acts, steps, asked = _Actions(), _Steps(start=2), []
  result = loop.Loop(loop.Cadence(4, 2, 2), steps, acts,
                     stop_requested=stop_requested).run(2)
  assert not result.preempted and asked == []
  assert acts.events == [("start", 2), ("record", 4), ("save", 4)]


def test_no_stop_is_requested_by_default():
  assert not loop.never()
  result = loop.Loop(loop.Cadence(4, 1, 4), _Steps(), _Actions()).run(0)
  assert result.step == 4 and not result.preempted


def test_divergence_stops_before_anything_is_saved_at_that_stop():
  acts, steps = _Actions(), _Steps(bad_step=3)
  with pytest.raises(errors.TrainingDiverged, match="NaN by step 3"):
    loop.Loop(loop.Cadence(8, 4, 2), steps, acts).run(0)
  # The call for steps 3-4 ends at the bad step 3; nothing after step 2's
  # checkpoint is saved or recorded, and no further call runs.
  assert steps.calls == [2, 2]
  assert acts.events == [("start", 0), ("record", 2), ("save", 2)]


# Actions ---------------------------------------------------------------------


def _model():
  return keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])


def _checkpoints(tmp_path, model, **kwargs):
  step_var = tf.Variable(0, dtype=tf.int64)
  return actions.Checkpoints(str(tmp_path), tf.distribute.get_strategy(),
                             {"model": model, "step": step_var}, keep=2,
                             **kwargs)


def _stems(folder):
  return sorted(p.name.removesuffix(".index")
                for p in folder.glob("ckpt-*.index"))


def test_best_checkpoint_keeps_the_best_score_and_says_which(tmp_path):
  model = _model()
  saved_before = []
  checkpoints = _checkpoints(
      tmp_path, model,
      before_first_save=lambda: saved_before.append(list(tmp_path.iterdir())))

  def offer(step, score):
    return checkpoints.offer_best(
        step, {"val/clean_accuracy": 0.9, "val/pgd_ce_accuracy": score})

  assert offer(1, 0.5)
  assert not offer(2, 0.4) and not offer(3, 0.5)
  assert _stems(tmp_path / "best") == ["ckpt-1"]
  assert offer(4, 0.6)
  assert _stems(tmp_path / "best") == ["ckpt-4"]
  assert json.loads((tmp_path / "best.json").read_text()) == {
      "step": 4, "criterion": "val/pgd_ce_accuracy", "val/clean_accuracy": 0.9,
      "val/pgd_ce_accuracy": 0.6}
  # The hook ran once, before anything was written.
  assert saved_before == [[]]
  checkpoints.save(4)
  assert saved_before == [[]]
  # A resumed run compares against the best score it restored.
  resumed = _checkpoints(tmp_path, _model())
  assert resumed.restore() == str(tmp_path / "checkpoints" / "ckpt-4")
  assert float(resumed.best_score.numpy()) == pytest.approx(0.6)
  assert not resumed.offer_best(5, {"val/pgd_ce_accuracy": 0.55})
  # Scores of monitored sets alone (no validation split) never choose.
  assert not resumed.offer_best(6, {"test_subset/pgd_ce_accuracy": 0.99})
  assert _stems(tmp_path / "best") == ["ckpt-4"]


def test_a_monitored_set_may_not_take_the_validation_name():
  with pytest.raises(ValueError, match="may not be called 'val'"):
    trainer.Trainer(trainer.TrainConfig(method="pgdat", batch_size=4), None,
                    None, "/nonexistent", monitor_input_fns={"val": None})


def test_only_the_last_checkpoints_are_kept(tmp_path):
  checkpoints = _checkpoints(tmp_path, _model())
  assert checkpoints.latest is None and checkpoints.restore() is None
  for s in (1, 2, 3):
    checkpoints.save(s)
  assert _stems(tmp_path / "checkpoints") == ["ckpt-2", "ckpt-3"]
  assert checkpoints.latest.endswith("ckpt-3")


def test_nan_stop_keeps_the_last_good_checkpoint(tmp_path):
  model = _model()
  checkpoints = _checkpoints(tmp_path, model)
  calls = []

  def run_steps(num_steps):
    calls.append(num_steps)
    if len(calls) == 3:
      # An update that overflows the weights although the loss was finite.
      model.layers[0].kernel.assign(np.full((3, 2), np.inf, np.float32))
    return {"loss": 1.0, "examples": 4.0, "nonfinite": 0.0}, num_steps

  def weights_finite():
    return all(np.isfinite(v.numpy()).all() for v in model.weights)

  acts = actions.Actions(str(tmp_path), tf.distribute.get_strategy(),
                         checkpoints, 5, ["loss", "examples", "nonfinite"],
                         lambda: 0.1, weights_finite, verbose=0)
  with pytest.raises(errors.TrainingDiverged,
                     match=r"NaN or Inf by step 3; .*\(.*ckpt-2\) is intact"):
    loop.Loop(loop.Cadence(5, 1, 1), run_steps, acts).run(0)
  assert _stems(tmp_path / "checkpoints") == ["ckpt-1", "ckpt-2"]
  reader = tf.train.load_checkpoint(str(tmp_path / "checkpoints" / "ckpt-2"))
  for key in reader.get_variable_to_dtype_map():
    if key.startswith("model/"):
      assert np.all(np.isfinite(reader.get_tensor(key))), key
  assert json.loads((tmp_path / "metrics.json").read_text())["step"] == 2


def test_check_finite_asks_about_weights_only_after_a_finite_loss():
  def unreachable():
    raise AssertionError("weights checked after a NaN loss")

  with pytest.raises(errors.TrainingDiverged,
                     match=r"by step 7; .*\(none yet\) is intact"):
    actions.check_finite(7, False, unreachable, None)
  with pytest.raises(errors.TrainingDiverged, match="ckpt-6"):
    actions.check_finite(7, True, lambda: False, "run/ckpt-6")
  actions.check_finite(7, True, lambda: True, None)


def test_lost_worker_becomes_one_line_naming_the_fix():
  with pytest.raises(errors.UserError,
                     match=r"lost contact .* \(run/ckpt-4\) is intact: "
                     "restart every worker"):
    with actions.worker_loss_as_user_error(lambda: "run/ckpt-4"):
      raise tf.errors.UnavailableError(None, None, "collective aborted")
  with pytest.raises(ValueError):
    with actions.worker_loss_as_user_error(lambda: None):
      raise ValueError("not a lost worker")


def test_metrics_are_sums_over_examples_tagged_by_their_sum():
  totals = {"loss": 6.0, "loss_ce": 4.0, "clean_correct": 3.0,
            "adv_correct": 1.0, "examples": 4.0, "nonfinite": 0.0}
  assert actions.train_metrics(totals, 0.1, 2.0) == {
      "train/loss": 1.5, "train/loss_ce": 1.0, "train/clean_accuracy": 0.75,
      "train/adv_accuracy": 0.25, "train/learning_rate": 0.1,
      "train/examples_per_second": 2.0}
  assert "train/examples_per_second" not in actions.train_metrics(
      totals, 0.1, None)
  assert actions.val_metrics({"clean_correct": 3.0, "adv_correct": 2.0,
                              "examples": 8.0}) == {
                                  "val/clean_accuracy": 0.375,
                                  "val/pgd_ce_accuracy": 0.25}
  assert actions.bar_name("train/loss_ce") == "loss_ce"
  assert actions.bar_name("val/pgd_ce_accuracy") == "val_pgd_ce_accuracy"


def test_one_dictionary_gives_the_tags_and_the_json_keys(tmp_path):
  acts = actions.Actions(str(tmp_path), tf.distribute.get_strategy(),
                         _checkpoints(tmp_path, _model()), 4, ["loss"],
                         lambda: 0.1, lambda: True, verbose=0)
  acts.record(2, {"train/loss": 1.0, "val/pgd_ce_accuracy": 0.5})
  acts.record(4, {"train/loss": 0.5})
  # metrics.json holds the latest value of every metric recorded.
  assert json.loads((tmp_path / "metrics.json").read_text()) == {
      "step": 4, "train/loss": 0.5, "val/pgd_ce_accuracy": 0.5}
  assert acts.latest == {"train/loss": 0.5, "val/pgd_ce_accuracy": 0.5}
  events = event_accumulator.EventAccumulator(
      str(tmp_path / "summaries"),
      size_guidance={event_accumulator.TENSORS: 0})
  events.Reload()
  assert set(events.Tags()["tensors"]) == {"train/loss", "val/pgd_ce_accuracy"}
  assert [e.step for e in events.Tensors("train/loss")] == [2, 4]


# The compiled step and the trainer -------------------------------------------


def test_unknown_precision_and_optimizer_are_refused():
  def no_model():
    raise AssertionError("model built for a refused config")

  config = trainer.TrainConfig(method="pgdat", mixed_precision="float64")
  with pytest.raises(ValueError, match="unknown precision 'float64'"):
    step.TrainStep(config, no_model, None, tf.distribute.get_strategy())
  with pytest.raises(ValueError, match="unknown optimizer 'rmsprop'"):
    trainer.build_optimizer(trainer.TrainConfig(method="pgdat",
                                                optimizer="rmsprop"))


def test_trainer_writes_nothing_until_it_trains_and_stops_when_asked(
    tmp_path):
  rng = np.random.RandomState(0)
  images = rng.randint(0, 256, (32, 8, 8, 3)).astype(np.uint8)
  labels = rng.randint(0, 10, 32).astype(np.int32)
  config = trainer.TrainConfig(method="pgdat", attack_steps=1, batch_size=8,
                               train_steps=6, steps_per_loop=1,
                               checkpoint_every=4)
  model_dir = tmp_path / "run"
  asked = []

  def stop_requested():
    asked.append(True)
    return len(asked) == 2

  runner = trainer.Trainer(
      config, lambda: models.wide_resnet(10, 1, 10, (8, 8, 3)),
      data.train_input_fn(images, labels, batch_size=8, seed=0,
                          augmentation=data.Augmentation()),
      str(model_dir), verbose=0, stop_requested=stop_requested)
  assert runner.restore() is None
  # Whoever holds the run folder can take it between here and ``train``.
  assert not model_dir.exists()
  result = runner.train()
  assert result.preempted and result.step == runner.step == 2
  assert _stems(model_dir / "checkpoints") == ["ckpt-2"]
  assert json.loads((model_dir / "metrics.json").read_text())["step"] == 2


@pytest.mark.parametrize("precision", ["float32", "mixed_float16"])
def test_adam_takes_the_official_tf1_epsilon(precision):
  optimizer = trainer.build_optimizer(trainer.TrainConfig(
      "pgdat", learning_rate=0.1, mixed_precision=precision))
  inner = getattr(optimizer, "inner_optimizer", optimizer)
  assert inner.epsilon == 1e-8
  # TF1's first step: lr * sqrt(1 - b2) g / (sqrt(1 - b2) |g| + eps). With
  # sqrt(1 - b2) |g| = 1e-8 the epsilon halves the step (1e-7: 1/11).
  grad = 1e-8 / np.sqrt(0.001)
  variable = keras.Variable([0.0])
  inner.apply_gradients([(tf.constant([grad]), variable)])
  np.testing.assert_allclose(variable.numpy(), [-0.1 * 0.5], rtol=1e-4)


@pytest.mark.parametrize("method", sorted(methods.METHODS))
def test_validation_is_pgd_on_cross_entropy_for_every_method(method,
                                                             monkeypatch,
                                                             tmp_path):
  rng = np.random.RandomState(0)
  images = rng.randint(0, 256, (32, 8, 8, 3)).astype(np.uint8)
  labels = rng.randint(0, 10, 32).astype(np.int32)
  config = trainer.TrainConfig(method=method, epsilon=0.02, step_size=0.005,
                               attack_steps=2, batch_size=16)
  specs = []
  perturb = pgd.perturb

  def spy(model, spec, *args, **kwargs):
    specs.append(spec)
    return perturb(model, spec, *args, **kwargs)

  monkeypatch.setattr(pgd, "perturb", spy)
  keras.utils.set_random_seed(0)
  runner = trainer.Trainer(
      config, lambda: models.wide_resnet(10, 1, 10, (8, 8, 3)),
      lambda ctx, step: data.train_dataset(
          images, labels, batch_size=16, seed=0,
          augmentation=data.Augmentation(), input_context=ctx),
      str(tmp_path), verbose=0,
      val_input_fn=lambda ctx: data.eval_dataset(
          images, labels, batch_size=16, seed=0, input_context=ctx))
  val = runner.validate()
  expected_spec = pgd.AttackSpec(0.02, 0.005, 2, "ce", "uniform", "eval")
  assert specs and set(specs) == {expected_spec}
  # By hand: correct on the clean image and on its PGD example.
  clean = robust = 0
  for batch in data.eval_dataset(images, labels, batch_size=16, seed=0):
    adv = perturb(runner.model, expected_spec, batch["image"], batch["label"],
                  batch["seed"])
    truth = batch["label"].numpy()
    clean_ok = np.argmax(runner.model(batch["image"], training=False),
                         -1) == truth
    adv_ok = np.argmax(runner.model(adv, training=False), -1) == truth
    clean += int(clean_ok.sum())
    robust += int((clean_ok & adv_ok).sum())
  assert val == {"val/clean_accuracy": clean / 32,
                 trainer.VAL_PGD_KEY: robust / 32}
