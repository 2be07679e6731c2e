"""The registry of models: every architecture's name, settings and defaults.

One `ModelSpec` per family says what ``--model`` calls it, its display name,
the settings it takes (each the training flag and the ``runs.RunRecord``
field of the same name) and their defaults. Every command builds models
through here; the family modules hold the builders:
- ``wrn``: the Madry WideResNet of the official RLFAT code (``depth``,
  ``width``);
- ``preact_resnet18``: PreAct ResNet-18 of Rice et al. 2020 (no settings);
- ``keras_file``: an architecture saved as a ``.keras`` file
  (``model_path``, ``model_weights``).

Every model maps float32 images in [0, 1], input named "images" for the
built-in families, to float32 logits, with no normalisation inside. Every bad
name or setting raises `errors.UserError` with a one-line message that names
the problem and the fix.
"""

import dataclasses
from typing import Any, Callable, Mapping

import keras

from rlfat_tf import errors
from rlfat_tf.models import keras_file
from rlfat_tf.models import preact_resnet18
from rlfat_tf.models import wrn

# The WideResNet's own API, which predates the registry and which tests and
# tools still call directly.
ARCHITECTURES = wrn.ARCHITECTURES
units_per_stage = wrn.units_per_stage
wide_resnet = wrn.wide_resnet


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """Everything the code knows about one model family.

  Attributes:
    name: the ``--model`` value.
    display_name: the family's name in help texts, e.g. "WideResNet".
    settings: the settings it takes; those without a default are required.
    defaults: the default of each optional setting.
    builder: ``builder(num_classes=, image_shape=, sync_batch_norm=,
      **settings)`` returns the untrained ``keras.Model``.
    describer: ``describer(**settings)`` returns the architecture's name in
      reports, e.g. "WRN-34-10".
  """
  name: str
  display_name: str
  settings: tuple[str, ...]
  defaults: Mapping[str, Any]
  builder: Callable[..., keras.Model]
  describer: Callable[..., str]


# One entry per family; the first is the default of ``--model``.
_REGISTRY = {spec.name: spec for spec in (
    ModelSpec(
        name="wrn", display_name="WideResNet", settings=("depth", "width"),
        # The paper's CIFAR model; training fills in each dataset's own
        # (``datasets.TrainDefaults``).
        defaults={"depth": 34, "width": 10}, builder=wrn.build,
        describer=wrn.describe),
    ModelSpec(
        name="preact_resnet18", display_name="PreAct ResNet-18",
        settings=(), defaults={}, builder=preact_resnet18.build,
        describer=preact_resnet18.describe),
    ModelSpec(
        name="keras", display_name="Keras model file",
        settings=("model_path", "model_weights"),
        defaults={"model_weights": "scratch"}, builder=keras_file.build,
        describer=keras_file.describe),
)}

NAMES = tuple(_REGISTRY)
DEFAULT = NAMES[0]
# Every setting of any family, in registry order.
SETTINGS = tuple(dict.fromkeys(s for spec in _REGISTRY.values()
                               for s in spec.settings))


def get(name: str) -> ModelSpec:
  """Returns the spec of a registered model family.

  Raises:
    errors.UserError: the name is not registered.
  """
  return errors.lookup(_REGISTRY, name, "model")


def resolve(name: str, settings: Mapping[str, Any]) -> dict[str, Any]:
  """A family's settings with its defaults filled in.

  Args:
    name: one of `NAMES`.
    settings: the settings given; a None value counts as not given.

  Returns:
    Every setting of the family, by name.

  Raises:
    errors.UserError: an unknown name, a setting the family does not take,
      or a required one missing.
  """
  spec = get(name)
  given = {k: v for k, v in settings.items() if v is not None}
  for key in given:
    if key not in spec.settings:
      raise errors.UserError(
          f"--{key} does not apply to --model={name}: drop --{key}"
          + (f" (it takes --{', --'.join(spec.settings)})" if spec.settings
             else ""))
  resolved = {**spec.defaults, **given}
  for key in spec.settings:
    if key not in resolved:
      raise errors.UserError(
          f"--model={name} needs --{key}: pass --{key}")
  return resolved


def build(name: str, *, num_classes: int, image_shape: tuple[int, ...],
          sync_batch_norm: bool = False, **settings) -> keras.Model:
  """Builds an untrained model of a registered family.

  Args:
    name: one of `NAMES`.
    num_classes: number of logits.
    image_shape: (H, W, C) of the [0, 1] input images.
    sync_batch_norm: use cross-replica batch statistics under a
      ``tf.distribute`` strategy.
    **settings: the family's settings (see `get`); the rest take their
      defaults.

  Returns:
    A ``keras.Model`` mapping float32 images to float32 logits.

  Raises:
    errors.UserError: an unknown name or setting, a required setting
      missing, or a value the family cannot build.
  """
  return get(name).builder(num_classes=num_classes, image_shape=image_shape,
                           sync_batch_norm=sync_batch_norm,
                           **resolve(name, settings))


def describe(name: str, settings: Mapping[str, Any]) -> str:
  """The architecture's name in reports: "WRN-34-10", "PreAct ResNet-18",
  "Keras model file NAME.keras".

  Raises:
    errors.UserError: as `resolve`.
  """
  return get(name).describer(**resolve(name, settings))
