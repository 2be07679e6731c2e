"""Tests of an evaluation's saved progress: the state folder's contract, and
evaluations stopped at every batch boundary that resume to the verdicts of an
uninterrupted run."""

import json
import os
import signal

import keras
import numpy as np
import pytest

from rlfat_tf import errors
from rlfat_tf import evalstate
from rlfat_tf import preemption
from rlfat_tf import robustness

import helpers

SETTINGS = {"--epsilon": 0.03, "--attacks": ("pgd", "apgd_ce"),
            "--checks": True, "checkpoint": "run/checkpoints/ckpt-6"}


class StopAfter:
  """A stand-in for a ``PreemptionWatcher`` that asks to stop once its state
  has saved ``saves`` batches, as a SIGTERM arriving then would."""

  def __init__(self, saves):
    self.saves = saves
    self.state = None
    self.received = signal.SIGTERM

  @property
  def requested(self):
    return self.state.saved >= self.saves


def _open(folder, watcher=None, settings=SETTINGS, **kwargs):
  state = evalstate.EvalState.open(str(folder), settings, watcher=watcher,
                                   **kwargs)
  if watcher is not None:
    watcher.state = state
  return state


def _batch(value, n=2):
  return {"robust": np.full(n, value), "seconds": np.float64(0.5)}


def test_batches_come_back_in_order_and_runs_are_numbered(tmp_path):
  folder = tmp_path / "results_state"
  state = _open(folder)
  assert json.loads((folder / "settings.json").read_text()) == {
      "--attacks": ["pgd", "apgd_ce"], "--checks": True, "--epsilon": 0.03,
      "checkpoint": "run/checkpoints/ckpt-6"}
  first, second = state.run("autoattack/apgd_ce"), state.run("check x, y")
  assert first.batches == second.batches == []
  first.save(0, _batch(True), total=3)
  first.save(1, _batch(False), total=3)
  second.save(0, _batch(True, 5), total=1)
  assert sorted(os.listdir(folder)) == [
      "000_autoattack_apgd_ce", "001_check_x_y", "settings.json"]
  # A write cut short leaves a temporary file, which is no batch.
  (folder / "000_autoattack_apgd_ce" / "00002.npz.tmp").write_bytes(b"x")

  again = _open(folder)
  assert again.found == 3
  first, second = again.run("autoattack/apgd_ce"), again.run("check x, y")
  assert [b["robust"].tolist() for b in first.batches] == [[True, True],
                                                           [False, False]]
  assert first.saved_seconds == 1.0
  assert [len(b["robust"]) for b in second.batches] == [5]
  assert (again.loaded, again.saved) == (3, 0)
  # A run the earlier evaluation never reached starts empty.
  assert again.run("square").batches == []
  again.remove()
  assert not folder.exists()


@pytest.mark.parametrize("change, message", [
    ({"--epsilon": 0.02}, "with --epsilon=0.03, not --epsilon=0.02: rerun "
     "with --epsilon=0.03 to resume it, or pass --noresume to start afresh"),
    ({"--attacks": ["pgd"]}, "with --attacks=pgd,apgd_ce, not --attacks=pgd: "
     "rerun with --attacks=pgd,apgd_ce to resume it, or pass --noresume to "
     "start afresh"),
    ({"--checks": False}, "with --checks, not --nochecks: rerun with "
     "--checks to resume it, or pass --noresume to start afresh"),
    ({"checkpoint": "run/checkpoints/ckpt-9"}, "with checkpoint = "
     "'run/checkpoints/ckpt-6', not 'run/checkpoints/ckpt-9': pass "
     "--noresume to start afresh"),
])
def test_other_settings_are_refused_naming_the_first_change(tmp_path, change,
                                                            message):
  folder = tmp_path / "state"
  _open(folder).run("pgd").save(0, _batch(True), total=2)
  with pytest.raises(errors.UserError) as raised:
    _open(folder, settings={**SETTINGS, **change},
          fresh_hint="pass --noresume to start afresh")
  assert str(raised.value) == (
      f"{folder} holds the progress of an evaluation {message}")
  # Nothing was lost: the same settings still resume it.
  assert len(_open(folder).run("pgd").batches) == 1


def test_no_resume_and_a_folder_without_settings_start_afresh(tmp_path):
  folder = tmp_path / "state"
  _open(folder).run("pgd").save(0, _batch(True), total=2)
  fresh = _open(folder, settings={**SETTINGS, "--epsilon": 0.5},
                resume=False)
  assert fresh.found == 0 and fresh.run("pgd").batches == []
  assert json.loads((folder / "settings.json").read_text())[
      "--epsilon"] == 0.5
  # A folder left without its settings (killed before they were written)
  # holds nothing usable.
  (folder / "settings.json").unlink()
  (folder / "000_pgd").mkdir(exist_ok=True)
  assert _open(folder).run("pgd").batches == []


def test_a_stop_request_raises_after_the_batch_is_saved(tmp_path):
  folder = tmp_path / "state"
  state = _open(folder, watcher=StopAfter(2))
  run = state.run("autoattack/apgd_t")
  run.save(0, _batch(True), total=4)
  with pytest.raises(preemption.Stopped) as raised:
    run.save(1, _batch(False), total=4)
  assert raised.value.status == 143
  assert str(raised.value) == (
      f"stopped after batch 2 of 4 of autoattack/apgd_t on SIGTERM, with the "
      f"progress in {folder} saved: run the same command again to resume")
  assert len(_open(folder).run("autoattack/apgd_t").batches) == 2


def test_the_digest_sees_values_dtypes_and_shapes():
  a = np.arange(12, dtype=np.uint8).reshape(3, 4)
  assert evalstate.digest(a, a[:, 0]) == evalstate.digest(a.copy(),
                                                          a[:, 0].copy())
  b = a.copy()
  b[2, 3] += 1
  assert len({evalstate.digest(a), evalstate.digest(b),
              evalstate.digest(a.astype(np.int32)),
              evalstate.digest(a.reshape(4, 3))}) == 4


def test_run_attack_takes_saved_batches_as_they_are(tmp_path):
  model = helpers.colour_model()
  images, labels = helpers.colour_data(12)
  attack = robustness.EvalConfig(attacks=("pgd",)).build()[0]
  full = robustness.run_attack(model, attack, images, labels, batch_size=4,
                               verbose=0)
  state = _open(tmp_path / "state", watcher=StopAfter(1))
  with pytest.raises(preemption.Stopped):
    robustness.run_attack(model, attack, images, labels, batch_size=4,
                          verbose=0, saved=state.run("pgd"))
  # The saved batch is the first four examples' results; changed on disk,
  # the change shows in the result, so the resumed run did not redo it.
  path = tmp_path / "state" / "000_pgd" / "00000.npz"
  saved = dict(np.load(path))
  np.testing.assert_array_equal(saved["robust"], full["robust"][:4])
  saved["linf"] = np.full(4, 7.0, np.float32)
  np.savez(path, **saved)
  resumed = robustness.run_attack(model, attack, images, labels,
                                  batch_size=4, verbose=0,
                                  saved=_open(tmp_path / "state").run("pgd"))
  np.testing.assert_array_equal(resumed["linf"][:4], 7.0)
  for key in ("robust", "low", "high"):
    np.testing.assert_array_equal(resumed[key], full[key])
  np.testing.assert_array_equal(resumed["linf"][4:], full["linf"][4:])


# AutoAttack at a size that runs in seconds, and the integrity checks.
CONFIG = robustness.EvalConfig(
    attacks=("pgd", "autoattack"), check_examples=4, batch_size=4,
    settings={"pgd_steps": 5, "apgd_steps": 6, "apgd_targets": 2,
              "fab_steps": 3, "fab_targets": 2, "square_queries": 20})


def _five_classes():
  """A small random CNN of five classes (APGD-T needs four or more), and
  twelve images labelled with its own predictions, most of them a small
  step from another class."""
  keras.utils.set_random_seed(3)
  model = keras.Sequential([
      keras.Input((6, 6, 3)), keras.layers.Conv2D(4, 3, activation="relu"),
      keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(5)])
  images = np.random.default_rng(0).uniform(0, 1, (12, 6, 6, 3)).astype(
      np.float32)
  return model, images, np.argmax(model(images).numpy(), -1).astype(np.int32)


def test_an_evaluation_stopped_at_every_batch_resumes_to_the_same_verdicts(
    tmp_path):
  model, images, labels = _five_classes()
  full = robustness.evaluate(model, images, labels, CONFIG, verbose=0)
  folder = tmp_path / "state"
  stops = 0
  while True:
    # Each rerun stops after one more batch; where the checks begin, every
    # third (each rerun computes the checks' other numbers again).
    saves = 3 if (folder / "005_check_PGD-5_1_restart_s_eps=0.0075_seed_0"
                  ).exists() else 1
    state = _open(folder, watcher=StopAfter(saves))
    try:
      out = robustness.evaluate(model, images, labels, CONFIG, verbose=0,
                                state=state)
      break
    except preemption.Stopped:
      stops += 1
      assert state.saved == saves
  batches = {d: len(os.listdir(folder / d))
             for d in sorted(os.listdir(folder)) if d != "settings.json"}
  assert state.loaded + state.saved == sum(batches.values())
  # One stop after every batch of PGD and of each stage of AutoAttack.
  attacks = {d[4:]: n for d, n in batches.items() if d < "005"}
  assert list(attacks) == ["pgd", "autoattack_apgd_ce", "autoattack_apgd_t",
                           "autoattack_fab_t", "autoattack_square"]
  assert stops > sum(attacks.values()) > 5
  assert out["metrics"] == full["metrics"]
  assert out["checks"] == full["checks"]
  assert out["per_example"].keys() == full["per_example"].keys()
  for key, value in full["per_example"].items():
    np.testing.assert_array_equal(out["per_example"][key], value)
  # The seconds of the batches taken from disk count in their stage's.
  stage = out["attacks"]["autoattack"]["apgd_ce"]
  assert stage["seconds"] >= stage_saved_seconds(folder, "autoattack_apgd_ce")


def stage_saved_seconds(folder, name):
  """The seconds the batches of the run ``name`` recorded."""
  (run,) = [d for d in os.listdir(folder) if d.endswith(name)]
  return sum(float(np.load(os.path.join(folder, run, f))["seconds"])
             for f in os.listdir(os.path.join(folder, run)))


def test_evaluate_robustness_resumes_from_its_state_dir(tmp_path,
                                                       monkeypatch):
  model = helpers.colour_model()
  images, labels = helpers.colour_data(8)
  folder = str(tmp_path / "progress")
  kwargs = {"epsilon": 0.03, "attacks": ("apgd_ce",), "checks": False,
            "batch_size": 4}
  full = robustness.evaluate_robustness(model, images, labels, **kwargs)
  # Ctrl-C in a notebook, once the first batch is saved.
  save = evalstate.Run.save

  def interrupted(self, batch, arrays, total):
    save(self, batch, arrays, total)
    raise KeyboardInterrupt

  monkeypatch.setattr(evalstate.Run, "save", interrupted)
  with pytest.raises(KeyboardInterrupt):
    robustness.evaluate_robustness(model, images, labels, state_dir=folder,
                                   **kwargs)
  monkeypatch.setattr(evalstate.Run, "save", save)
  assert os.listdir(os.path.join(folder, "000_apgd_ce")) == ["00000.npz"]
  with pytest.raises(errors.UserError, match="with epsilon = 0.03, not 0.02"):
    robustness.evaluate_robustness(model, images, labels, state_dir=folder,
                                   **{**kwargs, "epsilon": 0.02})
  with pytest.raises(errors.UserError, match="with image set = '"):
    robustness.evaluate_robustness(model, images[::-1], labels[::-1],
                                   state_dir=folder, **kwargs)
  report = robustness.evaluate_robustness(model, images, labels,
                                          state_dir=folder, **kwargs)
  np.testing.assert_array_equal(report.per_example["apgd_ce"],
                                full.per_example["apgd_ce"])
  assert not os.path.exists(folder)
