"""Any model as the classifier the attacks and the evaluation call.

The attacks call a model as ``model(images, training=False)`` on float32
[B, H, W, C] images in [0, 1] and read float32 logits. A ``keras.Model``
does that already; ``wrap`` makes the rest do it too: a SavedModel signature
(the project's own exports, or any other), a plain function, or a model
that expects pixels in [0, 255] (``input_scale=255``, which multiplies the
images before the call, inside the attacks' gradient). ``load`` reads a
``.keras`` file or a SavedModel folder, and ``check`` refuses a model that
does not fit a dataset before any attack runs, with one line that names the
problem and the fix.
"""

import os
import sys

from absl import flags
import keras
import numpy as np
import tensorflow as tf

from rlfat_tf import datasets
from rlfat_tf import errors
from rlfat_tf import integrity

# The SavedModel signature TensorFlow Serving calls by default.
DEFAULT_SIGNATURE = "serving_default"
# The output a signature's logits are read from when it has several.
LOGITS_OUTPUT = "logits"
# Images of the probe ``check`` runs: enough rows for the softmax test.
_PROBE_IMAGES = 4


class Classifier:
  """A callable mapping float32 images in [0, 1] to float32 logits.

  Attributes:
    description: what it wraps, for results files ("SavedModel PATH,
      signature serving_default", say).
    input_scale: the factor the images are multiplied by before the call.
    input_shape: (None, H, W, C) when the wrapped model declares it, else
      None.
    output_shape: (None, K) when the wrapped model declares it, else None.
  """

  def __init__(self, function, *, input_scale=1.0, variables=(),
               description="function", input_shape=None, output_shape=None):
    """Wraps ``function``.

    Args:
      function: maps a float32 [B, H, W, C] tensor to logits [B, K]; if it
        takes a ``training`` argument, it gets ``training=False``.
      input_scale: multiplies the images before ``function`` sees them (255
        for a model that expects pixels in [0, 255]).
      variables: the variables ``function`` reads (the evaluation checks
        that none of them changes).
      description: what ``function`` is, for results files.
      input_shape: (None, H, W, C) if known.
      output_shape: (None, K) if known.
    """
    self._function = function
    self.input_scale = float(input_scale)
    self._variables = list(variables)
    self.description = description
    self.input_shape = input_shape
    self.output_shape = output_shape

  @property
  def variables(self):
    """The variables the wrapped model reads."""
    return self._variables

  def __call__(self, images, training=False):
    """Logits of ``images``; ``training`` must be False (evaluation only)."""
    if training:
      raise ValueError("a wrapped classifier runs in inference mode only")
    images = tf.convert_to_tensor(images, tf.float32)
    if self.input_scale != 1.0:
      images = images * self.input_scale
    return tf.cast(self._function(images), tf.float32)



def _preferred_or_only(names, preferred, message):
  """``preferred`` if among ``names``, else the only name, else ``message``."""
  if preferred in names:
    return preferred
  if len(names) == 1:
    only, = names
    return only
  raise errors.UserError(message)


def _signature_function(function, name):
  """A signature as a function of one image tensor returning logits."""
  args, inputs = function.structured_input_signature
  # A loaded SavedModel's signatures take keywords; a concrete function of
  # one's own tf.function may take its image positionally.
  if not inputs and len(args) == 1:
    inputs = {None: args[0]}
  if len(inputs) != 1:
    raise errors.UserError(
        f"signature {name!r} takes {len(inputs)} inputs "
        f"({', '.join(sorted(inputs))}), not one image tensor: pass "
        f"--signature naming a signature of images")
  (input_name, spec), = inputs.items()
  if spec.dtype != tf.float32:
    raise errors.UserError(
        f"signature {name!r} takes {spec.dtype.name} {input_name!r}, not "
        f"float32 images: pass --signature naming a signature of float "
        f"images")
  outputs = function.structured_outputs

  def call(x):
    return function(x) if input_name is None else function(**{input_name: x})

  if isinstance(outputs, dict):
    key = _preferred_or_only(
        outputs, LOGITS_OUTPUT,
        f"signature {name!r} has the outputs {', '.join(sorted(outputs))} "
        f"and none is called {LOGITS_OUTPUT!r}: export the model with one "
        f"logits output")
    return (lambda x: call(x)[key]), spec.shape, outputs[key].shape
  return call, spec.shape, outputs.shape


def wrap(model, *, input_scale=1.0):
  """``model`` as a callable of the attacks' interface.

  Args:
    model: a ``keras.Model``; a SavedModel signature (a concrete function of
      one float32 image input whose output is the logits, or a dict of
      outputs with a ``logits`` entry or only one); or any function of
      float32 images to logits.
    input_scale: the factor the model's inputs are scaled by (255 for a model
      that expects [0, 255] pixels); images stay in [0, 1] for the attacks.

  Returns:
    ``model`` itself when it is a ``keras.Model`` and ``input_scale`` is 1,
    else a ``Classifier``.
  """
  if isinstance(model, Classifier):
    return model
  if isinstance(model, keras.Model):
    if input_scale == 1.0:
      return model
    return Classifier(lambda x: model(x, training=False),
                      input_scale=input_scale, variables=model.variables,
                      description=f"Keras model {model.name}",
                      input_shape=tuple(model.input_shape),
                      output_shape=tuple(model.output_shape))
  if hasattr(model, "structured_input_signature"):
    function, shape, out_shape = _signature_function(model, "the signature")
    return Classifier(function, input_scale=input_scale,
                      variables=model.variables,
                      description="SavedModel signature",
                      input_shape=tuple(shape),
                      output_shape=tuple(out_shape))
  if callable(model):
    return Classifier(model, input_scale=input_scale,
                      description=getattr(model, "__name__", "function"))
  raise TypeError(f"cannot evaluate a {type(model).__name__}: pass a "
                  f"keras.Model, a SavedModel signature or a function")


def load(path, *, signature=None, input_scale=1.0):
  """Reads a model saved as a ``.keras`` file or a SavedModel folder.

  Args:
    path: a ``.keras`` file, or a folder holding ``saved_model.pb``.
    signature: the SavedModel signature to call; default ``serving_default``
      when there is one, else the only signature. Refused for ``.keras``
      files.
    input_scale: see ``wrap``.

  Returns:
    A callable of the attacks' interface (see ``wrap``) with
    ``description``, ``input_scale``, ``input_shape`` and ``output_shape``
    attributes.

  Raises:
    errors.UserError: the path is missing or unreadable, is neither kind of
      file, or names no usable signature.
  """
  fix = "pass --model=a .keras file or a SavedModel folder"
  if not tf.io.gfile.exists(path):
    raise errors.UserError(f"--model={path} does not exist: {fix}")
  if tf.io.gfile.isdir(path):
    if not tf.io.gfile.exists(os.path.join(path, "saved_model.pb")):
      raise errors.UserError(
          f"--model={path} is a folder without saved_model.pb, so not a "
          f"SavedModel: {fix}")
    return _load_saved_model(path, signature, input_scale)
  if not path.endswith(".keras"):
    raise errors.UserError(f"--model={path} is neither a .keras file nor a "
                           f"SavedModel folder: {fix}")
  if signature:
    raise errors.UserError(
        f"--signature={signature} applies to SavedModels, and {path} is a "
        f".keras file: drop --signature")
  try:
    model = keras.saving.load_model(path, compile=False)
  # A damaged or foreign file fails in zipfile, h5py, json or Keras itself.
  except Exception as e:  # pylint: disable=broad-except
    raise errors.UserError(
        f"cannot read the Keras model {path} ({errors.first_line(e)}): pass "
        f"a file written by model.save(...)") from None
  out = Classifier(lambda x: model(x, training=False),
                   input_scale=input_scale, variables=model.variables,
                   description=f"Keras file {path}",
                   input_shape=tuple(model.input_shape),
                   output_shape=tuple(model.output_shape))
  out.keras_model = model
  return out


def _load_saved_model(path, signature, input_scale):
  try:
    loaded = tf.saved_model.load(path)
  except Exception as e:  # pylint: disable=broad-except
    raise errors.UserError(
        f"cannot read the SavedModel {path} ({errors.first_line(e)}): pass a "
        f"folder written by tf.saved_model.save or model.export") from None
  names = sorted(loaded.signatures)
  if not names:
    raise errors.UserError(
        f"the SavedModel {path} has no signatures: export it with a "
        f"serving signature (model.export(path) writes serving_default)")
  if signature is None:
    signature = _preferred_or_only(
        names, DEFAULT_SIGNATURE,
        f"the SavedModel {path} has the signatures {', '.join(names)}: "
        f"pass --signature naming the one of images to logits")
  if signature not in names:
    raise errors.UserError(
        f"the SavedModel {path} has no signature {signature!r}: pass "
        f"--signature from {', '.join(names)}")
  function = loaded.signatures[signature]
  call, shape, out_shape = _signature_function(function, signature)
  out = Classifier(call, input_scale=input_scale,
                   variables=function.variables,
                   description=f"SavedModel {path}, signature {signature}",
                   input_shape=tuple(shape), output_shape=tuple(out_shape))
  # The loaded object owns the signature's variables: keep it alive.
  out.saved_model = loaded
  return out


def check(model, image_shape, num_classes, dataset):
  """Refuses a model that cannot be evaluated on a dataset.

  Runs the model once on a few random images of the dataset's shape.

  Args:
    model: a callable of the attacks' interface (see ``wrap``).
    image_shape: (H, W, C) of the dataset's images.
    num_classes: its number of classes.
    dataset: its name, for messages.

  Raises:
    errors.UserError: the model takes another input shape, has another
      number of outputs, fails on the images, or outputs probabilities or
      log-probabilities instead of logits.
  """
  declared = getattr(model, "input_shape", None)
  if declared is not None and len(declared) == 4:
    wanted = tuple(image_shape)
    if any(d is not None and d != w for d, w in zip(declared[1:], wanted)):
      raise errors.UserError(
          f"the model takes images of shape {tuple(declared[1:])}, but "
          f"{dataset} has {wanted}: pass the --dataset it was trained on "
          f"(or --image_size to resize its images)")
  probe = np.random.default_rng(0).uniform(
      size=(_PROBE_IMAGES, *image_shape)).astype(np.float32)
  try:
    logits = np.asarray(model(tf.constant(probe), training=False))
  except (tf.errors.InvalidArgumentError, ValueError, TypeError) as e:
    raise errors.UserError(
        f"the model fails on [{_PROBE_IMAGES}, "
        f"{', '.join(map(str, image_shape))}] float images in [0, 1] of "
        f"{dataset} ({errors.first_line(e)}): pass the --dataset it was "
        f"trained on") from None
  if logits.ndim != 2 or logits.shape[1] != num_classes:
    raise errors.UserError(
        f"the model outputs shape {tuple(logits.shape[1:])} per image, but "
        f"{dataset} has {num_classes} classes: pass the --dataset it was "
        f"trained on, or a model with {num_classes} logits")
  verdict = integrity.check_logits(logits)
  if not verdict["passed"]:
    # The check's detail starts "the model outputs probabilities, not
    # logits"; the fix differs for a model that is evaluated, not trained.
    raise errors.UserError(
        f"{verdict['detail'].split(':')[0]}: evaluate the model without its "
        f"final softmax (the attacks' losses need logits)")


def tf_variables(model):
  """The ``tf.Variable``s a model reads, for graphs that must track them.

  Keras 3 variables wrap tf.Variables (``.value``); a SavedModel signature's
  variables are tf.Variables already. A SavedModel or a TFLite conversion
  saves only the tf.Variables its object graph reaches directly.
  """
  return [v if isinstance(v, tf.Variable) else v.value
          for v in model.variables]


def define_source_flags(flag_values, module_name, command):
  """Defines the flags that name what a command reads: a run or a model.

  ``--model_dir`` (a run of ``rlfat_tf.train``) or ``--model`` (a ``.keras``
  file or SavedModel folder) with ``--signature``, ``--dataset`` and
  ``--input_scale``; exactly one of the two sources.

  Args:
    flag_values: the ``absl.flags.FlagValues`` to define them in.
    module_name: the command module's ``__name__`` ("__main__" when it runs
      as a program), which the flags belong to, as its own flags do
      (``cli.module_values`` reads them from there).
    command: the command's name ("evaluate", "export"), for the help texts.
  """
  # absl files the flags of a program's __main__ under its sys.argv[0], and
  # looks "__main__" up there too.
  if module_name == "__main__":
    module_name = sys.argv[0]
  fv = {"flag_values": flag_values, "module_name": module_name}
  flags.DEFINE_string("model_dir", None, "Run folder written by "
                      "rlfat_tf.train.", **fv)
  flags.DEFINE_string("model", None, f"Instead of --model_dir: a .keras file "
                      f"or a SavedModel folder (an export of this project or "
                      f"any other) mapping images in [0, 1] to logits, to "
                      f"{command} on --dataset.", **fv)
  flags.DEFINE_string("signature", None, "With a SavedModel --model: the "
                      "signature to call (default: serving_default, or the "
                      "only one).", **fv)
  define_dataset_flags(
      flag_values, module_name, default=None,
      what=f"With --model: the dataset to {command} on (a run's dataset and "
      f"--image_size come from its record)", run_default=True)
  flags.DEFINE_float("input_scale", 1.0, "With --model: multiply the [0, 1] "
                     "images by this before the model sees them (255 for a "
                     "model that expects [0, 255] pixels); attacks and "
                     "--epsilon stay in [0, 1] units.", lower_bound=1e-6,
                     **fv)
  flags.register_multi_flags_validator(
      ["model_dir", "model"],
      lambda v: (v["model_dir"] is None) != (v["model"] is None),
      message="pass either --model_dir=RUN (a run of rlfat_tf.train) or "
      "--model=PATH (a .keras file or a SavedModel), not both",
      flag_values=flag_values)


def define_dataset_flags(flag_values, module_name, *, default, what,
                         run_default=False):
  """Defines --dataset, --data_dir, --tfds_data_dir and --image_size.

  Args:
    flag_values: the ``absl.flags.FlagValues`` to define them in.
    module_name: the command module's ``__name__`` (see
      ``define_source_flags``).
    default: --dataset's default; None for none.
    what: the start of --dataset's help, e.g. "Dataset to train on".
    run_default: the folders default to a --model_dir run's.
  """
  if module_name == "__main__":
    module_name = sys.argv[0]
  fv = {"flag_values": flag_values, "module_name": module_name}
  own = " (default: the run's)" if run_default else ""
  flags.DEFINE_string("dataset", default, f"{what}: {datasets.NAME_HELP}.",
                      **fv)
  release_folders = ", ".join(f"{spec.release.folder}/" for spec in (
      datasets.get(name) for name in datasets.NAMES) if spec.release)
  flags.DEFINE_string("data_dir", None,
                      f"The folder holding train/<class>/ and test/<class>/ "
                      f"of --dataset={datasets.FOLDER}, or the folder of a "
                      f"registered dataset's official binary release "
                      f"({release_folders}){own}; without it, "
                      f"tensorflow-datasets loads a registered dataset.",
                      **fv)
  flags.DEFINE_string("tfds_data_dir", None, f"tensorflow-datasets data "
                      f"folder{own or ' (default: its own)'}.", **fv)
  flags.DEFINE_integer("image_size", None, "Resize every image to NxN "
                       "(default: the dataset's own size; required for a "
                       "dataset whose images vary in size).", lower_bound=1,
                       **fv)
  register_dataset_validator(flag_values, "dataset")


def register_dataset_validator(flag_values, name):
  """Makes flag ``name`` accept only dataset names (``datasets.check_name``).

  The flag may be unset (None); the message lists the forms of a name.
  """

  def known(value):
    if value is not None:
      try:
        datasets.check_name(value)
      except errors.UserError as e:
        raise flags.ValidationError(str(e)) from None
    return True

  flags.register_validator(name, known, flag_values=flag_values)


def refuse_source_flags(values):
  """Refuses the --model flags given with a --model_dir.

  Args:
    values: the command's flag values (see ``define_source_flags``).

  Raises:
    errors.UserError: --dataset, --signature, --image_size or --input_scale
      is set.
  """
  for name in ("dataset", "signature", "image_size"):
    if values[name] is not None:
      raise errors.UserError(
          f"--{name}={values[name]} applies to --model; a run's "
          f"{name} comes from its record: drop --{name}")
  if values["input_scale"] != 1.0:
    raise errors.UserError(
        f"--input_scale={values['input_scale']:g} applies to --model; a "
        f"run's model takes [0, 1] images: drop --input_scale")


def refuse_checkpoint_choice(model, which):
  """Refuses --which (a run's checkpoint) given --model=``model``.

  Raises:
    errors.UserError: ``which`` is not "last", the flag's default.
  """
  if which != "last":
    raise errors.UserError(
        f"--which={which} picks a run's checkpoint, and --model={model} is "
        f"one model: drop --which")


def load_source(values):
  """Loads --model and checks it against --dataset.

  Args:
    values: the command's flag values (see ``define_source_flags``).

  Returns:
    ``(model, spec)``: the loaded classifier (see ``load``) and the
    dataset's ``datasets.DatasetSpec``.

  Raises:
    errors.UserError: no --dataset, an unknown one, an unreadable model or
      one that does not fit the dataset (``check``).
  """
  path = values["model"]
  if values["dataset"] is None:
    raise errors.UserError(
        f"--model={path} needs the dataset its images come from: pass "
        f"--dataset, e.g. --dataset=cifar10")
  spec = datasets.get(values["dataset"], data_dir=values["data_dir"],
                      tfds_data_dir=values["tfds_data_dir"],
                      image_size=values["image_size"])
  model = load(path, signature=values["signature"],
               input_scale=values["input_scale"])
  check(model, spec.image_shape, spec.num_classes, spec.name)
  return model, spec
