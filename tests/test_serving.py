"""Tests of the servable SavedModel: signatures, parity, input checks."""

import io
import pathlib
import re
import shutil
import subprocess
import sys
import textwrap

import keras
import numpy as np
import PIL.Image
import pytest
import tensorflow as tf

from rlfat_tf import models
from rlfat_tf import serving

from helpers import ENV

HEIGHT, WIDTH, CLASSES = 16, 16, 4
CLASS_NAMES = ("cat", "dog", "ship", "truck")


def _saved_model_cli(*args):
  # The console script and the module are the same tool; the module works
  # wherever TensorFlow is importable.
  return subprocess.run(
      [sys.executable, "-m", "tensorflow.python.tools.saved_model_cli",
       *args], capture_output=True, text=True, env=ENV, timeout=300,
      check=False)


@pytest.fixture(scope="module")
def model():
  keras.utils.set_random_seed(1)
  net = models.wide_resnet(10, 1, CLASSES, (HEIGHT, WIDTH, 3))
  # Random BatchNorm statistics make eval-mode BatchNorm matter, so a
  # SavedModel that restored only the convolutions would not pass.
  rng = np.random.default_rng(1)
  for v in net.non_trainable_variables:
    v.assign(rng.uniform(0.5, 1.5, v.shape).astype(np.float32))
  return net


@pytest.fixture(scope="module")
def images():
  return np.random.default_rng(2).uniform(
      0.0, 1.0, (6, HEIGHT, WIDTH, 3)).astype(np.float32)


@pytest.fixture(scope="module")
def export_dir(model, tmp_path_factory):
  path = str(tmp_path_factory.mktemp("serving") / "1")
  serving.save(model, CLASS_NAMES, path)
  return path


@pytest.fixture(scope="module")
def loaded(export_dir):
  return tf.saved_model.load(export_dir)


def _signature_block(show, name):
  match = re.search(rf"signature_def\['{name}'\]:(.*?)Method name is: (\S+)",
                    show, re.S)
  assert match, f"no signature {name} in saved_model_cli output"
  return match.group(1), match.group(2)


def _tensor_info(block, kind, key):
  match = re.search(
      rf"{kind}\['{key}'\] tensor_info:\s+dtype: (\S+)\s+shape: (\S+)", block)
  assert match, f"{kind} {key} missing"
  return match.group(1), match.group(2)


def test_saved_model_cli_shows_both_signatures(export_dir):
  result = _saved_model_cli("show", "--dir", export_dir, "--all")
  assert result.returncode == 0, result.stderr
  outputs = {"logits": ("DT_FLOAT", f"(-1,{CLASSES})"),
             "probabilities": ("DT_FLOAT", f"(-1,{CLASSES})"),
             "classes": ("DT_INT64", "(-1)"),
             "class_names": ("DT_STRING", "(-1)")}
  for name, key, dtype, shape in (
      ("serving_default", "images", "DT_FLOAT", f"(-1,{HEIGHT},{WIDTH},3)"),
      ("serving_bytes", "image_bytes", "DT_STRING", "(-1)")):
    block, method = _signature_block(result.stdout, name)
    assert method == "tensorflow/serving/predict"
    dtype_shape = _tensor_info(block.replace(", ", ","), "inputs", key)
    assert dtype_shape == (dtype, shape)
    for out, expected in outputs.items():
      assert _tensor_info(block.replace(", ", ","), "outputs", out) == expected


def test_saved_model_cli_run_equals_keras(export_dir, model, images,
                                          tmp_path):
  np.save(tmp_path / "images.npy", images)
  out = tmp_path / "out"
  result = _saved_model_cli(
      "run", "--dir", export_dir, "--tag_set", "serve", "--signature_def",
      "serving_default", "--inputs", f"images={tmp_path / 'images.npy'}",
      "--outdir", str(out))
  assert result.returncode == 0, result.stderr
  expected = model(images, training=False).numpy()
  np.testing.assert_allclose(np.load(out / "logits.npy"), expected,
                             atol=1e-5, rtol=0)
  np.testing.assert_array_equal(np.load(out / "classes.npy"),
                                expected.argmax(-1))
  names = np.load(out / "class_names.npy", allow_pickle=True)
  assert [n.decode() for n in names] == [CLASS_NAMES[i]
                                         for i in expected.argmax(-1)]
  probabilities = np.exp(expected - expected.max(-1, keepdims=True))
  probabilities /= probabilities.sum(-1, keepdims=True)
  np.testing.assert_allclose(np.load(out / "probabilities.npy"),
                             probabilities, atol=1e-6)


def test_saved_model_cli_run_refuses_a_wrong_size(export_dir, tmp_path):
  np.save(tmp_path / "small.npy", np.zeros((2, 8, 8, 3), np.float32))
  result = _saved_model_cli(
      "run", "--dir", export_dir, "--tag_set", "serve", "--signature_def",
      "serving_default", "--inputs", f"images={tmp_path / 'small.npy'}")
  assert result.returncode != 0
  assert "Cannot feed value of shape (2, 8, 8, 3)" in result.stderr
  assert f"(None, {HEIGHT}, {WIDTH}, 3)" in result.stderr


def test_loads_and_serves_in_a_fresh_process_without_the_package(
    export_dir, model, images, tmp_path):
  # A copy elsewhere proves the folder is self-contained (assets included).
  copy = tmp_path / "copy" / "1"
  shutil.copytree(export_dir, copy)
  pixels = np.round(images * 255).astype(np.uint8)
  pngs = [tf.io.encode_png(p).numpy() for p in pixels]
  np.savez(tmp_path / "inputs.npz", images=images,
           image_bytes=np.array(pngs, dtype=object))
  script = textwrap.dedent(f"""
      import importlib.abc, sys

      class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
          if name.split(".")[0] == "rlfat_tf":
            raise ImportError("blocked: " + name)

      sys.meta_path.insert(0, Block())
      import numpy as np
      import tensorflow as tf
      inputs = np.load({str(tmp_path / 'inputs.npz')!r}, allow_pickle=True)
      loaded = tf.saved_model.load({str(copy)!r})
      a = loaded.signatures["serving_default"](
          images=tf.constant(inputs["images"]))
      b = loaded.signatures["serving_bytes"](
          image_bytes=tf.constant(list(inputs["image_bytes"])))
      np.savez({str(tmp_path / 'outputs.npz')!r},
               logits=a["logits"].numpy(), classes=a["classes"].numpy(),
               names=a["class_names"].numpy().astype(str),
               bytes_classes=b["classes"].numpy())
      assert "rlfat_tf" not in sys.modules
  """)
  result = subprocess.run([sys.executable, "-c", script], capture_output=True,
                          text=True, cwd=tmp_path,
                          env=dict(ENV, PYTHONPATH=""), timeout=300,
                          check=False)
  assert result.returncode == 0, result.stderr[-2000:]
  outputs = np.load(tmp_path / "outputs.npz")
  expected = model(images, training=False).numpy()
  np.testing.assert_allclose(outputs["logits"], expected, atol=1e-5, rtol=0)
  np.testing.assert_array_equal(outputs["classes"], expected.argmax(-1))
  assert list(outputs["names"]) == [CLASS_NAMES[i]
                                    for i in expected.argmax(-1)]
  # PNG quantises to 8 bits, which can move a near tie; the float signature
  # on the same quantised pixels must agree exactly.
  np.testing.assert_array_equal(
      outputs["bytes_classes"],
      model(pixels.astype(np.float32) / 255,
            training=False).numpy().argmax(-1))


def _png(image_uint8):
  return tf.io.encode_png(image_uint8).numpy()


def test_bytes_signature_equals_float_signature_on_png(loaded, images):
  pixels = np.round(images * 255).astype(np.uint8)
  by_bytes = loaded.signatures["serving_bytes"](
      image_bytes=tf.constant([_png(p) for p in pixels]))
  by_float = loaded.signatures["serving_default"](
      images=tf.constant(pixels.astype(np.float32) / 255))
  np.testing.assert_array_equal(by_bytes["classes"], by_float["classes"])
  np.testing.assert_allclose(by_bytes["logits"], by_float["logits"],
                             atol=1e-5, rtol=0)
  np.testing.assert_array_equal(by_bytes["class_names"],
                                by_float["class_names"])


def test_bytes_signature_resizes_other_sizes_and_expands_gray(loaded):
  rng = np.random.default_rng(3)
  large = rng.integers(0, 256, (2 * HEIGHT, 3 * WIDTH, 3), np.uint8)
  gray = rng.integers(0, 256, (HEIGHT, WIDTH, 1), np.uint8)
  jpeg = tf.io.encode_jpeg(large, quality=95).numpy()
  out = loaded.signatures["serving_bytes"](
      image_bytes=tf.constant([_png(large), _png(gray), jpeg]))
  decoded_jpeg = tf.image.convert_image_dtype(tf.io.decode_jpeg(jpeg),
                                              tf.float32)
  expected_inputs = np.stack([
      np.clip(tf.image.resize(large.astype(np.float32) / 255,
                              [HEIGHT, WIDTH], antialias=True), 0, 1),
      np.repeat(gray.astype(np.float32) / 255, 3, axis=-1),
      np.clip(tf.image.resize(decoded_jpeg, [HEIGHT, WIDTH],
                              antialias=True), 0, 1)]).astype(np.float32)
  expected = loaded.signatures["serving_default"](
      images=tf.constant(expected_inputs))
  np.testing.assert_allclose(out["logits"], expected["logits"], atol=1e-5,
                             rtol=0)


@pytest.mark.parametrize("shape", [(2, 8, 8, 3), (2, HEIGHT, WIDTH),
                                   (HEIGHT, WIDTH, 3), (2, HEIGHT, WIDTH, 1),
                                   (1, 1, HEIGHT, WIDTH, 3)])
def test_loaded_signature_refuses_wrong_rank_or_size(loaded, shape):
  # The loaded signature does not check shapes itself: without the graph's
  # check a wrong size would be classified and a wrong rank would abort.
  with pytest.raises(tf.errors.InvalidArgumentError) as e:
    loaded.signatures["serving_default"](
        images=tf.zeros(shape, tf.float32))
  message = str(e.value)
  assert f"images must be float32 [batch, {HEIGHT}, {WIDTH}, 3]" in message
  assert "got shape" in message
  assert " ".join(str(d) for d in shape) in message


@pytest.mark.parametrize("dtype", [tf.float64, tf.uint8, tf.int32])
def test_loaded_signature_refuses_wrong_dtype(loaded, dtype):
  with pytest.raises(tf.errors.InvalidArgumentError,
                     match="expected to be a float tensor"):
    loaded.signatures["serving_default"](
        images=tf.zeros((1, HEIGHT, WIDTH, 3), dtype))


def test_loaded_signature_refuses_values_outside_unit_range(loaded):
  with pytest.raises(tf.errors.InvalidArgumentError,
                     match=r"must lie in \[0, 1\] \(divide 8-bit pixels by "
                     r"255\)"):
    loaded.signatures["serving_default"](
        images=tf.fill((1, HEIGHT, WIDTH, 3), 255.0))


def test_python_signature_refuses_wrong_shape_and_dtype(model, tmp_path):
  servable_names = tmp_path / serving.CLASS_NAMES_ASSET
  servable_names.write_text("".join(f"{n}\n" for n in CLASS_NAMES))
  servable = serving.Servable(model, str(servable_names))
  with pytest.raises((TypeError, ValueError)):
    servable.serve_images(tf.zeros((1, 8, 8, 3)))
  with pytest.raises((TypeError, ValueError)):
    servable.serve_images(tf.zeros((1, HEIGHT, WIDTH, 3), tf.float64))


def test_undecodable_bytes_give_a_clear_error(loaded):
  with pytest.raises(tf.errors.InvalidArgumentError,
                     match="Unknown image file format"):
    loaded.signatures["serving_bytes"](
        image_bytes=tf.constant([b"not an image"]))


def test_class_names_are_an_asset(export_dir):
  asset = pathlib.Path(export_dir) / "assets" / serving.CLASS_NAMES_ASSET
  assert asset.read_text().splitlines() == list(CLASS_NAMES)


def test_save_refuses_bad_class_names(model, tmp_path):
  with pytest.raises(ValueError, match="3 class names for a model with 4"):
    serving.save(model, CLASS_NAMES[:3], str(tmp_path / "a"))
  with pytest.raises(ValueError, match="single lines"):
    serving.save(model, ("cat", "dog\nfish", "ship", "truck"),
                 str(tmp_path / "b"))
  assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def _encoded(image_uint8, fmt):
  """``image_uint8`` encoded by Pillow in ``fmt`` (GIF, BMP, PNG, JPEG)."""
  buffer = io.BytesIO()
  PIL.Image.fromarray(image_uint8).save(buffer, format=fmt)
  return buffer.getvalue()


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF", "BMP"])
def test_header_pixels_reads_width_times_height(fmt):
  image = np.zeros((7, 13, 3), np.uint8)
  pixels = serving.header_pixels(tf.constant(_encoded(image, fmt)))
  assert int(pixels) == 7 * 13


def test_header_pixels_of_unknown_data_is_minus_one():
  assert int(serving.header_pixels(tf.constant(b"not an image"))) == -1


def _png_header(width, height):
  """A PNG signature and IHDR chunk declaring ``width`` x ``height``, no data.

  What a decompression bomb's first bytes look like: the size check must
  refuse it from these bytes alone.
  """
  ihdr = (width.to_bytes(4, "big") + height.to_bytes(4, "big") +
          bytes([8, 2, 0, 0, 0]))
  return (b"\x89PNG\r\n\x1a\n" + len(ihdr).to_bytes(4, "big") + b"IHDR" +
          ihdr + b"\x00" * 4)


def test_bytes_signature_refuses_an_image_too_large_before_decoding(loaded):
  # 10,000 x 10,000 pixels would decode to 1.2 GB of float32; the header is
  # all the signature needs to refuse it.
  with pytest.raises(tf.errors.InvalidArgumentError,
                     match=f"more than {serving.DEFAULT_MAX_IMAGE_PIXELS} "
                     r"pixels .*got\] \[100000000\]"):
    loaded.signatures["serving_bytes"](
        image_bytes=tf.constant([_png_header(10_000, 10_000)]))


def test_max_image_pixels_is_set_at_save(model, tmp_path):
  path = str(tmp_path / "1")
  serving.save(model, CLASS_NAMES, path, max_image_pixels=HEIGHT * WIDTH)
  serve = tf.saved_model.load(path).signatures["serving_bytes"]
  rng = np.random.default_rng(4)
  fits = rng.integers(0, 256, (HEIGHT, WIDTH, 3), np.uint8)
  too_large = rng.integers(0, 256, (HEIGHT, WIDTH + 1, 3), np.uint8)
  assert serve(image_bytes=tf.constant([_png(fits)]))["logits"].shape == (
      1, CLASSES)
  with pytest.raises(tf.errors.InvalidArgumentError,
                     match=f"more than {HEIGHT * WIDTH} pixels"):
    serve(image_bytes=tf.constant([_png(too_large)]))


def test_empty_batches_return_empty_outputs(loaded):
  by_float = loaded.signatures["serving_default"](
      images=tf.zeros((0, HEIGHT, WIDTH, 3), tf.float32))
  by_bytes = loaded.signatures["serving_bytes"](
      image_bytes=tf.zeros((0,), tf.string))
  for out in (by_float, by_bytes):
    assert out["logits"].shape == (0, CLASSES)
    assert out["probabilities"].shape == (0, CLASSES)
    assert out["classes"].shape == (0,)
    assert out["class_names"].shape == (0,)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_values_get_their_own_message(loaded, value):
  images = np.full((1, HEIGHT, WIDTH, 3), 0.5, np.float32)
  images[0, 3, 4, 1] = value
  with pytest.raises(tf.errors.InvalidArgumentError,
                     match="hold NaN or Inf values") as e:
    loaded.signatures["serving_default"](images=tf.constant(images))
  assert "divide 8-bit pixels" not in str(e.value)


def _webp(image_uint8, **options):
  buffer = io.BytesIO()
  PIL.Image.fromarray(image_uint8).save(buffer, format="WEBP", **options)
  return buffer.getvalue()


@pytest.mark.parametrize("options", [{"lossless": True}, {"quality": 90}])
def test_header_pixels_reads_webp(options):
  # Lossless files start with a VP8L chunk, lossy ones with VP8; an alpha
  # channel in a lossy file adds the extended VP8X header.
  for channels in (3, 4):
    image = np.zeros((7, 13, channels), np.uint8)
    data = _webp(image, **options)
    assert int(serving.header_pixels(tf.constant(data))) == 7 * 13, data[:16]


def test_bytes_signature_decodes_webp_like_png(loaded):
  rng = np.random.default_rng(5)
  pixels = rng.integers(0, 256, (3, HEIGHT, WIDTH, 3), np.uint8)
  rgba = np.concatenate([pixels[0], np.full((HEIGHT, WIDTH, 1), 7, np.uint8)],
                        axis=-1)
  by_webp = loaded.signatures["serving_bytes"](image_bytes=tf.constant(
      [_webp(p, lossless=True) for p in pixels] + [_webp(rgba,
                                                        lossless=True)]))
  by_png = loaded.signatures["serving_bytes"](image_bytes=tf.constant(
      [_png(p) for p in pixels] + [_png(pixels[0])]))
  np.testing.assert_allclose(by_webp["logits"], by_png["logits"], atol=1e-6,
                             rtol=0)


def test_bytes_signature_refuses_animated_webp_and_large_webp(model,
                                                              tmp_path):
  path = str(tmp_path / "1")
  serving.save(model, CLASS_NAMES, path, max_image_pixels=HEIGHT * WIDTH)
  serve = tf.saved_model.load(path).signatures["serving_bytes"]
  frame = PIL.Image.fromarray(np.zeros((HEIGHT, WIDTH, 3), np.uint8))
  buffer = io.BytesIO()
  frame.save(buffer, format="WEBP", save_all=True, lossless=True,
             append_images=[PIL.Image.fromarray(
                 np.full((HEIGHT, WIDTH, 3), 255, np.uint8))])
  with pytest.raises(tf.errors.InvalidArgumentError,
                     match="animated WebP, which is not supported"):
    serve(image_bytes=tf.constant([buffer.getvalue()]))
  with pytest.raises(tf.errors.InvalidArgumentError,
                     match=f"more than {HEIGHT * WIDTH} pixels"):
    serve(image_bytes=tf.constant([_webp(
        np.zeros((HEIGHT, WIDTH + 1, 3), np.uint8), lossless=True)]))
