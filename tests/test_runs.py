"""Tests of the run record (rlfat_tf.runs): its file, its conversion from
flags.json, and which settings a resumed run may change."""

import dataclasses
import json
import os
import shutil

import pytest
import tensorflow as tf

from rlfat_tf import errors
from rlfat_tf import runs
from rlfat_tf import train

import helpers
from helpers import SMOKE


@pytest.fixture(scope="module")
def record():
  """The record of the smoke configuration."""
  _, resolved = train.values_from_argv(
      ["train", f"--flagfile={SMOKE}", "--model_dir=unused",
       "--lr_boundaries=4,5"])
  return resolved


def _checkpoint(model_dir):
  manager = tf.train.CheckpointManager(
      tf.train.Checkpoint(v=tf.Variable(1.0)),
      os.path.join(model_dir, "checkpoints"), max_to_keep=1)
  manager.save(checkpoint_number=3)


def _error(model_dir):
  with pytest.raises(errors.UserError) as e:
    runs.load_record(str(model_dir))
  assert "\n" not in str(e.value)
  return str(e.value)


def test_record_round_trips_through_run_json(record, tmp_path):
  runs.save_record(str(tmp_path), record)
  written = json.loads((tmp_path / runs.RECORD_FILE).read_text())
  assert written["lr_boundaries"] == [4, 5]
  assert written["schema_version"] == runs.SCHEMA_VERSION == 4
  assert (written["image_size"], written["memory_budget_gib"]) == (None, 4.0)
  assert (written["depth"], written["eta"]) == (10, 0.5)
  assert (written["model"], written["model_path"],
          written["model_weights"]) == ("wrn", None, None)
  assert "model_dir" not in written
  assert runs.load_record(str(tmp_path)) == record
  assert os.listdir(tmp_path) == [runs.RECORD_FILE]


def test_the_settings_a_resume_may_change_are_the_documented_ones():
  assert runs.RunRecord.may_change() == {
      "train_steps", "learning_rate", "lr_boundaries", "lr_decay",
      "eval_every", "monitor_examples", "checkpoint_every",
      "keep_checkpoints", "steps_per_loop", "progress", "strategy", "cpu_devices", "tpu", "sync_batch_norm",
      "jit_compile", "mixed_precision", "deterministic", "data_dir",
      "tfds_data_dir", "memory_budget_gib"}


@pytest.mark.parametrize("change, message", [
    (lambda c: c.pop("depth"), "lacks the setting 'depth'"),
    (lambda c: c.update(depth="ten"), "has depth = 'ten', not an integer"),
    (lambda c: c.update(depth=True), "has depth = True, not an integer"),
    (lambda c: c.update(flip=1), "has flip = 1, not true or false"),
    (lambda c: c.update(lr_boundaries=[4, "x"]),
     "not a list of integers"),
    (lambda c: c.update(eta="0.5"), "not a number or null"),
    (lambda c: c.update(colour="red"), "unknown setting 'colour'"),
    (lambda c: c.update(schema_version=5),
     "has schema_version 5, but this version reads 1 to 4"),
    (lambda c: c.update(schema_version="2"),
     "has schema_version '2', but this version reads 1 to 4"),
    (lambda c: c.update(image_size="32"),
     "has image_size = '32', not an integer or null"),
    (lambda c: c.update(model=None), "has model = None, not a string"),
])
def test_malformed_run_json_gives_one_line_naming_the_problem(
    record, tmp_path, change, message):
  content = record.to_json()
  change(content)
  (tmp_path / runs.RECORD_FILE).write_text(json.dumps(content))
  line = _error(tmp_path)
  assert message in line and runs.RECORD_FILE in line


def test_unreadable_run_json_is_one_line(tmp_path):
  (tmp_path / runs.RECORD_FILE).write_text('{"depth": 10,')
  assert "is not valid JSON (line 1" in _error(tmp_path)
  (tmp_path / runs.RECORD_FILE).write_text("[1, 2]")
  assert "does not hold a JSON object" in _error(tmp_path)


def test_a_folder_without_a_run_says_so(tmp_path):
  assert "holds no training run" in _error(tmp_path)


def test_a_version_1_record_reads_with_the_full_training_set_unmonitored(
    record, tmp_path):
  content = dataclasses.replace(record, train_size=5,
                                monitor_examples=3).to_json()
  for name in ("train_size", "monitor_examples", "model", "model_path",
               "model_weights", "image_size", "memory_budget_gib"):
    del content[name]
  content["schema_version"] = 1
  (tmp_path / runs.RECORD_FILE).write_text(json.dumps(content))
  assert runs.load_record(str(tmp_path)) == dataclasses.replace(
      record, train_size=None, monitor_examples=0)
  content["train_size"] = 7
  (tmp_path / runs.RECORD_FILE).write_text(json.dumps(content))
  assert runs.load_record(str(tmp_path)).train_size == 7


def test_a_version_2_record_reads_as_a_wide_resnet(record, tmp_path):
  content = record.to_json()
  for name in ("model", "model_path", "model_weights", "image_size",
               "memory_budget_gib"):
    del content[name]
  content["schema_version"] = 2
  (tmp_path / runs.RECORD_FILE).write_text(json.dumps(content))
  loaded = runs.load_record(str(tmp_path))
  assert loaded == record
  assert (loaded.model, loaded.depth, loaded.width) == ("wrn", 10, 1)
  assert runs.architecture(loaded) == "WRN-10-1"


def test_a_version_3_record_reads_at_the_images_own_size(record, tmp_path):
  content = record.to_json()
  del content["image_size"], content["memory_budget_gib"]
  content["schema_version"] = 3
  (tmp_path / runs.RECORD_FILE).write_text(json.dumps(content))
  loaded = runs.load_record(str(tmp_path))
  assert loaded == record
  assert (loaded.image_size, loaded.memory_budget_gib) == (None, 4.0)


def test_the_runs_kept_in_the_repository_still_load_and_restore():
  # Trained before the model registry, with schema 2 records.
  folder = helpers.ROOT / "models" / "c10_wrn10-2_pgdat"
  content = json.loads((folder / runs.RECORD_FILE).read_text())
  assert content["schema_version"] == 2 and "model" not in content
  model, loaded, path = runs.restore_model(str(folder))
  assert (loaded.model, runs.architecture(loaded)) == ("wrn", "WRN-10-2")
  assert path.endswith("ckpt-2000") and model.name == "wrn-10-2"


def test_architecture_names_each_model_family(record):
  assert runs.architecture(record) == "WRN-10-1"
  preact = dataclasses.replace(record, model="preact_resnet18", depth=None,
                               width=None)
  assert runs.architecture(preact) == "PreAct ResNet-18"
  keras_file = dataclasses.replace(preact, model="keras",
                                   model_path="/models/net.keras",
                                   model_weights="scratch")
  assert runs.architecture(keras_file) == "Keras model file net.keras"
  with pytest.raises(errors.UserError, match="unknown model 'vgg'"):
    runs.architecture(dataclasses.replace(record, model="vgg"))


def test_legacy_flags_json_is_converted_on_read(record, tmp_path):
  # flags.json held every flag, the run folder among them, and predates the
  # hardware flags.
  flags_json = dict(record.to_json(), model_dir="/old/place")
  for name in ("strategy", "cpu_devices", "tpu", "sync_batch_norm",
               "mixed_precision", "schema_version", "train_size",
               "monitor_examples", "model", "model_path", "model_weights",
               "image_size", "memory_budget_gib"):
    del flags_json[name]
  (tmp_path / runs.LEGACY_FLAGS_FILE).write_text(json.dumps(flags_json))
  loaded = runs.load_record(str(tmp_path))
  assert loaded == dataclasses.replace(
      record, strategy="default", cpu_devices=1, tpu=None,
      sync_batch_norm=False, mixed_precision="float32")
  del flags_json["method"]
  (tmp_path / runs.LEGACY_FLAGS_FILE).write_text(json.dumps(flags_json))
  line = _error(tmp_path)
  assert "flags.json lacks the setting 'method'" in line


def test_run_json_wins_over_a_legacy_flags_json(record, tmp_path):
  (tmp_path / runs.LEGACY_FLAGS_FILE).write_text("not json")
  runs.save_record(str(tmp_path), record)
  assert runs.load_record(str(tmp_path)) == record


def test_a_folder_without_a_checkpoint_is_not_bound_to_its_record(record,
                                                                  tmp_path):
  runs.save_record(str(tmp_path), record)
  runs.check_resume(str(tmp_path), dataclasses.replace(record, method="trades",
                                                       eta=None))


@pytest.mark.parametrize("change, message", [
    ({"method": "pgdat", "eta": None}, "--method=rlfat_p, not pgdat"),
    ({"epsilon": 0.02}, "--epsilon=0.03, not 0.02"),
    ({"batch_size": 16}, "--batch_size=32, not 16"),
    ({"val_size": 0}, "--val_size=100, not 0"),
    ({"seed": 1}, "--seed=0, not 1"),
    ({"model": "preact_resnet18", "depth": None, "width": None},
     "--model=wrn, not preact_resnet18"),
    ({"image_size": 24}, "--image_size=unset, not 24"),
])
def test_resume_refuses_a_changed_setting_by_name(record, tmp_path, change,
                                                  message):
  runs.save_record(str(tmp_path), record)
  _checkpoint(str(tmp_path))
  with pytest.raises(errors.UserError) as e:
    runs.check_resume(str(tmp_path), dataclasses.replace(record, **change))
  assert message in str(e.value) and "new --model_dir" in str(e.value)


def test_resume_accepts_every_setting_that_may_change(record, tmp_path):
  runs.save_record(str(tmp_path), record)
  _checkpoint(str(tmp_path))
  changed = dataclasses.replace(
      record, train_steps=99, learning_rate=1e-4, lr_boundaries=(50,),
      lr_decay=0.5, eval_every=7, checkpoint_every=7, keep_checkpoints=9,
      steps_per_loop=1, progress=False, strategy="mirrored", cpu_devices=2,
      sync_batch_norm=True, jit_compile=True, mixed_precision="mixed_bfloat16",
      deterministic=True, data_dir="/data", tfds_data_dir="/tfds",
      memory_budget_gib=0.5)
  runs.check_resume(str(tmp_path), changed)


def test_a_moved_folder_is_the_same_run_by_any_spelling(record, tmp_path,
                                                        monkeypatch):
  first = tmp_path / "first"
  runs.save_record(str(first), record)
  _checkpoint(str(first))
  shutil.copytree(first, tmp_path / "copy")
  shutil.move(first, tmp_path / "moved")
  monkeypatch.chdir(tmp_path)
  for spelling in ("copy", "copy/", "./moved", str(tmp_path / "moved") + "/"):
    runs.check_resume(spelling, record)
    assert runs.checkpoint_path(spelling).endswith("ckpt-3")
    with pytest.raises(errors.UserError, match="--seed=0, not 1"):
      runs.check_resume(spelling, dataclasses.replace(record, seed=1))


def test_batch_memory_is_measured_on_the_records_model(record):
  preact = dataclasses.replace(record, model="preact_resnet18", depth=None,
                               width=None)
  # PreAct ResNet-18's largest activation is the padded input of layer2's
  # first convolution, 34 x 34 x 64 floats per image, for 32 images.
  need = 34 * 34 * 64 * 4 * 32
  runs.check_batch_memory(preact, need)
  with pytest.raises(errors.UserError, match="the largest activation of "
                     "PreAct ResNet-18 alone takes"):
    runs.check_batch_memory(preact, need - 1)
