"""Tests of the TensorFlow-free edge evaluation."""

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

from rlfat_tf import cli
from rlfat_tf import edge_eval
from rlfat_tf import models
from rlfat_tf import tflite

from helpers import ROOT

SIZE, CLASSES, EXAMPLES = 16, 10, 40


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
  """A tiny model's float32 and int8 TFLite files and an evaluation set.

  Labels are the Keras model's top-1 class for the first half of the images
  and the next class for the second half, so the Keras clean accuracy is
  exactly 0.5.
  """
  out = tmp_path_factory.mktemp("edge")
  keras.utils.set_random_seed(0)
  model = models.wide_resnet(10, 1, CLASSES, (SIZE, SIZE, 3))
  rng = np.random.default_rng(0)
  clean = rng.integers(0, 256, (EXAMPLES, SIZE, SIZE, 3), np.uint8)
  noise = rng.uniform(-0.03, 0.03, clean.shape).astype(np.float32)
  adv = np.clip(clean / np.float32(255) + noise, 0, 1).astype(np.float32)
  clean_logits = model(clean.astype(np.float32) / 255, training=False).numpy()
  adv_logits = model(adv, training=False).numpy()
  top1 = clean_logits.argmax(-1)
  labels = np.where(np.arange(EXAMPLES) < EXAMPLES // 2, top1,
                    (top1 + 1) % CLASSES).astype(np.int32)
  np.savez(out / "eval_set.npz", clean_images=clean, adv_images=adv,
           labels=labels, clean_logits=clean_logits, adv_logits=adv_logits,
           epsilon=np.float64(0.03), step_size=np.float64(0.0075),
           pgd_steps=np.int32(20))
  representative = rng.uniform(0, 1, (50, SIZE, SIZE, 3)).astype(np.float32)
  for variant in ("float32", "int8"):
    (out / f"{variant}.tflite").write_bytes(
        tflite.convert(model, variant, representative))
  return {"dir": out, "data": str(out / "eval_set.npz"),
          "float32": str(out / "float32.tflite"),
          "int8": str(out / "int8.tflite"), "labels": labels,
          "clean_logits": clean_logits, "adv_logits": adv_logits}


def test_quantize_and_dequantize_by_hand():
  scale, zero_point = 1 / 255, -128
  values = np.array([0.0, 0.2, 1.0, 2.0, -1.0], np.float32)
  # 0.2 * 255 = 51 - 128 = -77; 2.0 and -1.0 saturate.
  np.testing.assert_array_equal(
      edge_eval.quantize(values, scale, zero_point, np.int8),
      [-128, -77, 127, 127, -128])
  np.testing.assert_allclose(
      edge_eval.dequantize(np.array([-128, 0, 127], np.int8), scale,
                           zero_point), [0.0, 128 / 255, 1.0], rtol=1e-6)
  np.testing.assert_array_equal(
      edge_eval.quantize(values, 0.5, 3, np.uint8), [3, 3, 5, 7, 1])


def test_float32_report_matches_hand_computation(artifacts):
  classifier = edge_eval.Classifier(artifacts["float32"])
  report = edge_eval.evaluate(classifier,
                              edge_eval.load_eval_set(artifacts["data"]),
                              batch_size=16, latency_runs=5)
  labels = artifacts["labels"]
  assert report["examples"] == EXAMPLES
  assert report["model_bytes"] == os.path.getsize(artifacts["float32"])
  assert report["input_type"] == "float32"
  assert report["keras_clean_accuracy"] == report["clean_accuracy"] == 0.5
  keras_adv = np.mean(artifacts["adv_logits"].argmax(-1) == labels)
  assert report["keras_adv_accuracy"] == pytest.approx(keras_adv)
  assert report["adv_accuracy"] == pytest.approx(keras_adv)
  assert report["clean_agreement"] == report["adv_agreement"] == 1.0
  assert report["max_abs_logit_diff"] < 1e-4
  assert (report["epsilon"], report["pgd_steps"]) == (pytest.approx(0.03), 20)
  assert 0 < report["latency_ms_median"] <= report["latency_ms_p95"]
  assert report["latency_ms_mean"] > 0


def test_int8_logits_come_back_on_the_float_scale(artifacts):
  classifier = edge_eval.Classifier(artifacts["int8"])
  assert classifier.input_type == "int8"
  clean = edge_eval.load_eval_set(artifacts["data"])["clean_images"]
  logits = classifier.logits(clean.astype(np.float32) / 255, batch_size=7)
  expected = artifacts["clean_logits"]
  # Raw int8 outputs would be off by tens; dequantised ones are within a few
  # output steps of the float logits.
  assert np.abs(logits - expected).max() <= 0.1 * np.abs(expected).max()


def test_batch_size_does_not_change_logits(artifacts):
  classifier = edge_eval.Classifier(artifacts["float32"])
  images = np.random.default_rng(1).uniform(
      0, 1, (9, SIZE, SIZE, 3)).astype(np.float32)
  np.testing.assert_allclose(classifier.logits(images, batch_size=9),
                             classifier.logits(images, batch_size=2),
                             atol=1e-5)


def test_cli_runs_with_tensorflow_unimportable(artifacts, tmp_path):
  out_json = tmp_path / "report.json"
  script = textwrap.dedent(f"""
      import importlib.abc, runpy, sys

      class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
          if name.split(".")[0] in ("tensorflow", "keras", "tf_keras",
                                    "tensorflow_datasets", "absl"):
            raise ImportError("blocked: " + name)

      sys.meta_path.insert(0, Block())
      sys.argv = ["edge_eval", "--tflite", {artifacts['int8']!r},
                  "--data", {artifacts['data']!r}, "--latency_runs", "5",
                  "--json", {str(out_json)!r}]
      runpy.run_module("rlfat_tf.edge_eval", run_name="__main__")
      loaded = [m for m in sys.modules
                if m.split(".")[0] in ("tensorflow", "keras")]
      assert not loaded, loaded
  """)
  result = subprocess.run(
      [sys.executable, "-c", script], capture_output=True, text=True,
      cwd=tmp_path, timeout=300, check=False,
      env=dict(os.environ, PYTHONPATH=str(ROOT)))
  assert result.returncode == 0, result.stderr[-2000:]
  assert "top-1 agreement" in result.stdout
  report = json.loads(out_json.read_text())
  in_process = edge_eval.evaluate(
      edge_eval.Classifier(artifacts["int8"]),
      edge_eval.load_eval_set(artifacts["data"]), latency_runs=0)
  for key in ("clean_accuracy", "adv_accuracy", "clean_agreement",
              "adv_agreement", "max_abs_logit_diff", "model_bytes"):
    assert report[key] == pytest.approx(in_process[key]), key
  assert report["num_threads"] == 1


def _error_line(capsys, argv):
  with pytest.raises(SystemExit) as e:
    cli.call(edge_eval.main, argv)
  assert e.value.code == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("error: "), err
  return err[0]


def test_bad_paths_and_files_give_one_error_line(artifacts, tmp_path,
                                                 capsys):
  data, model = artifacts["data"], artifacts["float32"]
  assert "does not exist" in _error_line(
      capsys, ["--tflite", str(tmp_path / "none.tflite"), "--data", data])
  garbage = tmp_path / "garbage.tflite"
  garbage.write_bytes(b"not a flatbuffer")
  assert "is not a model LiteRT can load" in _error_line(
      capsys, ["--tflite", str(garbage), "--data", data])
  assert "--data=" in _error_line(
      capsys, ["--tflite", model, "--data", str(tmp_path / "none.npz")])
  np.save(tmp_path / "array.npy", np.zeros(3))
  assert "single array" in _error_line(
      capsys, ["--tflite", model, "--data", str(tmp_path / "array.npy")])
  np.savez(tmp_path / "partial.npz", labels=np.zeros(3))
  assert "lacks clean_images" in _error_line(
      capsys, ["--tflite", model, "--data", str(tmp_path / "partial.npz")])
  (tmp_path / "text.npz").write_text("hello")
  assert "not a readable .npz" in _error_line(
      capsys, ["--tflite", model, "--data", str(tmp_path / "text.npz")])
  assert "cannot write --json" in _error_line(
      capsys, ["--tflite", model, "--data", data, "--latency_runs", "0",
               "--json", str(tmp_path / "no" / "dir" / "r.json")])


def test_set_of_another_image_size_is_refused(artifacts, tmp_path, capsys):
  with np.load(artifacts["data"]) as npz:
    arrays = dict(npz)
  arrays["clean_images"] = arrays["clean_images"][:, :8, :8]
  arrays["adv_images"] = arrays["adv_images"][:, :8, :8]
  np.savez(tmp_path / "small.npz", **arrays)
  line = _error_line(capsys, ["--tflite", artifacts["float32"], "--data",
                              str(tmp_path / "small.npz")])
  assert f"takes images of shape ({SIZE}, {SIZE}, 3)" in line
  assert "(8, 8, 3)" in line


def test_json_report_is_written(artifacts, tmp_path, capsys):
  path = tmp_path / "r.json"
  edge_eval.main(["--tflite", artifacts["float32"], "--data",
                  artifacts["data"], "--latency_runs", "3", "--json",
                  str(path)])
  report = json.loads(path.read_text())
  assert report["clean_accuracy"] == 0.5
  assert report["model"] == artifacts["float32"]
  assert not (tmp_path / "r.json.tmp").exists()
  out = capsys.readouterr().out
  assert "clean accuracy        0.5000 (Keras 0.5000)" in out
