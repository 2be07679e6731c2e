r"""Evaluates a TFLite classifier with the LiteRT runtime alone, as on a device.

Example:
  python -m rlfat_tf.edge_eval \
      --tflite=exports/cifar10_rlfat_p/1/edge/int8.tflite \
      --data=exports/cifar10_rlfat_p/1/edge/eval_set.npz --json=int8.json

The evaluation set is the one ``rlfat_tf.export`` writes beside the model:
clean test images, adversarial images crafted on the float Keras model, their
labels and the Keras model's logits on both. The report holds clean accuracy,
accuracy on the adversarial images (a transfer attack from the float model),
top-1 agreement with the Keras model and the largest logit difference from
it, the model's size, and its per-image latency.

Only numpy, ai-edge-litert and the standard library are imported, never
TensorFlow, so this runs where the device's runtime runs.
"""

import argparse
import hashlib
import json
import os
import time
import zipfile

import numpy as np
from ai_edge_litert import interpreter as litert

from rlfat_tf import cli
from rlfat_tf import errors
from rlfat_tf import files

# Arrays of the evaluation set written by rlfat_tf.export.
EVAL_SET_ARRAYS = ("clean_images", "adv_images", "labels", "clean_logits",
                   "adv_logits")
# Scalars recorded with it: how the adversarial images were made.
EVAL_SET_ATTACK = ("epsilon", "step_size", "pgd_steps")

# Written by rlfat_tf.export in the version folder, above edge/.
MANIFEST_FILE = "export.json"

DEFAULT_BATCH_SIZE = 50
DEFAULT_LATENCY_RUNS = 100
WARMUP_RUNS = 10


def load_eval_set(path):
  """Reads and checks an evaluation set.

  Args:
    path: an ``.npz`` written by ``rlfat_tf.export``.

  Returns:
    A dict of its arrays: ``clean_images`` uint8 [N, H, W, C] (C is 3, or 1
    for a grayscale model), ``adv_images`` float32 [N, H, W, C] in [0, 1],
    ``labels`` int [N], ``clean_logits`` and
    ``adv_logits`` float32 [N, classes], and the attack scalars.

  Raises:
    errors.UserError: the file is missing, unreadable or not such a set.
  """
  fix = "pass the eval_set.npz that rlfat_tf.export writes beside the model"
  if not os.path.isfile(path):
    raise errors.UserError(f"--data={path} does not exist: {fix}")
  try:
    npz = np.load(path, allow_pickle=False)
  except (OSError, ValueError, zipfile.BadZipFile) as e:
    raise errors.UserError(
        f"--data={path} is not a readable .npz ({type(e).__name__}): "
        f"{fix}") from e
  # np.load reads a lone .npy as an array, not an archive of arrays.
  if not isinstance(npz, np.lib.npyio.NpzFile):
    raise errors.UserError(f"--data={path} is a single array, not an .npz "
                           f"archive: {fix}")
  with npz:
    missing = [k for k in EVAL_SET_ARRAYS + EVAL_SET_ATTACK
               if k not in npz.files]
    if missing:
      raise errors.UserError(
          f"--data={path} lacks {', '.join(missing)}: {fix}")
    try:
      arrays = {k: npz[k] for k in EVAL_SET_ARRAYS + EVAL_SET_ATTACK}
    except (OSError, ValueError, zipfile.BadZipFile) as e:
      raise errors.UserError(
          f"--data={path} is corrupt ({type(e).__name__}): {fix}") from e
  clean, adv = arrays["clean_images"], arrays["adv_images"]
  num = len(arrays["labels"])
  consistent = (
      clean.dtype == np.uint8 and clean.ndim == 4
      and clean.shape[-1] in (1, 3)
      and adv.shape == clean.shape and arrays["labels"].shape == (num,)
      and len(clean) == num and num > 0
      and arrays["clean_logits"].ndim == 2
      and arrays["clean_logits"].shape[0] == num
      and arrays["adv_logits"].shape == arrays["clean_logits"].shape)
  if not consistent:
    raise errors.UserError(
        f"--data={path} has arrays of inconsistent shapes or types: {fix}")
  return arrays


def quantize(values, scale, zero_point, dtype):
  """Maps real values to a quantised integer tensor: round(v / s) + z.

  Args:
    values: float array.
    scale: the tensor's scale.
    zero_point: the tensor's zero point.
    dtype: its integer numpy dtype; results saturate to its range.

  Returns:
    An array of ``dtype``.
  """
  info = np.iinfo(dtype)
  return np.clip(np.round(np.asarray(values, np.float32) / scale) +
                 zero_point, info.min, info.max).astype(dtype)


def dequantize(values, scale, zero_point):
  """Maps a quantised integer tensor back to real values: (q - z) * s."""
  return (np.asarray(values, np.float32) - zero_point) * np.float32(scale)


def sha256(path):
  """Hex SHA-256 of a file, read in 1 MiB blocks."""
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def verify_against_manifest(path, flag):
  """Checks a file against the SHA-256 that ``export.json`` records for it.

  The manifest is looked for where ``rlfat_tf.export`` writes it: in the
  version folder that holds the file's ``edge/`` folder. A file copied to a
  device without its manifest cannot be checked, and is not.

  Args:
    path: the .tflite model or the evaluation set.
    flag: the command-line flag that named it, for the message.

  Returns:
    True if the file matched a recorded hash, False if there is none.

  Raises:
    errors.UserError: the file differs from the export (damaged, truncated or
      replaced), or the manifest is unreadable.
  """
  folder = os.path.dirname(os.path.dirname(os.path.abspath(path)))
  manifest_path = os.path.join(folder, MANIFEST_FILE)
  if not os.path.isfile(path) or not os.path.isfile(manifest_path):
    return False
  try:
    with open(manifest_path, encoding="utf-8") as f:
      manifest = json.load(f)
    entries = [manifest.get("eval_set", {}),
               *manifest.get("tflite", {}).values()]
  except (OSError, ValueError, AttributeError) as e:
    raise errors.UserError(
        f"{manifest_path} is not the JSON manifest rlfat_tf.export writes "
        f"({_first_line(e)}): export the model again") from e
  relative = os.path.relpath(os.path.abspath(path), folder)
  recorded = [e["sha256"] for e in entries
              if isinstance(e, dict) and e.get("file") == relative and
              "sha256" in e]
  if not recorded:
    return False
  if sha256(path) != recorded[0]:
    raise errors.UserError(
        f"--{flag}={path} does not match the sha256 that {manifest_path} "
        f"records for it (the file is damaged or was replaced): copy it "
        f"again or export the model again")
  return True


class Classifier:
  """A TFLite image classifier run by the LiteRT interpreter.

  Float inputs in [0, 1] go in and float logits come out whatever the
  variant: a full-integer model's input is quantised with its own scale and
  zero point and its output dequantised, so logits compare on one scale.
  """

  def __init__(self, path, num_threads=1):
    """Loads the model.

    Args:
      path: a ``.tflite`` file with one image input and one logits output.
      num_threads: CPU threads of the interpreter.

    Raises:
      errors.UserError: the file is missing or not such a model.
    """
    fix = "pass a .tflite written by rlfat_tf.export (its edge/ folder)"
    if not os.path.isfile(path):
      raise errors.UserError(f"--tflite={path} does not exist: {fix}")
    try:
      self._interpreter = litert.Interpreter(model_path=path,
                                             num_threads=num_threads)
    except (ValueError, RuntimeError) as e:
      raise errors.UserError(
          f"--tflite={path} is not a model LiteRT can load "
          f"({_first_line(e)}): {fix}") from e
    inputs = self._interpreter.get_input_details()
    outputs = self._interpreter.get_output_details()
    if len(inputs) != 1 or len(outputs) != 1 or len(inputs[0]["shape"]) != 4:
      raise errors.UserError(
          f"--tflite={path} is not a classifier with one image input and one "
          f"logits output: {fix}")
    self._input, self._output = inputs[0], outputs[0]
    self.path = path
    self.size_bytes = os.path.getsize(path)
    self.image_shape = tuple(int(d) for d in self._input["shape"][1:])
    self.input_type = np.dtype(self._input["dtype"]).name
    self._batch = None

  def _resize(self, batch):
    if batch != self._batch:
      self._interpreter.resize_tensor_input(
          self._input["index"], [batch, *self.image_shape])
      self._interpreter.allocate_tensors()
      self._batch = batch

  def _to_input(self, images):
    dtype = np.dtype(self._input["dtype"])
    if dtype == np.float32:
      return np.asarray(images, np.float32)
    return quantize(images, *self._input["quantization"], dtype)

  def _from_output(self, values):
    if np.dtype(self._output["dtype"]) == np.float32:
      return values
    return dequantize(values, *self._output["quantization"])

  def logits(self, images, batch_size=DEFAULT_BATCH_SIZE):
    """Float logits [N, classes] of float images [N, H, W, 3] in [0, 1]."""
    out = []
    for start in range(0, len(images), batch_size):
      chunk = self._to_input(images[start:start + batch_size])
      self._resize(len(chunk))
      self._interpreter.set_tensor(self._input["index"], chunk)
      self._interpreter.invoke()
      out.append(self._from_output(
          self._interpreter.get_tensor(self._output["index"])))
    return np.concatenate(out)

  def latency_ms(self, images, runs=DEFAULT_LATENCY_RUNS):
    """Per-image latency in milliseconds, one image per invoke.

    Each timed run sets the input, invokes and reads the output, as an app
    does; quantising the input happens before the clock starts. The first
    ``WARMUP_RUNS`` runs are not timed.

    Args:
      images: float images [N, H, W, 3] in [0, 1], used in turn.
      runs: timed runs.

    Returns:
      ``(mean, median, p95)`` in milliseconds.
    """
    inputs = self._to_input(images)
    self._resize(1)
    times = []
    for i in range(WARMUP_RUNS + runs):
      image = inputs[i % len(inputs)][np.newaxis]
      start = time.perf_counter()
      self._interpreter.set_tensor(self._input["index"], image)
      self._interpreter.invoke()
      self._interpreter.get_tensor(self._output["index"])
      if i >= WARMUP_RUNS:
        times.append(time.perf_counter() - start)
    times_ms = 1e3 * np.asarray(times)
    return (float(times_ms.mean()), float(np.median(times_ms)),
            float(np.percentile(times_ms, 95)))


def evaluate(classifier, eval_set, batch_size=DEFAULT_BATCH_SIZE,
             latency_runs=DEFAULT_LATENCY_RUNS):
  """Scores a classifier on an evaluation set against the Keras model.

  Args:
    classifier: a ``Classifier``.
    eval_set: a dict from ``load_eval_set``.
    batch_size: images per invoke for the accuracy passes.
    latency_runs: timed single-image runs; 0 skips the latency measurement.

  Returns:
    A dict: ``examples``, ``model_bytes``, ``input_type``, ``clean_accuracy``,
    ``adv_accuracy``, ``keras_clean_accuracy``, ``keras_adv_accuracy``,
    ``clean_agreement`` and ``adv_agreement`` (top-1 equal to the Keras
    model's), ``max_abs_logit_diff`` (over both sets), the attack scalars,
    and, if measured, ``latency_ms_mean``, ``latency_ms_median`` and
    ``latency_ms_p95``.

  Raises:
    errors.UserError: the model and the set disagree in image shape or
      number of classes.
  """
  images_shape = tuple(eval_set["clean_images"].shape[1:])
  if images_shape != classifier.image_shape:
    raise errors.UserError(
        f"{classifier.path} takes images of shape {classifier.image_shape} "
        f"but the evaluation set holds {images_shape}: pass the eval_set.npz "
        f"exported with this model")
  clean = eval_set["clean_images"].astype(np.float32) / 255.0
  adv = eval_set["adv_images"].astype(np.float32)
  labels = eval_set["labels"]
  clean_logits = classifier.logits(clean, batch_size)
  adv_logits = classifier.logits(adv, batch_size)
  if clean_logits.shape != eval_set["clean_logits"].shape:
    raise errors.UserError(
        f"{classifier.path} outputs {clean_logits.shape[-1]} classes but the "
        f"evaluation set's model has {eval_set['clean_logits'].shape[-1]}: "
        f"pass the eval_set.npz exported with this model")

  def accuracy(logits):
    return float(np.mean(logits.argmax(-1) == labels))

  def agreement(logits, reference):
    return float(np.mean(logits.argmax(-1) == reference.argmax(-1)))

  report = {
      "model": classifier.path,
      "model_bytes": classifier.size_bytes,
      "input_type": classifier.input_type,
      "examples": int(len(labels)),
      "clean_accuracy": accuracy(clean_logits),
      "adv_accuracy": accuracy(adv_logits),
      "keras_clean_accuracy": accuracy(eval_set["clean_logits"]),
      "keras_adv_accuracy": accuracy(eval_set["adv_logits"]),
      "clean_agreement": agreement(clean_logits, eval_set["clean_logits"]),
      "adv_agreement": agreement(adv_logits, eval_set["adv_logits"]),
      "max_abs_logit_diff": float(max(
          np.abs(clean_logits - eval_set["clean_logits"]).max(),
          np.abs(adv_logits - eval_set["adv_logits"]).max())),
  }
  report.update({k: eval_set[k].item() for k in EVAL_SET_ATTACK})
  if latency_runs:
    (report["latency_ms_mean"], report["latency_ms_median"],
     report["latency_ms_p95"]) = classifier.latency_ms(clean, latency_runs)
  return report


def format_report(report):
  """The report as aligned ``name: value`` lines."""
  attack = (f"PGD-{report['pgd_steps']} on the float Keras model, eps "
            f"{report['epsilon']:g}, step {report['step_size']:g}")
  rows = [
      ("model", report["model"]),
      ("size", f"{report['model_bytes'] / 1024:.1f} KiB "
               f"({report['input_type']} input)"),
      ("examples", report["examples"]),
      ("clean accuracy", f"{report['clean_accuracy']:.4f} (Keras "
                         f"{report['keras_clean_accuracy']:.4f})"),
      ("adversarial accuracy",
       f"{report['adv_accuracy']:.4f} (Keras "
       f"{report['keras_adv_accuracy']:.4f}; {attack})"),
      ("top-1 agreement", f"clean {report['clean_agreement']:.4f}, "
                          f"adversarial {report['adv_agreement']:.4f}"),
      ("max |logit diff|", f"{report['max_abs_logit_diff']:.3g}"),
  ]
  if "sha256_verified" in report:
    checked = [name for name, ok in report["sha256_verified"].items() if ok]
    rows.append(("sha256", f"{', '.join(checked)} match export.json"
                 if checked else "not checked (no export.json beside it)"))
  if "latency_ms_mean" in report:
    rows.append(("latency per image", f"{report['latency_ms_mean']:.3f} ms "
                 f"mean, {report['latency_ms_median']:.3f} ms median, "
                 f"{report['latency_ms_p95']:.3f} ms p95"))
  width = max(len(name) for name, _ in rows)
  return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def write_json(path, report):
  """Writes the report atomically (``files.write_json``).

  Raises:
    errors.UserError: the file cannot be written.
  """
  try:
    files.write_json(path, report)
  except OSError as e:
    raise errors.UserError(
        f"cannot write --json={path} ({e.strerror or type(e).__name__}): "
        f"pass a path in an existing, writable folder") from e


def _first_line(e):
  lines = str(e).strip().splitlines()
  return lines[0] if lines else type(e).__name__


def _positive_int(text):
  value = int(text)
  if value < 1:
    raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
  return value


def _non_negative_int(text):
  value = int(text)
  if value < 0:
    raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
  return value


def parse_args(argv):
  """Parses command-line arguments (``argv`` without the program name)."""
  parser = cli.ArgumentParser(
      prog="python -m rlfat_tf.edge_eval",
      description="Evaluates a TFLite classifier with the LiteRT runtime "
      "(no TensorFlow) on the evaluation set written by rlfat_tf.export.")
  parser.add_argument("--tflite", required=True, help="the .tflite model")
  parser.add_argument("--data", required=True,
                      help="the eval_set.npz written beside it")
  parser.add_argument("--num_threads", type=_positive_int, default=1,
                      help="interpreter CPU threads (default: 1)")
  parser.add_argument("--batch_size", type=_positive_int,
                      default=DEFAULT_BATCH_SIZE,
                      help="images per invoke for the accuracy passes")
  parser.add_argument("--latency_runs", type=_non_negative_int,
                      default=DEFAULT_LATENCY_RUNS,
                      help="timed single-image invokes after "
                      f"{WARMUP_RUNS} warm-up ones (0: skip)")
  parser.add_argument("--json", help="also write the report to this file")
  return parser.parse_args(argv)


def main(argv=None):
  """Runs the evaluation and prints the report.

  Args:
    argv: the arguments without the program name (default: the command
      line).

  Raises:
    errors.UserError: bad arguments or files.
  """
  args = parse_args(argv)
  verified = {"model": verify_against_manifest(args.tflite, "tflite"),
              "eval_set": verify_against_manifest(args.data, "data")}
  classifier = Classifier(args.tflite, args.num_threads)
  report = evaluate(classifier, load_eval_set(args.data), args.batch_size,
                    args.latency_runs)
  report["num_threads"] = args.num_threads
  report["sha256_verified"] = verified
  if args.json:
    write_json(args.json, report)
  print(format_report(report))


if __name__ == "__main__":
  cli.call(main)
