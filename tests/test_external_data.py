"""The commands on datasets from outside the package, end to end: a
tensorflow-datasets dataset by name (tfds.testing.mock_data of tfds:mnist,
grayscale 28 x 28) and a folder of PNG images (resized, and streamed over a
memory budget) are each trained, evaluated and exported, and the export
evaluates to the run's per-image verdicts."""

import io
import json
import os

import numpy as np
from PIL import Image
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from rlfat_tf import edge_eval
from rlfat_tf import evaluate
from rlfat_tf import export
from rlfat_tf import runs
from rlfat_tf import serving
from rlfat_tf import train

import helpers

TINY = ("--depth=10", "--width=1", "--attack_steps=1", "--batch_size=8",
        "--train_steps=2", "--steps_per_loop=2", "--checkpoint_every=2",
        "--noprogress")
EVAL = ("--attacks=pgd", "--pgd_steps=2", "--num_examples=8",
        "--batch_size=8", "--nochecks", "--brightness=", "--gamma=",
        "--salience_images=0", "--noprogress")
EXPORT = {"tflite_variants": ("float32",), "eval_examples": 8,
          "pgd_steps": 1, "progress": False}


def _write_folder(root):
  """Two classes of 12 x 12 RGB PNGs: 12 train and 4 test images each."""
  rng = np.random.RandomState(0)
  for split, count in (("train", 12), ("test", 4)):
    for label, name in enumerate(("cat", "dog")):
      for i in range(count):
        # The classes differ in brightness, so a model can tell them apart.
        pixels = rng.randint(0, 128, (12, 12, 3)) + 100 * label
        path = root / split / name / f"{i:02d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels.astype(np.uint8)).save(path)


def _verdicts(path):
  with np.load(path) as npz:
    return {key: npz[key] for key in npz.files}


def _assert_same_verdicts(got, expected):
  assert sorted(got) == sorted(expected)
  for key, value in expected.items():
    np.testing.assert_array_equal(got[key], value, err_msg=key)


def _evaluate_export(version, output, *argv):
  """Evaluates an export with --model; returns (payload, verdicts)."""
  payload = evaluate.run(helpers.evaluate_values(
      f"--model={version}", f"--output={output}", *argv, *EVAL))
  return payload, _verdicts(str(output).replace(".json", "_examples.npz"))


def test_a_folder_dataset_trains_streamed_evaluates_and_exports(tmp_path):
  _write_folder(tmp_path / "pets")
  folder = ("--dataset=folder", "--data_dir=pets", "--image_size=8")
  # A relative --data_dir, and a budget so small that every split streams.
  proc = helpers.run_module("rlfat_tf.train", *folder, *TINY,
                            "--memory_budget_gib=1e-9", "--model_dir=streamed",
                            cwd=tmp_path)
  assert proc.returncode == 0, proc.stderr[-3000:]
  proc = helpers.run_module("rlfat_tf.train", *folder, *TINY,
                            "--model_dir=in_memory", cwd=tmp_path)
  assert proc.returncode == 0, proc.stderr[-3000:]
  run = str(tmp_path / "streamed")
  record = runs.load_record(run)
  assert (record.dataset, record.data_dir, record.image_size,
          record.memory_budget_gib) == ("folder", str(tmp_path / "pets"), 8,
                                        1e-9)
  # Streaming decodes the same batches as the split held in memory.
  streamed = helpers.checkpoint_values(runs.checkpoint_path(run))
  in_memory = helpers.checkpoint_values(
      runs.checkpoint_path(str(tmp_path / "in_memory")))
  assert sorted(streamed) == sorted(in_memory)
  for key, value in in_memory.items():
    np.testing.assert_array_equal(streamed[key], value, err_msg=key)

  payload = evaluate.run(helpers.evaluate_values(
      f"--model_dir={run}", f"--output={tmp_path / 'run.json'}", *EVAL))
  assert payload["run"]["dataset"] == "folder"
  expected = _verdicts(tmp_path / "run_examples.npz")
  assert all(len(v) == 8 for v in expected.values())

  # int8 calibrates on training images, picked from the streamed split.
  version, manifest = export.export(
      run, str(tmp_path / "exports"),
      **dict(EXPORT, tflite_variants=("int8",), representative_examples=8))
  assert manifest["tflite"]["int8"]["evaluation"]["examples"] == 8
  assert manifest["signatures"][serving.IMAGES_SIGNATURE]["inputs"][
      serving.IMAGES_INPUT]["shape"] == [-1, 8, 8, 3]
  payload, got = _evaluate_export(version, tmp_path / "export.json",
                                  *folder[:1],
                                  f"--data_dir={tmp_path / 'pets'}",
                                  "--image_size=8")
  _assert_same_verdicts(got, expected)
  assert payload["run"]["dataset"] == "folder"


def test_a_tfds_dataset_trains_evaluates_and_exports_grayscale(tmp_path):
  data_dir = tmp_path / "tfds"
  helpers.mock_tfds_metadata(data_dir, "mnist", count=16)
  with tfds.testing.mock_data(num_examples=16, data_dir=str(data_dir)):
    model_dir, record = train.values_from_argv(
        ["train", "--dataset=tfds:mnist", f"--model_dir={tmp_path / 'run'}",
         *TINY])
    train.run(model_dir, record)
    record = runs.load_record(model_dir)
    assert (record.dataset, record.image_size) == ("tfds:mnist", None)
    payload = evaluate.run(helpers.evaluate_values(
        f"--model_dir={model_dir}", f"--output={tmp_path / 'run.json'}",
        *EVAL))
    assert payload["run"]["dataset"] == "tfds:mnist"
    expected = _verdicts(tmp_path / "run_examples.npz")
    version, manifest = export.export(model_dir, str(tmp_path / "exports"),
                                      **EXPORT)
    _, got = _evaluate_export(version, tmp_path / "export.json",
                              "--dataset=tfds:mnist")
  _assert_same_verdicts(got, expected)
  assert os.path.basename(os.path.dirname(version)) == "tfds_mnist_rlfat_p"
  assert manifest["signatures"][serving.IMAGES_SIGNATURE]["inputs"][
      serving.IMAGES_INPUT]["shape"] == [-1, 28, 28, 1]

  eval_set = edge_eval.load_eval_set(
      os.path.join(version, export.EDGE_DIR, export.EVAL_SET_FILE))
  clean = eval_set["clean_images"]
  assert clean.shape == (8, 28, 28, 1)
  entry = manifest["tflite"]["float32"]
  report = edge_eval.evaluate(
      edge_eval.Classifier(os.path.join(version, entry["file"])), eval_set,
      latency_runs=0)
  assert report["clean_agreement"] == 1.0

  # Grayscale PNGs decode exactly; RGB ones become their luma.
  loaded = tf.saved_model.load(version)
  gray = []
  for image in clean[:2]:
    buffer = io.BytesIO()
    Image.fromarray(image[..., 0], "L").save(buffer, format="PNG")
    gray.append(buffer.getvalue())
  rgb = tf.io.encode_png(np.repeat(clean[0], 3, axis=-1)).numpy()
  by_bytes = loaded.signatures[serving.BYTES_SIGNATURE](
      image_bytes=tf.constant(gray + [rgb]))["logits"].numpy()
  np.testing.assert_allclose(by_bytes[:2], eval_set["clean_logits"][:2],
                             atol=1e-5)
  luma = tf.image.rgb_to_grayscale(
      tf.cast(np.repeat(clean[:1], 3, axis=-1), tf.float32) / 255.0)
  by_images = loaded.signatures[serving.IMAGES_SIGNATURE](
      images=luma)["logits"].numpy()
  np.testing.assert_allclose(by_bytes[2:], by_images, atol=1e-5)
  with open(os.path.join(version, export.MANIFEST_FILE),
            encoding="utf-8") as f:
    assert json.load(f)["source"]["dataset"] == "tfds:mnist"


@pytest.mark.parametrize("argv, message", [
    (("--dataset=imagenet",), "error: flag --dataset=imagenet: unknown "
     "dataset 'imagenet'; use one of: stl10"),
    (("--dataset=folder",), "error: --dataset=folder needs --data_dir=PATH"),
    (("--dataset=folder", "--data_dir=missing"), "missing/train does not "
     "exist or is not a folder: point --data_dir at the folder holding"),
    (("--image_size=0",), "error: flag --image_size=0: 0 is not a positive "
     "integer"),
])
def test_bad_dataset_flags_are_one_line_and_exit_2(tmp_path, argv, message):
  proc = helpers.run_module("rlfat_tf.train", *argv, *TINY,
                            f"--model_dir={tmp_path / 'run'}", cwd=tmp_path,
                            timeout=120)
  errors = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
  assert proc.returncode == 2 and len(errors) == 1, proc.stderr[-2000:]
  assert message in errors[0], errors[0]
  assert not (tmp_path / "run").exists()
