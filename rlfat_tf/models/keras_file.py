"""An architecture the user saved as a ``.keras`` file (``model.save(...)``).

The model is rebuilt from the file's configuration, so every run owns fresh
variables, and starts either re-initialised by its layers' initialisers
(``model_weights="scratch"``: train the architecture from scratch) or from
the weights saved in the file (``"saved"``: fine-tune them). It must be a
functional or Sequential model with one image input of the dataset's shape
and one output of a logit per class; it receives float32 images in [0, 1],
as every model here does, so a model that expects other pixel values must
hold its own rescaling layer. Its layers keep the dtype policy they were
saved with: mixed precision does not change them.

The module is not called ``keras``: an attribute ``keras`` of the package
(which importing a submodule ``keras`` sets) would stand for the package
``keras`` in code that imports both.
"""

import os

import keras

from rlfat_tf import errors

WEIGHTS = ("scratch", "saved")
_FIX_FILE = "pass --model_path=a .keras file written by model.save(...)"


def _load(model_path):
  """The saved model; errors.UserError naming a missing or unreadable file."""
  if not model_path.endswith(".keras"):
    raise errors.UserError(
        f"--model_path={model_path} is not a .keras file: {_FIX_FILE}")
  try:
    return keras.saving.load_model(model_path, compile=False)
  # A missing, damaged or foreign file fails in zipfile, h5py, json or Keras.
  except Exception as e:  # pylint: disable=broad-except
    raise errors.UserError(
        f"cannot read the Keras model {model_path} ({errors.first_line(e)}): "
        f"{_FIX_FILE}") from None


def _check_fits(model, model_path, num_classes, image_shape):
  """Refuses a model whose input or output does not fit the dataset."""
  # A subclassed model declares no inputs, so neither its shapes can be
  # checked nor its layers rebuilt one by one.
  if not getattr(model, "inputs", None):
    raise errors.UserError(
        f"{model_path} holds a subclassed model, with no declared input: "
        f"save a functional or Sequential model built on keras.Input(...)")
  if len(model.inputs) != 1 or len(model.outputs) != 1:
    raise errors.UserError(
        f"{model_path} has {len(model.inputs)} inputs and "
        f"{len(model.outputs)} outputs: save a model with one image input "
        f"and one logits output")
  shape = tuple(model.inputs[0].shape[1:])
  wanted = tuple(image_shape)
  if len(shape) != len(wanted) or any(
      d is not None and d != w for d, w in zip(shape, wanted)):
    raise errors.UserError(
        f"{model_path} takes inputs of shape {shape}, but the dataset's "
        f"images are {wanted}: save the model with keras.Input({wanted}) "
        f"or pick the --dataset it was built for")
  out = tuple(model.outputs[0].shape[1:])
  if out != (num_classes,):
    raise errors.UserError(
        f"{model_path} outputs shape {out} per image, but the dataset has "
        f"{num_classes} classes: end the model with {num_classes} logits "
        f"(keras.layers.Dense({num_classes}))")
  last = model.layers[-1]
  if (isinstance(last, keras.layers.Softmax) or
      last.get_config().get("activation") in ("softmax", "sigmoid")):
    raise errors.UserError(
        f"{model_path} ends in a {last.name} layer with a probability "
        f"output: save it without the final softmax (the training losses "
        f"take logits)")


def _rebuild(model, sync_batch_norm):
  """A copy of ``model`` with new, initialised variables."""

  def clone(layer):
    config = layer.get_config()
    if sync_batch_norm and isinstance(layer,
                                      keras.layers.BatchNormalization):
      config["synchronized"] = True
    return layer.__class__.from_config(config)

  return keras.models.clone_model(model, clone_function=clone,
                                  recursive=True)


def build(*, model_path, model_weights, num_classes, image_shape,
          sync_batch_norm=False):
  """The model saved in ``model_path``, checked against the dataset.

  Args:
    model_path: the ``.keras`` file.
    model_weights: "scratch" (re-initialised) or "saved" (the file's
      weights).
    num_classes: the dataset's number of classes.
    image_shape: (H, W, C) of its images.
    sync_batch_norm: make every BatchNorm layer use cross-replica batch
      statistics.

  Returns:
    A new ``keras.Model`` of the saved architecture.

  Raises:
    errors.UserError: an unknown ``model_weights``; the file is missing,
      unreadable or holds a subclassed model; its input, output or final
      activation does not fit the dataset.
  """
  if model_weights not in WEIGHTS:
    raise errors.UserError(
        f"--model_weights={model_weights} is not one of "
        f"{', '.join(WEIGHTS)}: pass one of them")
  saved = _load(model_path)
  _check_fits(saved, model_path, num_classes, image_shape)
  model = _rebuild(saved, sync_batch_norm)
  if model_weights == "saved":
    model.set_weights(saved.get_weights())
  return model


def describe(*, model_path, model_weights):
  """The architecture's name in reports, e.g. "Keras model file net.keras"."""
  del model_weights  # The same architecture either way.
  return f"Keras model file {os.path.basename(model_path)}"
