r"""Exports a trained run, or any classifier, for TF Serving and edge devices.

Examples:
  python -m rlfat_tf.export --model_dir=runs/c10 --export_dir=exports
  python -m rlfat_tf.export --model=net.keras --dataset=cifar10 \
      --epsilon=0.03 --export_dir=exports

writes the next version of the model, ``exports/<model_name>/<version>/``:

- the SavedModel that TensorFlow Serving loads (``saved_model.pb``,
  ``variables/``, ``assets/class_names.txt``) with the signatures
  ``serving_default`` (float images) and ``serving_bytes`` (encoded images);
  see ``rlfat_tf.serving``;
- ``edge/<variant>.tflite`` for each --tflite variant (``rlfat_tf.tflite``);
- ``edge/eval_set.npz``: the first --eval_examples test images, adversarial
  images crafted on the float Keras model (PGD, BatchNorm in eval mode), their
  labels and the Keras model's logits on both, for ``rlfat_tf.edge_eval``;
- ``export.json``: where the export came from, file sizes and hashes, and the
  measured agreement of every artifact with the Keras model.

A ``--model`` (a ``.keras`` file or a SavedModel folder, see
``classifier.load``) takes images in [0, 1]; one that expects [0, 255]
pixels is exported with ``--input_scale=255``, which the export applies
inside, so its signatures take [0, 1] images like every other export. From
Python, ``export_model`` exports a ``keras.Model`` or function directly.

The default model name is ``<dataset>_<method>`` of a run, the file or folder
name of a ``--model``. Versions are
numbered 1, 2, ... and never overwritten. Everything is written into a hidden
temporary folder that is renamed to its version number only once complete, so
a failed export leaves nothing that TensorFlow Serving would load. Serving
reads only the SavedModel's own files and ignores ``edge/`` and
``export.json``; keeping them in the version folder ties every artifact to the
SavedModel it was converted from.
"""

import os
import re
import shutil
import socket
import tempfile

from absl import flags

# Before TensorFlow loads: keep its C++ start-up chatter off the console.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import tensorflow as tf

from rlfat_tf import classifier
from rlfat_tf import cli
from rlfat_tf import data
from rlfat_tf import datasets
from rlfat_tf import edge_eval
from rlfat_tf import errors
from rlfat_tf import files
from rlfat_tf import progress as progress_lib
from rlfat_tf import runs
from rlfat_tf import serving
from rlfat_tf import tflite
from rlfat_tf.attacks import pgd

EDGE_DIR = "edge"
EVAL_SET_FILE = "eval_set.npz"
MANIFEST_FILE = edge_eval.MANIFEST_FILE
TEMP_PREFIX = ".export-"
# Inside a temporary export: "<host> <pid>" of the process writing it, so a
# later export can tell a killed export's leftovers from a running one.
OWNER_FILE = ".owner"

DEFAULT_REPRESENTATIVE_EXAMPLES = 200
DEFAULT_EVAL_EXAMPLES = 500
DEFAULT_PGD_STEPS = 20
DEFAULT_BATCH_SIZE = 100

# The reloaded SavedModel runs the very graph that produced the Keras logits;
# anything beyond float rounding means the export is broken.
SAVED_MODEL_TOLERANCE = 1e-4

MODEL_NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]*"

# Renaming onto a version that another export took in the meantime fails;
# the export then takes the next free number, this many times at most.
_RENAME_ATTEMPTS = 10


def next_version(model_root):
  """The version number after the largest numeric folder in ``model_root``."""
  if not os.path.isdir(model_root):
    return 1
  # A numeric file blocks its number as surely as a version folder does.
  versions = [int(name) for name in os.listdir(model_root) if name.isdigit()]
  return max(versions, default=0) + 1


def _process_alive(pid):
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


def remove_stale_exports(model_root):
  """Deletes temporary folders that killed exports left in ``model_root``.

  A temporary folder is stale when its owner file names a process of this
  host that no longer runs, or when it has no owner file (an export killed
  before writing it). Folders of running exports, and of other hosts (whose
  processes cannot be checked from here), are kept.

  Returns:
    The names of the folders removed.
  """
  if not os.path.isdir(model_root):
    return []
  removed = []
  host = socket.gethostname()
  for name in sorted(os.listdir(model_root)):
    path = os.path.join(model_root, name)
    if not name.startswith(TEMP_PREFIX) or not os.path.isdir(path):
      continue
    try:
      with open(os.path.join(path, OWNER_FILE), encoding="utf-8") as f:
        owner_host, pid = f.read().split()
      stale = owner_host == host and not _process_alive(int(pid))
    except (OSError, ValueError):
      # The owner file is written right after the folder is made, so a
      # folder without one is more than a moment old only if its export died.
      stale = True
    if stale:
      shutil.rmtree(path, ignore_errors=True)
      removed.append(name)
  return removed


def publish(temp_dir, model_root):
  """Renames a finished export to the next free version folder.

  Args:
    temp_dir: the complete export, a folder inside ``model_root``.
    model_root: ``<export_dir>/<model_name>``.

  Returns:
    ``(version, path)``.
  """
  owner = os.path.join(temp_dir, OWNER_FILE)
  if os.path.exists(owner):
    os.remove(owner)
  for _ in range(_RENAME_ATTEMPTS):
    version = next_version(model_root)
    path = os.path.join(model_root, str(version))
    if os.path.exists(path):
      continue
    try:
      os.rename(temp_dir, path)
    except OSError:
      continue
    return version, path
  raise RuntimeError(f"no free version folder in {model_root} after "
                     f"{_RENAME_ATTEMPTS} attempts")


def adversarial_set(model, images, labels, spec, batch_size, seed,
                    progress=True):
  """Attacks ``model`` and returns its logits on clean and attacked images.

  Args:
    model: a Keras classifier.
    images: uint8 [N, H, W, 3] test images.
    labels: int [N] labels.
    spec: a ``pgd.AttackSpec``.
    batch_size: images per attack batch.
    seed: seed of the per-example random starts.
    progress: how progress is shown, a ``progress.Mode`` (True: a bar on a
      terminal, plain lines otherwise; False: nothing).

  Returns:
    ``(adv_images, clean_logits, adv_logits)`` as float32 numpy arrays.
  """

  @tf.function
  def attack(batch):
    adv = pgd.perturb(model, spec, batch["image"], batch["label"],
                      batch["seed"])
    return (adv, model(batch["image"], training=False),
            model(adv, training=False))

  dataset = data.eval_dataset(images, labels, batch_size=batch_size,
                              seed=seed)
  bar = progress_lib.progbar(len(images), verbose=progress,
                             unit_name="image")
  parts = []
  for batch in dataset:
    parts.append([t.numpy() for t in attack(batch)])
    bar.add(len(parts[-1][0]))
  return tuple(np.concatenate(p) for p in zip(*parts))


def saved_model_max_diff(path, image_batches, reference_logits):
  """Largest |logit difference| of a reloaded SavedModel from the reference.

  Args:
    path: the SavedModel folder.
    image_batches: float32 image arrays, fed one per call.
    reference_logits: the Keras logits of the concatenated batches.

  Returns:
    The maximum absolute difference.
  """
  serve = tf.saved_model.load(path).signatures[serving.IMAGES_SIGNATURE]
  logits = np.concatenate([
      serve(**{serving.IMAGES_INPUT: tf.constant(batch)})["logits"].numpy()
      for batch in image_batches])
  return float(np.abs(logits - reference_logits).max())


def _batches(images, batch_size):
  return [images[i:i + batch_size] for i in range(0, len(images), batch_size)]


def _take(split_name, images, labels, count, flag):
  if count > len(images):
    raise errors.UserError(
        f"--{flag}={count} exceeds the {len(images)} images of the "
        f"{split_name}: pass at most {len(images)}")
  return datasets.in_memory(images[:count]), labels[:count]


def export(model_dir, export_dir, *, which="last", model_name=None,
           epsilon=None, step_size=None, data_dir=None, tfds_data_dir=None,
           **options):
  """Exports a run's model as the next version under ``export_dir``.

  Args:
    model_dir: the run folder written by ``rlfat_tf.train``.
    export_dir: the TF Serving base folder; the model goes to
      ``export_dir/<model_name>/<version>``.
    which: "last" or "best" checkpoint.
    model_name: folder name of the model; None for ``<dataset>_<method>``,
      with each character a folder name may not hold as "_"
      (``tfds_mnist_rlfat_p``).
    epsilon: L-inf radius of the adversarial set; None for the run's.
    step_size: PGD step; None for the run's.
    data_dir: the run's data folder (``folder`` dataset or official binary
      release) if it moved; None for the run's.
    tfds_data_dir: tensorflow-datasets folder; None for the run's.
    **options: the remaining arguments of ``export_model``.

  Returns:
    ``(version_path, manifest)``; the manifest is also ``export.json``.

  Raises:
    errors.UserError: bad arguments, a missing run, checkpoint or data.
    RuntimeError: the reloaded SavedModel disagrees with the Keras model.
  """
  model, record, checkpoint = runs.restore_model(
      model_dir, which, data_dir=data_dir, tfds_data_dir=tfds_data_dir)
  return export_model(
      model, export_dir, dataset=record.dataset,
      # "tfds:NAME/CONFIG" holds characters no folder name may.
      model_name=model_name or re.sub(r"[^A-Za-z0-9._-]", "_",
                                      f"{record.dataset}_{record.method}"),
      epsilon=record.epsilon if epsilon is None else epsilon,
      step_size=record.step_size if step_size is None else step_size,
      data_dir=data_dir or record.data_dir,
      tfds_data_dir=tfds_data_dir or record.tfds_data_dir,
      image_size=record.image_size,
      memory_budget=runs.memory_budget(record),
      val_size=record.val_size,
      source={"model_dir": os.path.abspath(model_dir),
              "checkpoint": checkpoint, "which": which,
              "dataset": record.dataset, "method": record.method,
              "architecture": runs.architecture(record),
              "depth": record.depth, "width": record.width},
      **options)


def export_model(model, export_dir, *, dataset, model_name, epsilon,
                 step_size=None, input_scale=1.0, source=None, val_size=0,
                 tflite_variants=tflite.VARIANTS,
                 representative_examples=DEFAULT_REPRESENTATIVE_EXAMPLES,
                 eval_examples=DEFAULT_EVAL_EXAMPLES,
                 pgd_steps=DEFAULT_PGD_STEPS, batch_size=DEFAULT_BATCH_SIZE,
                 seed=0, data_dir=None, tfds_data_dir=None, image_size=None,
                 memory_budget=datasets.MEMORY_BUDGET, progress=True,
                 max_image_pixels=serving.DEFAULT_MAX_IMAGE_PIXELS):
  """Exports any classifier as the next version under ``export_dir``.

  Example:
    export_model(keras.saving.load_model("net.keras"), "exports",
                 dataset="cifar10", model_name="net", epsilon=8 / 255)

  Args:
    model: a ``keras.Model``, a SavedModel signature, a ``classifier.load``
      result, or a function without variables, mapping float32 images in
      [0, 1] (times ``input_scale``) to logits; see ``classifier.wrap``.
    export_dir: the TF Serving base folder; the model goes to
      ``export_dir/<model_name>/<version>``.
    dataset: the dataset name (``datasets.get``) of its images and classes.
    model_name: folder name of the model.
    epsilon: L-inf radius of the adversarial evaluation set.
    step_size: PGD step; None for ``epsilon / 4``.
    input_scale: the factor the model's inputs are scaled by (255 for a
      model that expects [0, 255] pixels); the export takes [0, 1] images
      and applies it inside.
    source: what the manifest records as the model's origin.
    val_size: the validation images the model's training held out of the
      train split, which the int8 calibration leaves out too.
    tflite_variants: the ``tflite.VARIANTS`` to convert.
    representative_examples: training images that calibrate ``int8``.
    eval_examples: test images in the evaluation set (the first ones).
    pgd_steps: PGD steps.
    batch_size: images per batch in the attack and the checks.
    seed: seed of the attack's random starts and of the calibration sample.
    data_dir: a ``folder`` dataset's folder or a registered one's official
      binary release folder, or None.
    tfds_data_dir: tensorflow-datasets folder, or None.
    image_size: side length the dataset's images are resized to (as the
      model was trained), or None for their own size.
    memory_budget: bytes over which a split is streamed; only the images
      the export uses are decoded.
    progress: how the attack's progress is shown, a ``progress.Mode``
      (True: a bar on a terminal, plain lines otherwise; False: nothing).
    max_image_pixels: largest width x height the ``serving_bytes`` signature
      decodes (``serving.decode_images``).

  Returns:
    ``(version_path, manifest)``; the manifest is also ``export.json``.

  Raises:
    errors.UserError: bad arguments, a model that does not fit the dataset,
      missing data.
    RuntimeError: the reloaded SavedModel disagrees with the model.
  """
  if not re.fullmatch(MODEL_NAME_PATTERN, model_name):
    raise errors.UserError(
        f"--model_name={model_name} is not a folder name TF Serving accepts: "
        f"use letters, digits, '.', '_' and '-', starting with a letter or "
        f"digit")
  if os.path.exists(export_dir) and not os.path.isdir(export_dir):
    raise errors.UserError(f"--export_dir={export_dir} is a file: pass a "
                           f"folder")
  model_root = os.path.join(export_dir, model_name)
  files.check_writable(model_root, "--export_dir")
  info = datasets.get(dataset, data_dir=data_dir, tfds_data_dir=tfds_data_dir,
                      image_size=image_size)
  model = _with_shapes(classifier.wrap(model, input_scale=input_scale), info)
  step_size = epsilon / 4 if step_size is None else step_size

  test_images, test_labels = _take(
      "test split", *datasets.load_split(
          dataset, "test", data_dir, tfds_data_dir, image_size=image_size,
          memory_budget=memory_budget),
      eval_examples, "eval_examples")
  representative = None
  if "int8" in tflite_variants:
    train_images, train_labels = datasets.load_split(
        dataset, "train", data_dir, tfds_data_dir, image_size=image_size,
        memory_budget=memory_budget)
    # Calibrate on the images the model trained on, never its validation
    # split or the test images it is evaluated on.
    (train_images, _), _ = data.validation_split(
        train_images, train_labels, val_size)
    if representative_examples > len(train_images):
      raise errors.UserError(
          f"--representative_examples={representative_examples} exceeds the "
          f"{len(train_images)} training images: pass at most "
          f"{len(train_images)}")
    picked = np.random.default_rng(seed).choice(
        len(train_images), representative_examples, replace=False)
    representative = datasets.in_memory(
        train_images[np.sort(picked)]).astype(np.float32) / 255.0

  spec = pgd.pgd(epsilon, step_size, pgd_steps, bn_mode="eval")
  print(f"crafting the adversarial evaluation set: PGD-{pgd_steps}, eps "
        f"{epsilon:g}, step {step_size:g}, {len(test_images)} test images",
        flush=True)
  adv_images, clean_logits, adv_logits = adversarial_set(
      model, test_images, test_labels, spec, batch_size, seed, progress)
  eval_set = {"clean_images": test_images,
              "adv_images": adv_images.astype(np.float32),
              "labels": test_labels.astype(np.int32),
              "clean_logits": clean_logits, "adv_logits": adv_logits,
              "epsilon": np.float64(epsilon),
              "step_size": np.float64(step_size),
              "pgd_steps": np.int32(pgd_steps)}

  os.makedirs(model_root, exist_ok=True)
  for name in remove_stale_exports(model_root):
    print(f"removed {os.path.join(model_root, name)}, left by an export that "
          f"was killed", flush=True)
  temp_dir = tempfile.mkdtemp(prefix=TEMP_PREFIX, dir=model_root)
  with open(os.path.join(temp_dir, OWNER_FILE), "w", encoding="utf-8") as f:
    f.write(f"{socket.gethostname()} {os.getpid()}\n")
  # mkdtemp makes the folder private; the published version must be readable
  # by the serving process like any other folder the user creates.
  umask = os.umask(0)
  os.umask(umask)
  os.chmod(temp_dir, 0o777 & ~umask)
  try:
    manifest = _write_artifacts(
        temp_dir, model, info, eval_set, tflite_variants, representative,
        batch_size, max_image_pixels)
    manifest.update({
        "model_name": model_name,
        "source": dict(source or {"dataset": dataset}),
        "input_scale": float(input_scale),
        "seed": seed,
        "versions": {"tensorflow": tf.__version__,
                     "keras": keras.__version__},
    })
    files.write_json(os.path.join(temp_dir, MANIFEST_FILE), manifest)
    _, path = publish(temp_dir, model_root)
  except BaseException:
    shutil.rmtree(temp_dir, ignore_errors=True)
    raise
  return path, manifest


def _with_shapes(model, info):
  """``model``, checked against the dataset, with the shapes serving reads.

  A function declares no input or output shape; once ``classifier.check``
  has run it on the dataset's images, they are known.
  """
  classifier.check(model, info.image_shape, info.num_classes, info.name)
  if isinstance(model, classifier.Classifier):
    model.input_shape = (None, *info.image_shape)
    model.output_shape = (None, info.num_classes)
  return model


def _export_source(flag_values):
  """Exports the --model of the flags; returns ``(version_path, manifest)``."""
  values = {name: flag_values[name].value for name in (
      "model", "signature", "dataset", "data_dir", "tfds_data_dir",
      "image_size", "input_scale")}
  classifier.refuse_checkpoint_choice(values["model"], flag_values.which)
  if flag_values.epsilon is None:
    raise errors.UserError(
        f"--model={values['model']} has no run whose radius the adversarial "
        f"set could use: pass --epsilon, e.g. --epsilon=0.03")
  name = flag_values.model_name or _default_name(values["model"])
  model, spec = classifier.load_source(values)
  return export_model(
      model, flag_values.export_dir, dataset=spec.name, model_name=name,
      epsilon=flag_values.epsilon, step_size=flag_values.step_size,
      input_scale=values["input_scale"],
      source={"model": os.path.abspath(values["model"]),
              "signature": values["signature"],
              "description": model.description, "dataset": spec.name,
              "image_size": flag_values.image_size},
      data_dir=flag_values.data_dir, tfds_data_dir=flag_values.tfds_data_dir,
      image_size=flag_values.image_size, **_options(flag_values))


def _options(flag_values):
  """The ``export_model`` arguments that both kinds of source share."""
  variants = [] if flag_values.tflite == ["none"] else flag_values.tflite
  return {"tflite_variants": tuple(variants),
          "representative_examples": flag_values.representative_examples,
          "eval_examples": flag_values.eval_examples,
          "pgd_steps": flag_values.pgd_steps,
          "batch_size": flag_values.batch_size, "seed": flag_values.seed,
          "progress": progress_lib.from_flag(flag_values.progress),
          "max_image_pixels": flag_values.max_image_pixels}


def _default_name(path):
  """The model folder name of --model=PATH: its file or folder name."""
  name = os.path.basename(os.path.normpath(path))
  if name.endswith(".keras"):
    name = name[:-len(".keras")]
  if not re.fullmatch(MODEL_NAME_PATTERN, name):
    raise errors.UserError(
        f"the name of --model={path} is not a folder name TF Serving "
        f"accepts: pass --model_name")
  return name


def _write_artifacts(out_dir, model, info, eval_set, tflite_variants,
                     representative, batch_size, max_image_pixels):
  """Writes the SavedModel, TFLite files and evaluation set; checks each."""
  try:
    serving.save(model, info.class_names, out_dir, max_image_pixels)
  except AssertionError as e:
    if "untracked" not in str(e):
      raise
    # A bare function's variables are not known to the wrapper, so the
    # SavedModel cannot hold them.
    raise errors.UserError(
        "the model is a function that reads variables the export cannot "
        "reach: pass the keras.Model (or SavedModel signature) itself"
    ) from None
  clean = eval_set["clean_images"].astype(np.float32) / 255.0
  diff = saved_model_max_diff(
      out_dir, _batches(clean, batch_size) + _batches(
          eval_set["adv_images"], batch_size),
      np.concatenate([eval_set["clean_logits"], eval_set["adv_logits"]]))
  if diff > SAVED_MODEL_TOLERANCE:
    raise RuntimeError(f"the reloaded SavedModel's logits differ from the "
                       f"Keras model's by {diff:.3g} (> "
                       f"{SAVED_MODEL_TOLERANCE:g}); the export is broken")

  edge_dir = os.path.join(out_dir, EDGE_DIR)
  os.makedirs(edge_dir)
  eval_set_path = os.path.join(edge_dir, EVAL_SET_FILE)
  np.savez_compressed(eval_set_path, **eval_set)
  labels = eval_set["labels"]
  manifest = {
      "signatures": {
          serving.IMAGES_SIGNATURE: {
              "inputs": {serving.IMAGES_INPUT: {
                  "dtype": "float32", "shape": [-1, *info.image_shape]}},
              "outputs": list(serving.OUTPUTS)},
          serving.BYTES_SIGNATURE: {
              "inputs": {serving.BYTES_INPUT: {"dtype": "string",
                                               "shape": [-1]}},
              "outputs": list(serving.OUTPUTS)}},
      "saved_model_max_abs_logit_diff": diff,
      "eval_set": {
          "file": f"{EDGE_DIR}/{EVAL_SET_FILE}",
          "sha256": edge_eval.sha256(eval_set_path),
          "examples": int(len(labels)),
          "epsilon": float(eval_set["epsilon"]),
          "step_size": float(eval_set["step_size"]),
          "pgd_steps": int(eval_set["pgd_steps"]),
          "bn_mode": "eval",
          "keras_clean_accuracy": float(np.mean(
              eval_set["clean_logits"].argmax(-1) == labels)),
          "keras_adv_accuracy": float(np.mean(
              eval_set["adv_logits"].argmax(-1) == labels))},
      "representative_examples": (0 if representative is None
                                  else int(len(representative))),
      "tflite": {},
  }
  for variant in tflite_variants:
    print(f"converting to TFLite {variant}", flush=True)
    file_name = f"{EDGE_DIR}/{variant}.tflite"
    path = os.path.join(out_dir, file_name)
    with open(path, "wb") as f:
      f.write(tflite.convert(model, variant, representative))
    report = edge_eval.evaluate(
        edge_eval.Classifier(path, num_threads=os.cpu_count() or 1),
        eval_set, latency_runs=0)
    report["model"] = file_name
    manifest["tflite"][variant] = {"file": file_name,
                                   "bytes": os.path.getsize(path),
                                   "sha256": edge_eval.sha256(path),
                                   "evaluation": report}
  return manifest


def format_summary(path, manifest):
  """A short report of an export: where it went and how each artifact fares."""
  eval_set = manifest["eval_set"]
  lines = [
      f"exported {path}",
      f"  SavedModel signatures: {serving.IMAGES_SIGNATURE} "
      f"({serving.IMAGES_INPUT}), {serving.BYTES_SIGNATURE} "
      f"({serving.BYTES_INPUT}); max |logit diff| from Keras "
      f"{manifest['saved_model_max_abs_logit_diff']:.3g}",
      f"  evaluation set: {eval_set['examples']} test images, PGD-"
      f"{eval_set['pgd_steps']} eps {eval_set['epsilon']:g} on the float "
      f"model",
  ]
  header = (f"  {'artifact':<13}{'KiB':>9}{'clean acc':>11}{'adv acc':>9}"
            f"{'agree clean':>13}{'agree adv':>11}{'max |dlogit|':>14}")
  lines += [header,
            f"  {'keras':<13}{'':>9}{eval_set['keras_clean_accuracy']:>11.4f}"
            f"{eval_set['keras_adv_accuracy']:>9.4f}"]
  for variant, entry in manifest["tflite"].items():
    r = entry["evaluation"]
    lines.append(
        f"  {variant:<13}{entry['bytes'] / 1024:>9.1f}"
        f"{r['clean_accuracy']:>11.4f}{r['adv_accuracy']:>9.4f}"
        f"{r['clean_agreement']:>13.4f}{r['adv_agreement']:>11.4f}"
        f"{r['max_abs_logit_diff']:>14.3g}")
  return "\n".join(lines)


def define_flags(flag_values=flags.FLAGS):
  """Defines the command-line flags; called only when run as a program.

  Library users and tests import this module without defining them, so they
  cannot clash with another entry point's flags of the same name.

  Args:
    flag_values: the ``absl.flags.FlagValues`` to define them in.
  """
  fv = {"flag_values": flag_values}
  classifier.define_source_flags(flag_values, __name__, "export")
  flags.DEFINE_string("export_dir", None, "TF Serving base folder; the model "
                      "goes to <export_dir>/<model_name>/<version>/.", **fv)
  flags.DEFINE_enum("which", "last", ("last", "best"), "Checkpoint to export.",
                    **fv)
  flags.DEFINE_string("model_name", None, "Model folder name (default: "
                      "<dataset>_<method> of the run; the file or folder "
                      "name of a --model).", **fv)
  flags.DEFINE_list("tflite", list(tflite.VARIANTS), "TFLite variants to "
                    f"convert, from {', '.join(tflite.VARIANTS)}; 'none' for "
                    "none.", **fv)
  flags.DEFINE_integer("representative_examples",
                       DEFAULT_REPRESENTATIVE_EXAMPLES, "Training images "
                       "that calibrate the full-integer int8 variant.",
                       lower_bound=1, **fv)
  flags.DEFINE_integer("eval_examples", DEFAULT_EVAL_EXAMPLES, "Test images "
                       "(the first ones) in the edge evaluation set.",
                       lower_bound=1, **fv)
  flags.DEFINE_float("epsilon", None, "L-inf radius of the adversarial "
                     "evaluation set, in (0, 1] (default: the run's; "
                     "required with --model).", **fv)
  flags.DEFINE_float("step_size", None, "PGD step, in (0, 1] (default: the "
                     "run's; epsilon / 4 with --model).", **fv)
  flags.DEFINE_integer("pgd_steps", DEFAULT_PGD_STEPS, "PGD steps of the "
                       "adversarial evaluation set.", lower_bound=1, **fv)
  flags.DEFINE_integer("batch_size", DEFAULT_BATCH_SIZE, "Images per batch "
                       "in the attack and the checks.", lower_bound=1, **fv)
  flags.DEFINE_integer("seed", 0, "Seed of the attack's random starts and of "
                       "the calibration sample.", lower_bound=0, **fv)
  flags.DEFINE_bool("progress", None, progress_lib.FLAG_HELP, **fv)
  flags.DEFINE_integer("max_image_pixels", serving.DEFAULT_MAX_IMAGE_PIXELS,
                       "Largest width x height the serving_bytes signature "
                       "decodes; larger images are refused from their header.",
                       lower_bound=1, **fv)
  flags.mark_flag_as_required("export_dir", **fv)
  choices = set(tflite.VARIANTS)
  flags.register_validator(
      "tflite", lambda v: v == ["none"] or (
          bool(v) and set(v) <= choices and len(set(v)) == len(v)),
      message=f"--tflite must list distinct variants from "
      f"{', '.join(tflite.VARIANTS)}, or be 'none'", **fv)
  runs.register_radius_validators(flag_values)


def main(flag_values=flags.FLAGS):
  """Runs the export that the parsed flags describe.

  Args:
    flag_values: the parsed ``absl.flags.FlagValues``.

  Raises:
    errors.UserError: bad input (see ``export``).
  """
  if flag_values.model is None:
    classifier.refuse_source_flags(
        {name: flag_values[name].value
         for name in ("dataset", "signature", "image_size", "input_scale")})
    path, manifest = export(
        flag_values.model_dir, flag_values.export_dir,
        which=flag_values.which, model_name=flag_values.model_name,
        epsilon=flag_values.epsilon, step_size=flag_values.step_size,
        data_dir=flag_values.data_dir,
        tfds_data_dir=flag_values.tfds_data_dir, **_options(flag_values))
  else:
    path, manifest = _export_source(flag_values)
  print(format_summary(path, manifest))


if __name__ == "__main__":
  cli.run_absl(main, define_flags)
