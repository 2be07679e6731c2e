"""Tests of the AutoAttack comparison (its bookkeeping, not its speed).

The reference side runs only where scripts/install_autoattack.sh has made
its environment (``aabench.DEFAULT_VENV``, or the one named by
RLFAT_AUTOATTACK_VENV); elsewhere that test is skipped with the reason. It
attacks at a radius that breaks every image in APGD-CE, so that it takes
seconds: the later components then have nothing left to attack.
"""

import importlib.util
import json
import os
import sys

import keras
import numpy as np
import pytest

from rlfat_tf import aabench
from rlfat_tf import errors
from rlfat_tf import models
from rlfat_tf import robustness

from helpers import run_module

VENV = os.environ.get("RLFAT_AUTOATTACK_VENV", aabench.DEFAULT_VENV)
needs_reference = pytest.mark.skipif(
    not os.path.isfile(os.path.join(VENV, "bin", "python")),
    reason=f"no reference environment at {VENV}: run "
           f"scripts/install_autoattack.sh (or set RLFAT_AUTOATTACK_VENV) to "
           f"test the reference side")
# Large enough that APGD-CE breaks every image of the tiny model.
BREAKING_EPS = 0.5


@pytest.fixture(scope="module")
def model():
  # Ten classes: APGD-T and FAB-T take the nine runner-up classes.
  keras.utils.set_random_seed(0)
  return models.wide_resnet(10, 1, 10, (8, 8, 3))


@pytest.fixture(scope="module")
def batch(model):
  """6 random images; the first 4 labelled as the model predicts them."""
  rng = np.random.default_rng(0)
  images = rng.uniform(size=(6, 8, 8, 3)).astype(np.float32)
  predicted = model(images, training=False).numpy().argmax(-1)
  labels = ((predicted + 1) % 10).astype(np.int32)
  labels[:4] = predicted[:4]
  return images, labels


def test_verdicts_are_compared_image_by_image():
  project = [True, True, False, False, True]
  reference = [True, False, True, False, False]
  assert aabench.compare_verdicts(project, reference) == {
      "differing": 3, "differing_indices": [1, 2, 4],
      "robust_only_in_project": 2, "robust_only_in_reference": 1}
  with pytest.raises(ValueError, match="verdicts of"):
    aabench.compare_verdicts(project, reference[:4])


def _sides(project_seconds, reference_seconds, images):
  project = {"components": {}, "total_seconds": project_seconds[-1]}
  reference = {"components": {}, "total_seconds": reference_seconds[-1]}
  for i, (stage, (name, _)) in enumerate(aabench.COMPONENTS.items()):
    project["components"][stage] = {"seconds": project_seconds[i],
                                    "images": images[i]}
    reference["components"][name] = {"seconds": reference_seconds[i],
                                     "calls": 1, "images": images[i] + 1}
  return project, reference


def test_timing_table_divides_reference_by_project_per_component():
  project, reference = _sides([2.0, 4.0, 5.0, 0.0, 12.0],
                              [6.0, 4.0, 10.0, 0.5, 30.0], [9, 5, 4, 0])
  table = aabench.timing_table(project, reference)
  assert list(table) == ["apgd_ce", "apgd_t", "fab_t", "square", "total"]
  assert table["apgd_ce"] == {"project": 2.0, "reference": 6.0, "ratio": 3.0,
                              "images": {"project": 9, "reference": 10}}
  assert table["fab_t"]["ratio"] == 2.0
  # A component with nothing to attack took no time: no ratio.
  assert table["square"]["ratio"] is None
  assert table["total"] == {"project": 12.0, "reference": 30.0, "ratio": 2.5}


def test_table_shows_every_component_the_total_and_the_verdicts():
  project, reference = _sides([2.0, 4.0, 5.0, 0.0, 12.0],
                              [6.0, 4.0, 10.0, 0.5, 30.0], [9, 5, 4, 0])
  results = {
      "settings": {"num_examples": 10, "epsilon": 0.03, "batch_size": 100,
                   "seed": 0},
      "seconds": aabench.timing_table(project, reference),
      "verdicts": {"differing": 1, "robust_only_in_project": 1,
                   "robust_only_in_reference": 0},
      "project": {"clean_accuracy": 0.9, "robust_accuracy": 0.4},
      "reference": {"clean_accuracy": 0.9, "robust_accuracy": 0.3,
                    "versions": {"pyautoattack": "0.2.0",
                                 "torch": "2.13.0+cpu"}},
      "run": {"architecture": "WRN-10-2", "dataset": "cifar10", "step": 7},
      "machine": {"cpu_model": "Some CPU", "cores": 2, "project_cpu": 0,
                  "reference_cpu": 1, "load_average_start": [0.5, 0, 0],
                  "load_average_end": [2.0, 0, 0]}}
  lines = aabench.format_table(results).splitlines()
  assert lines[0] == ("WRN-10-2 cifar10, step 7; Some CPU, 2 cores, load "
                      "0.50 -> 2.00")
  assert "pyautoattack 0.2.0 (torch 2.13.0+cpu) on CPU 1" in lines[1]
  rows = {line.split()[0]: line.split() for line in lines[5:10]}
  assert rows["APGD-CE"] == ["APGD-CE", "9/10", "2.0", "6.0", "3.00"]
  assert rows["Square"] == ["Square", "0/1", "0.0", "0.5", "-"]
  assert rows["total"] == ["total", "12.0", "30.0", "2.50"]
  assert lines[-1].startswith("per-image verdicts differ on 1 of 10 images "
                              "(1 robust only for rlfat_tf")


def test_model_passes_follow_the_attack_settings():
  # The standard version: 100 APGD steps, 9 targets for APGD-T and FAB-T,
  # 100 FAB steps, 5,000 Square queries.
  assert aabench.model_passes() == {"apgd_ce": (0, 100),
                                    "apgd_t": (0, 900),
                                    "fab_t": (900, 900),
                                    "square": (5000, 0)}
  values = {"apgd_steps": 4, "apgd_targets": 2, "fab_steps": 3,
            "fab_targets": 5, "square_queries": 7}
  assert aabench.model_passes(values) == {
      "apgd_ce": (0, 4), "apgd_t": (0, 8), "fab_t": (15, 15),
      "square": (7, 0)}


def test_floor_counts_each_components_images_and_passes_by_hand():
  project, reference = _sides([2.0, 4.0, 5.0, 0.0, 12.0],
                              [6.0, 4.0, 10.0, 0.5, 30.0], [9, 5, 4, 0])
  seconds = aabench.timing_table(project, reference)
  costs = {"forward": 0.5, "forward_backward": 1.0}
  floor = aabench.floor_seconds(seconds, costs, {
      "apgd_ce": (0, 2), "apgd_t": (0, 6), "fab_t": (3, 3),
      "square": (10, 0)})
  # 9 x 2 x 1.0; 5 x 6 x 1.0; 4 x 3 x (0.5 + 1.0); nothing left for Square.
  assert floor == {"apgd_ce": 18.0, "apgd_t": 30.0, "fab_t": 18.0,
                   "square": 0.0, "total": 66.0}
  results = {
      "settings": {"num_examples": 10, "epsilon": 0.03, "batch_size": 100,
                   "seed": 0},
      "seconds": seconds,
      "verdicts": {"differing": 0, "robust_only_in_project": 0,
                   "robust_only_in_reference": 0},
      "project": {"clean_accuracy": 0.9, "robust_accuracy": 0.4},
      "reference": {"clean_accuracy": 0.9, "robust_accuracy": 0.4,
                    "versions": {}},
      "model_passes": {"floor_seconds": floor, "seconds_per_image": {
          **costs, "batch_size": 100}}}
  lines = aabench.format_table(results).splitlines()
  assert lines[2].split()[-3:] == ["ref/rlfat_tf", "passes", "s"]
  rows = {line.split()[0]: line.split() for line in lines[3:8]}
  assert rows["FAB-T"] == ["FAB-T", "4/5", "5.0", "10.0", "2.00", "18.0"]
  assert rows["total"][-1] == "66.0"
  assert "500.00 ms forward and 1000.00 ms forward-backward" in lines[9]


def test_pass_costs_time_both_passes_per_image(model, batch):
  costs = aabench.pass_costs(model, batch[0], repeats=2)
  assert (costs["batch_size"], costs["repeats"]) == (6, 2)
  # Seconds per image, whatever they are (timings are not asserted).
  assert set(costs) == {"forward", "forward_backward", "batch_size",
                        "repeats"}
  assert costs["forward"] > 0 and costs["forward_backward"] > 0


def test_missing_venv_names_the_install_script(tmp_path):
  with pytest.raises(errors.UserError,
                     match=f"--venv={tmp_path} has no bin/python.*"
                           f"scripts/install_autoattack.sh {tmp_path}"):
    aabench.venv_python(str(tmp_path))


def test_benchmark_without_the_venv_says_so_in_one_line(tmp_path):
  result = run_module("rlfat_tf.benchmark", "--mode=autoattack",
                      f"--model_dir={tmp_path}", f"--venv={tmp_path}/none",
                      timeout=120)
  assert result.returncode == 2
  assert "Traceback" not in result.stderr
  lines = [l for l in result.stderr.splitlines() if l.startswith("error:")]
  assert len(lines) == 1 and "scripts/install_autoattack.sh" in lines[0]


def test_both_sides_need_a_cpu_each(monkeypatch):
  monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3})
  with pytest.raises(errors.UserError, match="may use only CPU 3"):
    aabench.two_cpus()
  monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {7, 2, 5})
  assert aabench.two_cpus() == (2, 5)


def test_project_side_is_the_evaluations_autoattack(model, batch):
  images, labels = batch
  ours = aabench.project_autoattack(model, images, labels,
                                    epsilon=BREAKING_EPS, batch_size=3,
                                    seed=1)
  assert ours["clean_correct"].tolist() == [True] * 4 + [False] * 2
  assert not ours["robust"].any()
  assert ours["total_seconds"] >= ours["autoattack_seconds"] > 0
  # APGD-CE attacks the correctly classified images and breaks them all.
  assert {s: c["images"] for s, c in ours["components"].items()} == {
      "apgd_ce": 4, "apgd_t": 0, "fab_t": 0, "square": 0}
  assert ours["components"]["apgd_ce"]["seconds"] > 0
  evaluated = robustness.evaluate(
      model, images, labels,
      robustness.EvalConfig(attacks=("autoattack",), epsilon=BREAKING_EPS,
                            checks=False, batch_size=3, seed=1), verbose=0)
  assert (evaluated["per_example"]["autoattack"].tolist()
          == ours["robust"].tolist())


def test_a_python_without_the_reference_names_the_install_script(
    model, batch, tmp_path):
  if importlib.util.find_spec("pyautoattack") is not None:
    pytest.skip("this Python has pyautoattack")
  images, labels = batch
  path = str(tmp_path / "model.keras")
  model.save(path)
  reference = aabench.Reference(
      sys.executable, path, images, labels, epsilon=0.03,
      batch_size=4, seed=0, cpu=None, folder=str(tmp_path))
  try:
    with pytest.raises(errors.UserError,
                       match="cannot run the reference.*install_autoattack"):
      reference.wait_ready()
  finally:
    reference.stop()


@needs_reference
def test_reference_runs_fra31s_attacks_beside_the_project(model, batch,
                                                          tmp_path):
  images, labels = batch
  path = str(tmp_path / "model.keras")
  model.save(path)
  cpu = min(os.sched_getaffinity(0))
  results = aabench.compare(model, path, images, labels,
                            python=aabench.venv_python(VENV),
                            epsilon=BREAKING_EPS, batch_size=4, seed=0,
                            cpus=(None, cpu))
  theirs = results["reference"]
  assert theirs["versions"]["pyautoattack"] == "0.2.0"
  assert theirs["versions"]["torch"].endswith("+cpu")
  assert set(theirs["versions"]["pyautoattack_sha256"]) >= {
      "autoattack.py", "autopgd_base.py", "fab_tf.py", "square.py",
      "utils_tf2.py"}
  assert theirs["threads"] == {"tensorflow_intra_op": 1,
                               "tensorflow_inter_op": 1, "cpus": [cpu],
                               "torch_intra_op": 1, "torch_inter_op": 1}
  # Its clean pass through the adapter sees what the model predicts.
  assert theirs["clean_accuracy"] == results["project"]["clean_accuracy"]
  assert results["verdicts"]["clean_differing"] == 0
  # Both attacked the 4 correct images with APGD-CE (the reference in one
  # call of its batch of 4), and in the end broke them all. The reference's
  # APGD-CE broke all 4, so its later components never ran.
  assert results["seconds"]["apgd_ce"]["images"] == {"project": 4,
                                                      "reference": 4}
  assert theirs["calls"] == {"apgd-ce": 1, "apgd-t": 0, "fab-t": 0,
                             "square": 0}
  assert results["verdicts"]["differing"] == 0
  assert results["project"]["robust_accuracy"] == 0.0
  assert theirs["robust_accuracy"] == 0.0
  total = results["seconds"]["total"]
  assert total["reference"] > results["seconds"]["apgd_ce"]["reference"] > 0
  assert total["ratio"] == pytest.approx(total["reference"]
                                         / total["project"])
  json.dumps(results)
  assert "APGD-CE" in aabench.format_table(results)
