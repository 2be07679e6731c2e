"""Tests of the APGD-CE comparison with ART (its bookkeeping, not its speed).

The ART side runs only where scripts/install_art.sh has made its environment
(``evalbench.DEFAULT_ART_PYTHON``, or the Python named by RLFAT_ART_PYTHON);
elsewhere those tests are skipped with the reason.
"""

import dataclasses
import importlib.util
import json
import os
import sys

from absl import flags
import keras
import numpy as np
import pytest
import tensorflow as tf

from rlfat_tf import benchmark
from rlfat_tf import errors
from rlfat_tf import evalbench
from rlfat_tf import evalbench_art
from rlfat_tf import models
from rlfat_tf import robustness
from rlfat_tf import runs
from rlfat_tf import serving
from rlfat_tf import train

from helpers import SMOKE

EPS = 0.03
STEPS = 5
ART_PYTHON = os.environ.get("RLFAT_ART_PYTHON", evalbench.DEFAULT_ART_PYTHON)
needs_art = pytest.mark.skipif(
    not os.path.isfile(ART_PYTHON),
    reason=f"no ART environment at {ART_PYTHON}: run scripts/install_art.sh "
           f"(or set RLFAT_ART_PYTHON) to test the ART side")


@pytest.fixture(scope="module")
def model():
  keras.utils.set_random_seed(0)
  return models.wide_resnet(10, 1, 4, (8, 8, 3))


@pytest.fixture(scope="module")
def batch(model):
  """12 random images; the first 7 labelled as the model predicts them."""
  rng = np.random.default_rng(0)
  images = rng.uniform(size=(12, 8, 8, 3)).astype(np.float32)
  predicted = model(images, training=False).numpy().argmax(-1)
  labels = ((predicted + 1) % 4).astype(np.int32)
  labels[:7] = predicted[:7]
  return images, labels


@pytest.fixture(scope="module")
def saved_model(model, tmp_path_factory):
  path = str(tmp_path_factory.mktemp("export") / "saved_model")
  serving.save(model, ["a", "b", "c", "d"], path)
  return path


def test_project_side_is_the_evaluations_apgd_ce(model, batch):
  images, labels = batch
  timing = evalbench.project_apgd(model, images, labels, epsilon=EPS,
                                  steps=STEPS, batch_size=len(images),
                                  warmup_examples=3, seed=2)
  assert set(timing) == {"seconds", "warmup_seconds", "clean_correct",
                         "robust"}
  assert timing["seconds"] > 0 and timing["warmup_seconds"] > 0
  assert timing["clean_correct"].tolist() == [True] * 7 + [False] * 5
  # The evaluation's own APGD-CE, with the same seed, gives the same
  # verdicts; the misclassified 5 are never robust.
  config = robustness.EvalConfig(
      attacks=("apgd_ce",), epsilon=EPS, settings={"apgd_steps": STEPS},
      checks=False, batch_size=5, seed=2)
  evaluated = robustness.evaluate(model, images, labels, config, verbose=0)
  assert evaluated["attacks"]["apgd_ce"]["steps"] == STEPS
  assert (timing["robust"].tolist()
          == evaluated["per_example"]["apgd_ce"].tolist())
  assert not timing["robust"][7:].any()


def test_project_side_runs_in_batches_of_any_size(model, batch):
  images, labels = batch
  timing = evalbench.project_apgd(model, images, labels, epsilon=EPS,
                                  steps=STEPS, batch_size=3,
                                  warmup_examples=1)
  assert timing["clean_correct"].sum() == 7
  assert not np.any(timing["robust"] & ~timing["clean_correct"])


def test_art_wrapper_gives_the_logits_and_refuses_training_mode(
    model, batch, saved_model):
  images, _ = batch
  logits = evalbench_art.InferenceLogits(saved_model)
  assert logits.num_classes == 4 and logits.image_shape == (8, 8, 3)
  # ART probes with float64 arrays.
  np.testing.assert_allclose(logits(images.astype(np.float64)).numpy(),
                             model(images, training=False).numpy(),
                             atol=1e-5)
  with pytest.raises(ValueError, match="training mode"):
    logits(images, training=True)


def test_missing_art_python_names_the_install_script(batch, saved_model,
                                                     tmp_path):
  images, labels = batch
  with pytest.raises(errors.UserError, match="scripts/install_art.sh"):
    evalbench.art_apgd(saved_model, images, labels, epsilon=EPS, steps=1,
                       batch_size=4, warmup_examples=1,
                       art_python=str(tmp_path / "python"))


def test_a_python_without_art_names_the_install_script(batch, saved_model):
  if importlib.util.find_spec("art") is not None:
    pytest.skip("this Python has a package named art")
  images, labels = batch
  with pytest.raises(errors.UserError, match="cannot run ART.*install_art"):
    evalbench.art_apgd(saved_model, images, labels, epsilon=EPS, steps=1,
                       batch_size=4, warmup_examples=1,
                       art_python=sys.executable)


@needs_art
def test_compare_reports_both_sides_on_the_same_points(model, batch,
                                                       saved_model):
  images, labels = batch
  results = evalbench.compare(model, saved_model, images, labels,
                              epsilon=EPS, steps=STEPS, batch_size=5,
                              warmup_examples=2, art_python=ART_PYTHON)
  ours, art = results["project"], results["art"]
  assert art["version"] == "1.20.1"
  for side in (ours, art):
    assert side["attacked_images"] == 7
    assert side["clean_accuracy"] == pytest.approx(7 / 12)
    assert side["seconds"] > 0 and side["warmup_seconds"] > 0
    assert side["seconds_per_image"] == pytest.approx(side["seconds"] / 12)
    assert side["seconds_per_attacked_image"] == pytest.approx(
        side["seconds"] / 7)
    assert side["robust_accuracy"] <= 7 / 12
  assert results["clean_agreement"] == 1.0
  assert results["speed_ratio"] == pytest.approx(art["seconds"]
                                                 / ours["seconds"])
  assert results["target"]["met"] == (results["speed_ratio"] >= 2.0)
  json.dumps(results)
  table = evalbench.format_table(results)
  assert "ART 1.20.1" in table and "speed ratio" in table


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  """A WRN-10-1 'run' on the embedded sample: flags and one checkpoint."""
  folder = tmp_path_factory.mktemp("run")
  _, record = train.values_from_argv(
      ["train", f"--flagfile={SMOKE}", f"--model_dir={folder}"])
  record = dataclasses.replace(record, epsilon=EPS)
  runs.save_record(str(folder), record)
  keras.utils.set_random_seed(0)
  tf.train.Checkpoint(model=runs.build_model(record)).save(
      str(folder / "checkpoints" / "ckpt"))
  return str(folder)


def test_run_refuses_more_examples_than_the_test_split(run_dir):
  with pytest.raises(errors.UserError, match="ask for at most 1000"):
    evalbench.run(run_dir, num_examples=1001)


@needs_art
def test_run_names_the_checkpoint_step_and_the_machine(run_dir):
  results = evalbench.run(run_dir, num_examples=6, steps=2, batch_size=6,
                          warmup_examples=1, art_python=ART_PYTHON)
  assert results["run"]["step"] == 1
  assert results["run"]["architecture"] == "WRN-10-1"
  assert results["settings"]["epsilon"] == EPS
  assert results["machine"]["cpus"] == os.cpu_count()
  assert "WRN-10-1 cifar10_sample, step 1" in evalbench.format_table(results)


@pytest.mark.parametrize("argv, needle", [
    (["--mode=evaluation"], "--mode=evaluation needs --model_dir"),
    (["--mode=evaluation", "--model_dir=r", "--epsilon=8"],
     "--epsilon must be in"),
])
def test_benchmark_evaluation_flags_name_the_fix(argv, needle):
  parsed = flags.FlagValues()
  benchmark.define_flags(parsed)
  with pytest.raises(flags.IllegalFlagValueError, match=needle):
    parsed(["benchmark", *argv])
