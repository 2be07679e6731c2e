"""End-to-end tests of `python -m rlfat_tf.export` on a smoke-trained run."""

import contextlib
import hashlib
import io
import json
import os
import pathlib
import re
import shutil
import socket
import subprocess
import sys

from absl import flags
import numpy as np
import pytest
import tensorflow as tf

from rlfat_tf import cli
from rlfat_tf import datasets
from rlfat_tf import edge_eval
from rlfat_tf import errors
from rlfat_tf import export
from rlfat_tf import runs
from rlfat_tf import tflite

import helpers

MODEL_NAME = "cifar10_sample_rlfat_p"
EVAL_EXAMPLES = 200
EPSILON = 0.03

# Full-integer int8 must agree with the Keras model on at least this share of
# top-1 predictions. Measured with the default export (500 test images,
# PGD-20): 0.970 clean / 0.980 adversarial on the smoke model, 0.962 / 0.936
# on a WRN-10-1 trained 600 steps on the sample (36% clean accuracy). There,
# every flip is an image whose two best Keras logits differ by less than
# 0.07, little more than one int8 output step (0.05); the median gap is
# 0.18. 0.9 leaves room for sampling (200 images here) and other
# CPUs' kernels, and still catches real faults; on the 600-step model, pixels
# fed unscaled (0-255) agree on 0.13 and a calibration on constant grey
# images on 0.33.
INT8_MIN_AGREEMENT = 0.9


@pytest.fixture(scope="module")
def run_dir(smoke_run):
  """The session's smoke run, which exporting only reads."""
  return str(smoke_run)


def _parse(*argv):
  """The export flags parsed from ``argv``, in their own FlagValues."""
  flag_values = flags.FlagValues()
  export.define_flags(flag_values)
  flag_values(["export", *argv])
  return flag_values


@pytest.fixture(scope="module")
def exported(run_dir, tmp_path_factory):
  export_dir = tmp_path_factory.mktemp("exports")
  flag_values = _parse(f"--model_dir={run_dir}", f"--export_dir={export_dir}",
                       f"--eval_examples={EVAL_EXAMPLES}", "--pgd_steps=5",
                       "--representative_examples=100", "--noprogress")
  stdout = io.StringIO()
  with contextlib.redirect_stdout(stdout):
    export.main(flag_values)
  version = export_dir / MODEL_NAME / "1"
  manifest = json.loads((version / export.MANIFEST_FILE).read_text())
  return {"export_dir": export_dir, "version": version,
          "manifest": manifest, "stdout": stdout.getvalue()}


def _sha256(path):
  return hashlib.sha256(pathlib.Path(path).read_bytes()).hexdigest()


def test_cli_writes_the_serving_layout(exported):
  version = exported["version"]
  assert sorted(os.listdir(version.parent)) == ["1"]
  assert (version / "saved_model.pb").is_file()
  assert (version / "variables" / "variables.index").is_file()
  assert (version / "assets" / "class_names.txt").read_text().splitlines() == (
      list(datasets.get("cifar10_sample").class_names))
  assert sorted(os.listdir(version / export.EDGE_DIR)) == sorted(
      [export.EVAL_SET_FILE] + [f"{v}.tflite" for v in tflite.VARIANTS])
  out = exported["stdout"]
  assert f"exported {version}" in out
  for variant in tflite.VARIANTS:
    assert f"  {variant} " in out


def test_manifest_records_parity_of_every_artifact(exported, run_dir):
  manifest, version = exported["manifest"], exported["version"]
  assert manifest["model_name"] == MODEL_NAME
  assert manifest["source"]["checkpoint"].endswith(
      os.path.join("checkpoints", "ckpt-6"))
  assert manifest["source"]["model_dir"] == os.path.abspath(run_dir)
  assert manifest["saved_model_max_abs_logit_diff"] < 1e-4
  assert manifest["representative_examples"] == 100
  assert set(manifest["tflite"]) == set(tflite.VARIANTS)
  for variant, entry in manifest["tflite"].items():
    path = version / entry["file"]
    assert entry["bytes"] == path.stat().st_size
    assert entry["sha256"] == _sha256(path)
    assert entry["evaluation"]["examples"] == EVAL_EXAMPLES, variant
  float32 = manifest["tflite"]["float32"]["evaluation"]
  assert float32["max_abs_logit_diff"] < 1e-4
  assert float32["clean_agreement"] == float32["adv_agreement"] == 1.0
  int8 = manifest["tflite"]["int8"]["evaluation"]
  assert int8["input_type"] == "int8"
  assert int8["clean_agreement"] >= INT8_MIN_AGREEMENT
  assert int8["adv_agreement"] >= INT8_MIN_AGREEMENT


def test_eval_set_holds_the_test_images_and_keras_logits(exported, run_dir):
  eval_set = edge_eval.load_eval_set(
      str(exported["version"] / export.EDGE_DIR / export.EVAL_SET_FILE))
  images, labels = datasets.load_split("cifar10_sample", "test")
  np.testing.assert_array_equal(eval_set["clean_images"],
                                images[:EVAL_EXAMPLES])
  np.testing.assert_array_equal(eval_set["labels"], labels[:EVAL_EXAMPLES])
  clean = eval_set["clean_images"].astype(np.float32) / 255
  adv = eval_set["adv_images"]
  assert adv.dtype == np.float32
  assert np.abs(adv - clean).max() <= EPSILON + 1e-6
  assert adv.min() >= 0 and adv.max() <= 1
  assert np.abs(adv - clean).max() > EPSILON / 2
  assert (eval_set["epsilon"], eval_set["pgd_steps"]) == (
      pytest.approx(EPSILON), 5)
  model, _, _ = runs.restore_model(run_dir)
  np.testing.assert_allclose(eval_set["clean_logits"],
                             model(clean, training=False), atol=1e-5)
  np.testing.assert_allclose(eval_set["adv_logits"],
                             model(adv, training=False), atol=1e-5)
  # The attack works: the Keras model is less accurate on its own
  # adversarial images.
  assert (np.mean(eval_set["adv_logits"].argmax(-1) == eval_set["labels"]) <
          np.mean(eval_set["clean_logits"].argmax(-1) == eval_set["labels"]))


def test_exported_signature_equals_the_eval_set_logits(exported):
  eval_set = edge_eval.load_eval_set(
      str(exported["version"] / export.EDGE_DIR / export.EVAL_SET_FILE))
  serve = tf.saved_model.load(str(exported["version"])).signatures[
      "serving_default"]
  out = serve(images=tf.constant(
      eval_set["clean_images"].astype(np.float32) / 255))
  np.testing.assert_allclose(out["logits"], eval_set["clean_logits"],
                             atol=1e-5)


def test_saved_model_cli_runs_the_version_folder_with_extra_files(
    exported, tmp_path):
  # The TF1-style loader that saved_model_cli shares with TF Serving reads the
  # version folder with edge/ and export.json in it.
  eval_set = edge_eval.load_eval_set(
      str(exported["version"] / export.EDGE_DIR / export.EVAL_SET_FILE))
  np.save(tmp_path / "images.npy",
          eval_set["clean_images"][:20].astype(np.float32) / 255)
  result = helpers.run_module(
      "tensorflow.python.tools.saved_model_cli", "run", "--dir",
      str(exported["version"]), "--tag_set", "serve", "--signature_def",
      "serving_default", "--inputs", f"images={tmp_path / 'images.npy'}",
      "--outdir", str(tmp_path / "out"))
  assert result.returncode == 0, result.stderr[-2000:]
  np.testing.assert_allclose(np.load(tmp_path / "out" / "logits.npy"),
                             eval_set["clean_logits"][:20], atol=1e-5)


def test_edge_eval_reproduces_the_manifest(exported):
  version = exported["version"]
  entry = exported["manifest"]["tflite"]["int8"]
  report = edge_eval.evaluate(
      edge_eval.Classifier(str(version / entry["file"])),
      edge_eval.load_eval_set(
          str(version / export.EDGE_DIR / export.EVAL_SET_FILE)),
      latency_runs=0)
  for key in ("clean_accuracy", "adv_accuracy", "clean_agreement",
              "adv_agreement", "max_abs_logit_diff"):
    assert report[key] == pytest.approx(entry["evaluation"][key]), key


def test_next_export_takes_the_next_version_and_keeps_the_last(exported,
                                                               run_dir):
  first = exported["version"]
  before = _sha256(first / "saved_model.pb")
  path, manifest = export.export(
      run_dir, str(exported["export_dir"]), which="best",
      tflite_variants=(), eval_examples=10, pgd_steps=1, progress=False)
  assert path == str(first.parent / "2")
  assert manifest["source"]["which"] == "best"
  assert manifest["tflite"] == {}
  assert not os.path.exists(os.path.join(path, export.EDGE_DIR, "int8.tflite"))
  assert _sha256(first / "saved_model.pb") == before
  assert sorted(os.listdir(first.parent)) == ["1", "2"]


def test_failed_export_leaves_nothing(run_dir, tmp_path, monkeypatch):

  def fail(*unused_args):
    raise RuntimeError("conversion failed")

  monkeypatch.setattr(export.tflite, "convert", fail)
  with pytest.raises(RuntimeError, match="conversion failed"):
    export.export(run_dir, str(tmp_path), tflite_variants=("float32",),
                  eval_examples=10, pgd_steps=1, progress=False)
  assert os.listdir(tmp_path / MODEL_NAME) == []


def test_next_version_counts_numeric_folders_only(tmp_path):
  root = tmp_path / "model"
  assert export.next_version(str(root)) == 1
  for name in ("1", "3", "10", "x", ".export-abc"):
    (root / name).mkdir(parents=True)
  assert export.next_version(str(root)) == 11
  # A file with a version's name blocks that number too.
  (root / "11").write_text("a file, not a version")
  assert export.next_version(str(root)) == 12
  temp = root / ".export-new"
  temp.mkdir()
  (temp / "saved_model.pb").write_text("")
  assert export.publish(str(temp), str(root)) == (12, str(root / "12"))
  assert (root / "12" / "saved_model.pb").is_file()
  assert not temp.exists()


def test_bad_arguments_are_user_errors(run_dir, tmp_path):
  with pytest.raises(errors.UserError, match="exceeds the 1000 images"):
    export.export(run_dir, str(tmp_path), eval_examples=5000)
  with pytest.raises(errors.UserError, match="not a folder name"):
    export.export(run_dir, str(tmp_path), model_name="a/b")
  (tmp_path / "file").write_text("")
  with pytest.raises(errors.UserError, match="is a file"):
    export.export(run_dir, str(tmp_path / "file"))
  with pytest.raises(errors.UserError, match="holds no training run"):
    export.export(str(tmp_path), str(tmp_path))
  assert sorted(os.listdir(tmp_path)) == ["file"]


def test_cli_error_is_one_line_and_exit_2(tmp_path):
  result = helpers.run_module("rlfat_tf.export", f"--model_dir={tmp_path}",
                              f"--export_dir={tmp_path / 'out'}")
  assert result.returncode == 2
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith("error: ") and "holds no training run" in last
  assert not (tmp_path / "out").exists()


def test_main_prints_user_errors_as_one_line(tmp_path, capsys):
  flag_values = _parse(f"--model_dir={tmp_path}",
                       f"--export_dir={tmp_path / 'out'}")
  with pytest.raises(SystemExit) as e:
    cli.call(export.main, flag_values)
  assert e.value.code == 2
  assert capsys.readouterr().err.startswith(f"error: {tmp_path} holds no "
                                            f"training run")


@pytest.mark.parametrize("argv, message", [
    (["--tflite=float32,int4"], "--tflite must list distinct variants"),
    (["--tflite=int8,int8"], "--tflite must list distinct variants"),
    (["--tflite=none,int8"], "--tflite must list distinct variants"),
    (["--epsilon=0"], "--epsilon must be in (0, 1]"),
    (["--step_size=2"], "--step_size must be in (0, 1]"),
    (["--eval_examples=0"], "--eval_examples"),
])
def test_flag_validators(argv, message):
  with pytest.raises(flags.IllegalFlagValueError) as e:
    _parse("--model_dir=a", "--export_dir=b", *argv)
  assert message in str(e.value)


def test_required_flags():
  flag_values = flags.FlagValues()
  export.define_flags(flag_values)
  with pytest.raises(flags.IllegalFlagValueError, match="export_dir"):
    flag_values(["export", "--model_dir=a"])


def _temp_export(root, name, owner=None):
  path = root / name
  path.mkdir(parents=True)
  (path / "saved_model.pb").write_text("")
  if owner is not None:
    (path / export.OWNER_FILE).write_text(owner)
  return path


def test_stale_exports_are_removed_and_running_ones_kept(tmp_path):
  root = tmp_path / "model"
  host = socket.gethostname()
  dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                        capture_output=True, text=True, check=True)
  dead_pid = int(dead.stdout)
  _temp_export(root, ".export-dead", f"{host} {dead_pid}\n")
  _temp_export(root, ".export-no-owner")
  _temp_export(root, ".export-running", f"{host} {os.getpid()}\n")
  _temp_export(root, ".export-elsewhere", f"another-host {dead_pid}\n")
  (root / "1").mkdir()
  assert export.remove_stale_exports(str(root)) == [".export-dead",
                                                    ".export-no-owner"]
  assert sorted(os.listdir(root)) == [".export-elsewhere", ".export-running",
                                      "1"]


def test_published_version_holds_no_owner_file(exported):
  assert not (exported["version"] / export.OWNER_FILE).exists()


def test_unwritable_export_dir_fails_before_the_attack(run_dir, tmp_path,
                                                      monkeypatch):
  blocker = tmp_path / "a_file"
  blocker.write_text("")

  def attack(*unused_args):
    raise AssertionError("the attack ran before the output was checked")

  monkeypatch.setattr(export, "adversarial_set", attack)
  with pytest.raises(errors.UserError, match="cannot write to .*pass an "
                     "--export_dir you can write to"):
    export.export(run_dir, str(blocker / "exports"), tflite_variants=(),
                  eval_examples=10, pgd_steps=1, progress=False)


def test_export_flag_sets_the_decode_limit(exported):
  loaded = tf.saved_model.load(str(exported["version"]))
  header = (b"\x89PNG\r\n\x1a\n" + (13).to_bytes(4, "big") + b"IHDR" +
            (5000).to_bytes(4, "big") + (5000).to_bytes(4, "big") +
            bytes([8, 2, 0, 0, 0, 0, 0, 0, 0]))
  with pytest.raises(tf.errors.InvalidArgumentError, match="more than"):
    loaded.signatures["serving_bytes"](image_bytes=tf.constant([header]))


def test_edge_eval_verifies_the_recorded_sha256(exported, tmp_path, capsys):
  version = tmp_path / "copy" / "1"
  shutil.copytree(exported["version"], version)
  model = version / export.EDGE_DIR / "float32.tflite"
  data = version / export.EDGE_DIR / export.EVAL_SET_FILE
  args = [f"--tflite={model}", f"--data={data}", "--latency_runs=0"]
  edge_eval.main(args)
  assert re.search(r"\nsha256 +model, eval_set match export.json",
                   capsys.readouterr().out)
  # One flipped bit in the middle of the weights: LiteRT still loads it.
  content = bytearray(model.read_bytes())
  content[len(content) // 2] ^= 0x01
  model.write_bytes(bytes(content))
  with pytest.raises(errors.UserError,
                     match="float32.tflite does not match the sha256"):
    edge_eval.main(args)


@pytest.fixture(scope="module")
def pixel_model(run_dir, tmp_path_factory):
  """The smoke model behind a layer that takes [0, 255] pixels, as .keras."""
  import keras  # pylint: disable=import-outside-toplevel
  model, _, _ = runs.restore_model(run_dir)
  inputs = keras.Input(model.input_shape[1:])
  pixels = keras.Model(inputs, model(keras.layers.Rescaling(1 / 255)(inputs)))
  path = tmp_path_factory.mktemp("pixels") / "pixel_net.keras"
  pixels.save(str(path))
  return {"path": path, "model": model}


def test_model_flag_exports_a_keras_file_with_its_input_scale(
    pixel_model, tmp_path):
  export_dir = tmp_path / "exports"
  flag_values = _parse(f"--model={pixel_model['path']}",
                       "--dataset=cifar10_sample", "--input_scale=255",
                       f"--epsilon={EPSILON}", f"--export_dir={export_dir}",
                       "--tflite=float32", "--eval_examples=20",
                       "--pgd_steps=2", "--noprogress")
  with contextlib.redirect_stdout(io.StringIO()):
    export.main(flag_values)
  version = export_dir / "pixel_net" / "1"
  manifest = json.loads((version / export.MANIFEST_FILE).read_text())
  assert manifest["input_scale"] == 255
  assert manifest["source"]["model"] == str(pixel_model["path"])
  assert manifest["eval_set"]["step_size"] == pytest.approx(EPSILON / 4)
  # The export takes [0, 1] images and scales them inside: its logits are
  # the logits of the [0, 1] model the pixel model wraps.
  images, _ = datasets.load_split("cifar10_sample", "test")
  images = images[:8].astype(np.float32) / 255
  serve = tf.saved_model.load(str(version)).signatures["serving_default"]
  np.testing.assert_allclose(
      serve(images=tf.constant(images))["logits"],
      pixel_model["model"](images, training=False), atol=1e-4)
  edge = manifest["tflite"]["float32"]["evaluation"]
  assert edge["clean_agreement"] == 1.0 and edge["max_abs_logit_diff"] < 1e-3


def test_export_model_takes_a_signature_and_refuses_a_function_of_variables(
    pixel_model, tmp_path):
  model = pixel_model["model"]
  signature = tf.function(
      lambda images: {"logits": model(images, training=False)},
      input_signature=[tf.TensorSpec([None, 32, 32, 3], tf.float32)]
  ).get_concrete_function()
  path, manifest = export.export_model(
      signature, str(tmp_path), dataset="cifar10_sample", model_name="sig",
      epsilon=EPSILON, tflite_variants=(), eval_examples=8, pgd_steps=1,
      progress=False)
  assert path == str(tmp_path / "sig" / "1")
  assert manifest["source"] == {"dataset": "cifar10_sample"}
  assert manifest["saved_model_max_abs_logit_diff"] < 1e-5
  with pytest.raises(errors.UserError, match="cannot reach: pass the "
                     "keras.Model"):
    export.export_model(
        lambda images: model(images, training=False), str(tmp_path),
        dataset="cifar10_sample", model_name="fn", epsilon=EPSILON,
        tflite_variants=(), eval_examples=8, pgd_steps=1, progress=False)
  assert sorted(os.listdir(tmp_path)) == ["fn", "sig"]
  assert not os.listdir(tmp_path / "fn")


@pytest.mark.parametrize("argv, message", [
    (["--which=best", "--epsilon=0.03"], "--which=best picks a run's "
     "checkpoint"),
    ([], "has no run whose radius the adversarial set could use: pass "
     "--epsilon"),
    (["--epsilon=0.03"], "needs the dataset its images come from"),
    (["--epsilon=0.03", "--dataset=cifar100"], "cifar100 has 100 classes"),
])
def test_model_flag_errors(pixel_model, tmp_path, argv, message):
  flag_values = _parse(f"--model={pixel_model['path']}",
                       f"--export_dir={tmp_path}", *argv)
  with pytest.raises(errors.UserError, match=re.escape(message)):
    export.main(flag_values)
  assert not os.listdir(tmp_path)


@pytest.mark.parametrize("argv, message", [
    (["--dataset=cifar10"], "--dataset=cifar10 applies to --model"),
    (["--signature=x"], "--signature=x applies to --model"),
    (["--input_scale=255"], "--input_scale=255 applies to --model"),
    (["--image_size=16"], "--image_size=16 applies to --model; a run's "
     "image_size comes from its record"),
])
def test_run_refuses_model_flags(run_dir, tmp_path, argv, message):
  flag_values = _parse(f"--model_dir={run_dir}", f"--export_dir={tmp_path}",
                       *argv)
  with pytest.raises(errors.UserError, match=re.escape(message)):
    export.main(flag_values)
  assert not os.listdir(tmp_path)


def test_model_and_model_dir_are_exclusive(run_dir, pixel_model):
  with pytest.raises(flags.IllegalFlagValueError, match="not both"):
    _parse(f"--model_dir={run_dir}", f"--model={pixel_model['path']}",
           "--export_dir=x")
  with pytest.raises(flags.IllegalFlagValueError, match="either"):
    _parse("--export_dir=x")
