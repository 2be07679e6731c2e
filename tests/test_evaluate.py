"""End-to-end tests of `python -m rlfat_tf.evaluate` on a smoke-trained run."""

import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time

from absl import flags
import numpy as np
import pytest
from tensorboard.backend.event_processing import event_accumulator

from rlfat_tf import data
from rlfat_tf import errors
from rlfat_tf import evaluate
from rlfat_tf import runs
from rlfat_tf import saliency
from rlfat_tf import sensitivity
from rlfat_tf import trainer
from rlfat_tf.attacks import pgd

from helpers import ENV
from helpers import evaluate_values as _values
from helpers import ROOT

# Every stage, at a size that runs in seconds.
SMALL = ("--num_examples=40", "--batch_size=20", "--pgd_steps=3",
         "--apgd_steps=4", "--apgd_targets=2", "--fab_steps=2",
         "--fab_targets=2", "--square_queries=5", "--nattack_examples=4",
         "--nattack_population=8", "--nattack_iterations=10",
         "--check_examples=20", "--salience_images=2",
         "--smoothgrad_samples=2", "--noprogress")
AUTOATTACK = ("apgd_ce", "apgd_t", "fab_t", "square")


@pytest.fixture(scope="module", name="smoke_run")
def _smoke_run_copy(smoke_run, tmp_path_factory):
  """The session's smoke run (checkpoints at steps 3 and 6), copied: --watch
  writes its history into the run folder."""
  model_dir = str(tmp_path_factory.mktemp("evaluate") / "smoke")
  shutil.copytree(smoke_run, model_dir)
  return model_dir




def test_results_file_holds_every_number_and_passing_checks(smoke_run,
                                                            tmp_path):
  output = str(tmp_path / "out" / "results.json")
  payload = evaluate.run(_values(f"--model_dir={smoke_run}",
                                 f"--output={output}", *SMALL))
  with open(output) as f:
    written = json.load(f)
  assert written == json.loads(json.dumps(payload))
  assert written["schema_version"] == 1
  run = written["run"]
  assert run["checkpoint"].endswith("ckpt-6") and run["which"] == "last"
  assert (run["dataset"], run["method"], run["architecture"]) == (
      "cifar10_sample", "rlfat_p", "WRN-10-1")
  assert run["train_flags"]["train_steps"] == 6
  # The sensitivity inputs: PGD with the run's training steps (2 in the
  # smoke run), not the evaluation's --pgd_steps=3.
  pgd_2 = {"epsilon": 0.03, "step_size": 0.0075, "steps": 2, "loss": "ce",
           "start": "uniform", "bn_mode": "eval"}
  assert written["eval"] == {"split": "test", "num_examples": 40,
                             "epsilon": 0.03, "batch_size": 20, "seed": 0,
                             "sensitivity_inputs": "pgd",
                             "sensitivity_attack": pgd_2,
                             "input_scale": 1.0}
  assert set(written["attacks"]) == {"pgd", "cw", "apgd_ce", "apgd_dlr",
                                     "nattack", "autoattack"}
  assert written["attacks"]["cw"]["steps"] == 3  # --cw_steps follows PGD
  assert written["attacks"]["nattack"]["num_examples"] == 4
  for name, entry in written["attacks"].items():
    images = 4 if name == "nattack" else 40
    assert entry["images_per_second"] * entry["seconds"] == pytest.approx(
        images)
  autoattack = written["attacks"]["autoattack"]
  assert autoattack["components"] == list(AUTOATTACK)
  assert autoattack["apgd_t"]["target_classes"] == 2
  assert autoattack["fab_t"]["steps"] == 2
  assert autoattack["square"]["queries"] == 5
  metrics = written["metrics"]
  for name in ("clean", "pgd", "cw", "apgd_ce", "apgd_dlr", "worst_case",
               "nattack", "autoattack", "overall_worst_case"):
    assert 0.0 <= metrics[f"test/{name}_accuracy"] <= 1.0
  # AutoAttack's accuracy after each component, which only falls.
  after = [metrics[f"test/autoattack/after_{name}_accuracy"]
           for name in AUTOATTACK]
  assert after == sorted(after, reverse=True)
  assert after[0] <= metrics["test/clean_accuracy"]
  assert after[-1] == metrics["test/autoattack_accuracy"]
  assert metrics["test/overall_worst_case_accuracy"] <= min(
      metrics["test/worst_case_accuracy"], metrics["test/autoattack_accuracy"])
  for name in ("pgd", "cw", "apgd_ce", "apgd_dlr"):
    assert (metrics["test/worst_case_accuracy"] <=
            metrics[f"test/{name}_accuracy"] <=
            metrics["test/clean_accuracy"])
  expected = _sensitivity_by_hand(smoke_run, 40, 20, 2, gamma=(0.8, 1.2))
  assert {k: v for k, v in metrics.items()
          if k.startswith("sensitivity/")} == pytest.approx(expected, rel=1e-5)
  assert len(written["checks"]) == 10
  assert all(c["passed"] for c in written["checks"].values()), (
      written["checks"])
  assert written["checks"]["variables_unchanged"]["passed"]
  assert written["hardware"]["cpu_count"] == os.cpu_count()
  assert written["time_seconds"] > 0

  folder = os.path.dirname(output)
  assert written["salience"]["num_images"] == 2
  images, labels, maps = saliency.load_maps(
      os.path.join(folder, written["salience"]["file"]))
  assert images.shape == (2, 32, 32, 3) and maps.shape == (2, 32, 32)
  examples = np.load(os.path.join(folder, written["per_example"]["file"]))
  assert examples["worst_case"].mean() == metrics["test/worst_case_accuracy"]
  assert examples["overall_worst_case"].mean() == metrics[
      "test/overall_worst_case_accuracy"]
  assert examples["autoattack"].mean() == metrics["test/autoattack_accuracy"]
  assert len(examples["nattack"]) == 4 and len(examples["labels"]) == 40
  assert not [f for f in os.listdir(folder) if f.endswith(".tmp")]
  # The progress saved along the way goes once the results are written.
  assert written["resumed_batches"] == 0
  assert not os.path.exists(os.path.join(folder, "results_state"))


def _sensitivity_by_hand(model_dir, num, batch_size, steps, gamma,
                         inputs="pgd"):
  """Table 2 as the official code measures it: on the PGD output of every
  image (eps 0.03, step 0.0075, uniform start, BN eval), by eager calls."""
  model, _, _ = runs.restore_model(model_dir)
  images, labels = [], []
  for batch in data.eval_dataset(
      *evaluate.load_images(runs.load_record(model_dir), _values(
          f"--model_dir={model_dir}", f"--num_examples={num}"), "test"),
      batch_size=batch_size):
    labels.append(batch["label"].numpy())
    if inputs == "clean":
      images.append(batch["image"].numpy())
      continue
    images.append(pgd.perturb(model, pgd.pgd(0.03, 0.0075, steps, "eval"),
                              batch["image"], batch["label"],
                              batch["seed"]).numpy())
  return sensitivity.loss_sensitivity(
      model, np.concatenate(images), np.concatenate(labels),
      brightness=(-0.15,), gamma=gamma, verbose=0)


def test_sensitivity_pgd_steps_override_and_clean_inputs(smoke_run, tmp_path):
  common = (f"--model_dir={smoke_run}", "--num_examples=20",
            "--batch_size=10", "--attacks=pgd", "--pgd_steps=1",
            "--nochecks", "--salience_images=0", "--gamma=", "--noprogress")
  payload = evaluate.run(_values(*common, f"--output={tmp_path / 'a.json'}",
                                 "--sensitivity_pgd_steps=1"))
  assert payload["eval"]["sensitivity_attack"]["steps"] == 1
  assert payload["metrics"]["sensitivity/brightness_-0.15"] == pytest.approx(
      _sensitivity_by_hand(smoke_run, 20, 10, 1, gamma=())[
          "sensitivity/brightness_-0.15"], rel=1e-5)
  payload = evaluate.run(_values(*common, f"--output={tmp_path / 'b.json'}",
                                 "--sensitivity_inputs=clean"))
  assert payload["eval"]["sensitivity_attack"] is None
  assert payload["metrics"]["sensitivity/brightness_-0.15"] == pytest.approx(
      _sensitivity_by_hand(smoke_run, 20, 10, None, gamma=(),
                           inputs="clean")["sensitivity/brightness_-0.15"],
      rel=1e-5)


def test_bad_inputs_name_the_fix(smoke_run, tmp_path):
  common = (f"--model_dir={smoke_run}", f"--output={tmp_path / 'r.json'}")
  with pytest.raises(errors.UserError, match="at most 100"):
    evaluate.run(_values(*common, "--split=val", "--num_examples=101"))
  with pytest.raises(errors.UserError, match="holds no training run"):
    evaluate.run(_values(f"--model_dir={tmp_path}", "--which=best"))
  assert not os.path.exists(tmp_path / "r.json")
  for bad in ("--epsilon=0", "--attacks=pgd,fgsm", "--gamma=-1",
              "--brightness=dark", "--sensitivity_pgd_steps=0"):
    with pytest.raises(flags.IllegalFlagValueError):
      _values(*common, bad)


def _tags(folder):
  acc = event_accumulator.EventAccumulator(
      folder, size_guidance={event_accumulator.TENSORS: 0})
  acc.Reload()
  return {tag: [e.step for e in acc.Tensors(tag)]
          for tag in acc.Tags()["tensors"]}


def test_watch_evaluates_each_checkpoint_once_as_the_trainer_does(smoke_run):
  # The attack flags do not apply: the sidecar validates as the trainer.
  values = _values(f"--model_dir={smoke_run}", "--watch", "--pgd_steps=7",
                   "--epsilon=0.1", "--batch_size=32", "--watch_timeout=1",
                   "--noprogress")
  history = evaluate.watch(values)
  assert [e["step"] for e in history] == [3, 6]
  for entry in history:
    assert entry["attack"] == {"epsilon": 0.03, "step_size": 0.0075,
                               "steps": 2, "loss": "ce", "start": "uniform",
                               "bn_mode": "eval"}
    assert 0.0 <= entry["val/pgd_ce_accuracy"] <= entry["val/clean_accuracy"]
  # The same number, under the same name, as the trainer's last validation.
  with open(os.path.join(smoke_run, "metrics.json")) as f:
    trained = json.load(f)
  assert trained["step"] == 6
  for key in ("val/clean_accuracy", trainer.VAL_PGD_KEY):
    assert history[-1][key] == trained[key], key
  with open(os.path.join(smoke_run, "eval_history.jsonl")) as f:
    assert [json.loads(line) for line in f] == history
  assert _tags(os.path.join(smoke_run, "summaries_eval")) == {
      "val/clean_accuracy": [3, 6], "val/pgd_ce_accuracy": [3, 6]}
  # The last step is done: a second sidecar evaluates nothing and stops.
  assert evaluate.watch(values) == history


# AutoAttack alone, one image per batch, so that it runs through many batch
# boundaries in seconds.
RESUMABLE = ("--num_examples=40", "--batch_size=1", "--attacks=autoattack",
             "--apgd_steps=20", "--apgd_targets=3", "--fab_steps=10",
             "--fab_targets=3", "--square_queries=200", "--nochecks",
             "--brightness=", "--gamma=", "--salience_images=0",
             "--noprogress")


def _batches(folder):
  """The batch files of a state folder."""
  return sorted(str(p) for p in pathlib.Path(folder).glob("*/*.npz"))


def _wait_for(condition, proc, what):
  """Polls ``condition`` until it holds; fails if ``proc`` ended first."""
  while not condition():
    assert proc.poll() is None, f"the evaluation ended before {what}"
    time.sleep(0.02)


def _start_evaluation(*argv):
  return subprocess.Popen(
      [sys.executable, "-m", "rlfat_tf.evaluate", *argv], env=ENV, cwd=ROOT,
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_an_evaluation_killed_twice_resumes_to_an_uninterrupted_runs_verdicts(
    smoke_run, tmp_path):
  output = tmp_path / "killed" / "results.json"
  state = tmp_path / "killed" / "results_state"
  command = [f"--model_dir={smoke_run}", f"--output={output}", *RESUMABLE]
  # SIGKILL once the first batch is on disk: what was saved stays.
  proc = _start_evaluation(*command)
  try:
    _wait_for(lambda: _batches(state), proc, "its first batch")
    proc.kill()
    proc.wait(timeout=60)
  finally:
    proc.kill()
  kept = _batches(state)
  assert kept and not output.exists()

  # Other settings are refused, naming the flag, and lose nothing.
  with pytest.raises(errors.UserError) as raised:
    evaluate.run(_values(*command, "--epsilon=0.02"))
  assert str(raised.value) == (
      f"{state} holds the progress of an evaluation with --epsilon=0.03, not "
      f"--epsilon=0.02: rerun with --epsilon=0.03 to resume it, or pass "
      f"--noresume to start afresh")
  assert _batches(state) == kept

  # SIGTERM once the rerun has saved a batch of its own: it saves the batch
  # it is on and exits 143.
  proc = _start_evaluation(*command)
  try:
    resumed = proc.stdout.readline()
    assert resumed == (f"resuming from {state} ({len(kept)} "
                       f"batch{'es' if len(kept) > 1 else ''} saved)\n")
    _wait_for(lambda: len(_batches(state)) > len(kept), proc,
              "a batch of its own")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
  finally:
    proc.kill()
  assert proc.returncode == 143, err
  lines = [l for l in err.splitlines() if l.startswith(("received",
                                                        "stopped", "error"))]
  assert lines[0] == ("received SIGTERM: saving the evaluation's progress at "
                      "the next batch boundary")
  assert re.fullmatch(
      rf"stopped after batch \d+ of \d+ of autoattack/\w+ on SIGTERM, with "
      rf"the progress in {re.escape(str(state))} saved: run the same command "
      rf"again to resume", lines[1]), lines
  assert len(lines) == 2
  saved = _batches(state)
  assert set(kept) < set(saved) and not output.exists()

  payload = evaluate.run(_values(*command))
  assert payload["resumed_batches"] == len(saved)
  assert not state.exists()
  uninterrupted = tmp_path / "whole" / "results.json"
  whole = evaluate.run(_values(f"--model_dir={smoke_run}",
                               f"--output={uninterrupted}", *RESUMABLE))
  assert whole["resumed_batches"] == 0
  assert payload["metrics"] == whole["metrics"]
  assert 0 < whole["metrics"]["test/autoattack_accuracy"] < whole["metrics"][
      "test/clean_accuracy"]
  verdicts = np.load(output.parent / "results_examples.npz")
  expected = np.load(uninterrupted.parent / "results_examples.npz")
  assert verdicts.files == expected.files
  for key in expected.files:
    np.testing.assert_array_equal(verdicts[key], expected[key])


def test_cli_exits_3_and_says_so_when_a_check_fails(smoke_run, tmp_path):
  output = tmp_path / "failed.json"
  # At eps = 0 the "large" radius cannot lower accuracy: that check fails.
  proc = subprocess.run(
      [sys.executable, "-m", "rlfat_tf.evaluate", f"--model_dir={smoke_run}",
       f"--output={output}", *SMALL, "--attacks=pgd", "--large_epsilon=0",
       "--brightness=", "--gamma=", "--salience_images=0"],
      capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=300,
      check=False)
  assert proc.returncode == 3, proc.stderr
  assert "INTEGRITY CHECK FAILED: large_epsilon_breaks_all" in proc.stderr
  with open(output) as f:
    written = json.load(f)
  assert not written["checks"]["large_epsilon_breaks_all"]["passed"]
  assert written["checks"]["perturbation_within_bounds"]["passed"]
  assert set(written["attacks"]) == {"pgd"} and written["salience"] is None
  assert not any(k.startswith("sensitivity/") for k in written["metrics"])


# An evaluation whose verdicts a saved copy of the model must reproduce:
# every AutoAttack component, PGD and the N attack, no checks.
VERDICTS = (*SMALL, "--attacks=pgd,nattack,autoattack", "--nochecks",
            "--brightness=", "--gamma=", "--salience_images=0")


@pytest.fixture(scope="module")
def saved_copies(smoke_run, tmp_path_factory):
  """The smoke run's last checkpoint exported by rlfat_tf.export (the
  SavedModel that TF Serving loads) and saved as a .keras file."""
  from rlfat_tf import export  # pylint: disable=import-outside-toplevel
  root = tmp_path_factory.mktemp("saved")
  version, _ = export.export(str(smoke_run), str(root / "exports"),
                             tflite_variants=(), eval_examples=4,
                             pgd_steps=1, progress=False)
  model, _, _ = runs.restore_model(smoke_run)
  model.save(str(root / "model.keras"))
  return {"savedmodel": version, "keras": str(root / "model.keras")}


def test_saved_copies_of_a_run_give_its_per_image_verdicts(
    smoke_run, saved_copies, tmp_path):
  evaluate.run(_values(f"--model_dir={smoke_run}",
                       f"--output={tmp_path / 'run.json'}", *VERDICTS))
  expected = np.load(tmp_path / "run_examples.npz")
  for name, path in saved_copies.items():
    output = tmp_path / f"{name}.json"
    payload = evaluate.run(_values(f"--model={path}",
                                   "--dataset=cifar10_sample",
                                   f"--output={output}", *VERDICTS))
    got = np.load(tmp_path / f"{name}_examples.npz")
    assert sorted(got.files) == sorted(expected.files)
    for key in expected.files:
      np.testing.assert_array_equal(got[key], expected[key], err_msg=key)
    assert payload["run"]["model"] == path
    assert payload["run"]["dataset"] == "cifar10_sample"
  assert payload["eval"]["input_scale"] == 1.0


@pytest.mark.parametrize("argv, message", [
    (("--dataset=cifar10_sample",), "has no run folder to write results "
     "into: pass --output"),
    (("--output=OUT",),
     "needs the dataset its images come from: pass --dataset"),
    (("--dataset=cifar100", "--output=OUT"), "outputs shape \\(10,\\) per "
     "image, but cifar100 has 100 classes"),
    (("--dataset=stl10", "--output=OUT"), "takes images of shape "
     "\\(32, 32, 3\\), but stl10 has \\(96, 96, 3\\)"),
    (("--dataset=cifar10_sample", "--output=OUT", "--split=val"),
     "needs a run's validation split"),
    (("--dataset=cifar10_sample", "--output=OUT", "--signature=x"),
     "applies to SavedModels"),
    (("--dataset=cifar10_sample", "--output=OUT", "--which=best"),
     "--which=best picks a run's checkpoint"),
    (("--dataset=cifar10_sample", "--output=OUT", "--watch"),
     "--watch follows a training run"),
])
def test_bad_model_inputs_are_one_line(saved_copies, tmp_path, argv, message):
  argv = [a.replace("OUT", str(tmp_path / "r.json")) for a in argv]
  with pytest.raises(errors.UserError, match=message) as e:
    evaluate.run(_values(f"--model={saved_copies['keras']}", *argv))
  assert "\n" not in str(e.value)
  assert not os.path.exists(tmp_path / "r.json")


def test_softmax_model_and_unreadable_file_exit_2(saved_copies, tmp_path):
  import keras  # pylint: disable=import-outside-toplevel
  model = keras.saving.load_model(saved_copies["keras"])
  softmax = keras.Sequential([model, keras.layers.Softmax()])
  softmax.save(str(tmp_path / "softmax.keras"))
  (tmp_path / "broken.keras").write_bytes(b"not a zip file")
  for path, message in (
      (tmp_path / "softmax.keras", "error: the model outputs probabilities, "
       "not logits: evaluate the model without its final softmax"),
      (tmp_path / "broken.keras", "error: cannot read the Keras model")):
    proc = subprocess.run(
        [sys.executable, "-m", "rlfat_tf.evaluate", f"--model={path}",
         "--dataset=cifar10_sample", f"--output={tmp_path / 'r.json'}",
         "--noprogress"],
        capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=300,
        check=False)
    assert proc.returncode == 2, proc.stderr
    # TensorFlow's start-up lines may go to stderr too; ours is the one line.
    lines = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
    assert len(lines) == 1 and lines[0].startswith(message), proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
  assert not os.path.exists(tmp_path / "r.json")


def test_model_and_model_dir_are_exclusive(smoke_run, saved_copies):
  with pytest.raises(flags.IllegalFlagValueError, match="not both"):
    _values(f"--model_dir={smoke_run}", f"--model={saved_copies['keras']}")
  with pytest.raises(flags.IllegalFlagValueError, match="either"):
    _values("--epsilon=0.03")
