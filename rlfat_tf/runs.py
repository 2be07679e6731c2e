"""A training run on disk: its record, its model and its checkpoints.

``rlfat_tf.train`` writes ``run.json``, the ``RunRecord`` of every resolved
training setting, into the run folder together with the run's first
checkpoint, so a run that fails before it saves anything is not tied to its
settings. Evaluation and export read the record back to rebuild the same
model and restore its weights. A folder is one run by what it holds, the
record and the checkpoints, not by its path: it may be moved, copied or
spelled another way and still resume.

Runs written before the record existed hold ``flags.json`` (the raw flags)
instead; it is converted when read.
"""

import dataclasses
import json
import math
import os
import types
import typing

from absl import flags
import tensorflow as tf

from rlfat_tf import cli
from rlfat_tf import datasets
from rlfat_tf import errors
from rlfat_tf import files
from rlfat_tf import models

SCHEMA_VERSION = 4
RECORD_FILE = "run.json"
LEGACY_FLAGS_FILE = "flags.json"

# Settings that flags.json files written before their flags existed ran with.
_LEGACY_DEFAULTS = {"strategy": "default", "cpu_devices": 1, "tpu": None,
                    "sync_batch_norm": False, "mixed_precision": "float32"}
# The settings each schema version added, with the value every run written
# before them ran with; an older record is read with these filled in.
_ADDED = {2: {"train_size": None, "monitor_examples": 0},
          3: {"model": "wrn", "model_path": None, "model_weights": None},
          4: {"image_size": None,
              "memory_budget_gib": datasets.MEMORY_BUDGET / 2**30}}
_MAY_CHANGE = "may_change_on_resume"


def _may_change():
  """Marks a setting that a resumed run may change (see ``check_resume``)."""
  return dataclasses.field(metadata={_MAY_CHANGE: True})


@dataclasses.dataclass(frozen=True, kw_only=True)
class RunRecord:
  """Every resolved setting of a training run, as ``run.json`` holds it.

  Each setting is the ``rlfat_tf.train`` flag of the same name after its
  per-dataset and per-method default is filled in; ``python -m
  rlfat_tf.train --helpfull`` describes them. The run folder is not a
  setting: it is where the record is.

  A resumed run may change how long it trains (``train_steps``), the learning
  rate and its schedule, how often it validates, checkpoints and logs, how
  many images it monitors, and the hardware and speed settings (strategy,
  devices, XLA, precision, determinism, where the data is read from and the
  memory budget over which it streams).
  Every other setting, the model among them, shapes what the checkpoints
  hold and must stay the same (``check_resume``).

  ``model`` names the family in ``rlfat_tf.models``; the settings of the
  other families are None (``depth`` and ``width`` are the WideResNet's,
  ``model_path`` and ``model_weights`` the Keras file's).
  """
  dataset: str
  data_dir: str | None = _may_change()
  tfds_data_dir: str | None = _may_change()
  image_size: int | None
  memory_budget_gib: float = _may_change()
  val_size: int
  train_size: int | None
  flip: bool
  pad_crop: int
  model: str
  depth: int | None
  width: int | None
  model_path: str | None
  model_weights: str | None
  method: str
  epsilon: float
  step_size: float
  attack_steps: int
  attack_bn_mode: str
  trades_beta: float
  eta: float | None
  rbs_blocks: int
  rbs_granularity: str
  batch_size: int
  train_steps: int = _may_change()
  optimizer: str
  learning_rate: float = _may_change()
  momentum: float
  weight_decay: float
  lr_boundaries: tuple[int, ...] = _may_change()
  lr_decay: float = _may_change()
  steps_per_loop: int = _may_change()
  checkpoint_every: int = _may_change()
  keep_checkpoints: int = _may_change()
  eval_every: int = _may_change()
  monitor_examples: int = _may_change()
  seed: int
  deterministic: bool = _may_change()
  # None: neither --progress nor --noprogress (``progress.from_flag``). Older
  # records hold true or false and read as before; code older than this
  # default refuses a null here, and only a resume with such code would
  # meet one, so the schema version stays.
  progress: bool | None = _may_change()
  strategy: str = _may_change()
  cpu_devices: int = _may_change()
  tpu: str | None = _may_change()
  sync_batch_norm: bool = _may_change()
  mixed_precision: str = _may_change()
  jit_compile: bool = _may_change()
  schema_version: int = SCHEMA_VERSION

  @classmethod
  def may_change(cls):
    """Names of the settings that a resumed run may change."""
    return frozenset(f.name for f in dataclasses.fields(cls)
                     if f.metadata.get(_MAY_CHANGE))

  def to_json(self):
    """The record as a JSON object (tuples become lists)."""
    return {k: list(v) if isinstance(v, tuple) else v
            for k, v in dataclasses.asdict(self).items()}

  @classmethod
  def from_json(cls, content, source):
    """Checks a JSON object and makes it a record.

    Args:
      content: the parsed ``run.json``.
      source: the file it came from, for messages.

    Raises:
      errors.UserError: a setting is missing, unknown or of the wrong type,
        or the schema version is not this one.
    """
    fix = "restore the file from a copy, or train into a new --model_dir"
    if not isinstance(content, dict):
      raise errors.UserError(f"{source} does not hold a JSON object: {fix}")
    version = content.get("schema_version")
    if version not in range(1, SCHEMA_VERSION + 1) or isinstance(version,
                                                                 bool):
      raise errors.UserError(
          f"{source} has schema_version {version!r}, but this version reads "
          f"1 to {SCHEMA_VERSION}: {fix}")
    for added in range(version + 1, SCHEMA_VERSION + 1):
      content = {**_ADDED[added], **content}
    content["schema_version"] = SCHEMA_VERSION
    names = {f.name: f.type for f in dataclasses.fields(cls)}
    unknown = sorted(set(content) - set(names))
    if unknown:
      raise errors.UserError(
          f"{source} has the unknown setting {unknown[0]!r}: {fix}")
    values = {}
    for name, kind in names.items():
      if name not in content:
        raise errors.UserError(f"{source} lacks the setting {name!r}: {fix}")
      try:
        values[name] = _typed(content[name], kind)
      except TypeError:
        raise errors.UserError(
            f"{source} has {name} = {content[name]!r}, not {_describe(kind)}: "
            f"{fix}") from None
    return cls(**values)


def _typed(value, kind):
  """``value`` as the record type ``kind``; TypeError if it is not one."""
  if isinstance(kind, types.UnionType):
    if value is None and type(None) in typing.get_args(kind):
      return None
    (kind,) = [k for k in typing.get_args(kind) if k is not type(None)]
  if typing.get_origin(kind) is tuple:
    if not isinstance(value, list):
      raise TypeError(value)
    return tuple(_typed(v, typing.get_args(kind)[0]) for v in value)
  if isinstance(value, bool) != (kind is bool):
    raise TypeError(value)
  if kind is float and isinstance(value, int):
    return float(value)
  if not isinstance(value, kind):
    raise TypeError(value)
  return value


def _describe(kind):
  if isinstance(kind, types.UnionType):
    inner = [k for k in typing.get_args(kind) if k is not type(None)][0]
    return f"{_describe(inner)} or null"
  if typing.get_origin(kind) is tuple:
    item = _describe(typing.get_args(kind)[0]).split(" ", 1)[1]
    return f"a list of {item}s"
  return {bool: "true or false", int: "an integer", float: "a number",
          str: "a string"}[kind]


def read_json(path):
  """A run file's JSON content; errors.UserError naming a damaged file."""
  try:
    with tf.io.gfile.GFile(path) as f:
      return json.load(f)
  except json.JSONDecodeError as e:
    raise errors.UserError(
        f"{path} is not valid JSON (line {e.lineno}: {e.msg}): restore it "
        f"from a copy, or train into a new --model_dir") from None
  except UnicodeDecodeError:
    raise errors.UserError(
        f"{path} is not UTF-8 text: restore it from a copy, or train into a "
        f"new --model_dir") from None


def load_record(model_dir):
  """The record of the run in ``model_dir``.

  Reads ``run.json``, or converts the ``flags.json`` of an older run.

  Raises:
    errors.UserError: the folder holds no run, or its record is malformed.
  """
  path = os.path.join(model_dir, RECORD_FILE)
  if tf.io.gfile.exists(path):
    return RunRecord.from_json(read_json(path), path)
  legacy = os.path.join(model_dir, LEGACY_FLAGS_FILE)
  if tf.io.gfile.exists(legacy):
    content = read_json(legacy)
    if isinstance(content, dict):
      # The raw flags also held the folder, which is no setting, and lack the
      # version and the flags added after them.
      content = {**_LEGACY_DEFAULTS, **content, "schema_version": 1}
      content.pop("model_dir", None)
    return RunRecord.from_json(content, legacy)
  raise errors.UserError(
      f"{model_dir} holds no training run ({RECORD_FILE} is missing): pass "
      f"the --model_dir given to rlfat_tf.train")


def save_record(model_dir, record):
  """Writes ``run.json`` atomically."""
  tf.io.gfile.makedirs(model_dir)
  files.write_json(os.path.join(model_dir, RECORD_FILE), record.to_json())


def _flag_text(value):
  if isinstance(value, tuple):
    return ",".join(str(v) for v in value)
  return "unset" if value is None else str(value)


def changed_setting(previous, record, may_differ):
  """The first setting that ``record`` changes, of those that must not.

  Args:
    previous, record: ``RunRecord``s, the run's as trained and as now asked.
    may_differ: names of the settings that may differ.

  Returns:
    ``(name, old text, new text)`` in flag syntax, or None when none differs.
  """
  fixed = set(may_differ) | {"schema_version"}
  for field in dataclasses.fields(RunRecord):
    old, new = getattr(previous, field.name), getattr(record, field.name)
    if field.name not in fixed and old != new:
      return field.name, _flag_text(old), _flag_text(new)
  return None


def check_resume(model_dir, record):
  """Refuses to resume the run in ``model_dir`` with a setting it may not change.

  A folder is bound to its record only once it holds a checkpoint: a run
  that stopped before its first checkpoint (bad flags, a divergence, out of
  memory) leaves nothing to resume, and the next run starts afresh.

  Args:
    model_dir: the run folder.
    record: the ``RunRecord`` of the run about to start.

  Raises:
    errors.UserError: a setting that may not change differs; the message
      names it with its old and new value.
  """
  if not has_checkpoint(model_dir):
    return
  changed = changed_setting(load_record(model_dir), record,
                            RunRecord.may_change())
  if changed:
    name, old, new = changed
    raise errors.UserError(
        f"{model_dir} holds a run trained with --{name}={old}, not {new}: "
        f"pass the same value to resume it, or a new --model_dir")


def model_settings(record):
  """The settings of the record's model family, by name (``models.get``)."""
  return {name: getattr(record, name)
          for name in models.get(record.model).settings}


def architecture(record):
  """The run's architecture as reports name it, e.g. "WRN-34-10".

  Raises:
    errors.UserError: the record names no registered model (an edited
      record).
  """
  return models.describe(record.model, model_settings(record))


def dataset_spec(record, data_dir=None, tfds_data_dir=None):
  """The ``datasets.DatasetSpec`` of a run's dataset, at its image size.

  Args:
    record: the run's ``RunRecord``.
    data_dir, tfds_data_dir: where the data is now, overriding the record's
      folders; None keeps the record's.

  Raises:
    errors.UserError: the dataset cannot be read there (a ``folder``
      dataset is scanned, a ``tfds:`` one read from its builder).
  """
  return datasets.get(record.dataset,
                      data_dir=data_dir or record.data_dir,
                      tfds_data_dir=tfds_data_dir or record.tfds_data_dir,
                      image_size=record.image_size)


def load_split(record, split, data_dir=None, tfds_data_dir=None):
  """One split of a run's dataset (``datasets.load_split``), as it trained.

  The images come at the run's ``image_size``, streamed when they exceed
  its memory budget.

  Args:
    record: the run's ``RunRecord``.
    split: "train" or "test".
    data_dir, tfds_data_dir: where the data is now, overriding the record's
      folders; None keeps the record's.

  Raises:
    errors.UserError: see ``datasets.load_split``.
  """
  return datasets.load_split(
      record.dataset, split, data_dir or record.data_dir,
      tfds_data_dir or record.tfds_data_dir, image_size=record.image_size,
      memory_budget=memory_budget(record))


def memory_budget(record):
  """The run's memory budget in bytes (``datasets.load_split``)."""
  return int(record.memory_budget_gib * 2**30)


def build_model(record, sync_batch_norm=False, data_dir=None,
                tfds_data_dir=None):
  """The (untrained) model of a run with this ``RunRecord``.

  Args:
    record: the run's ``RunRecord``.
    sync_batch_norm: synchronise BatchNorm statistics across replicas.
    data_dir, tfds_data_dir: where the data is now (``dataset_spec``), which
      gives a ``folder`` or ``tfds:`` dataset's shape and classes.

  Raises:
    errors.UserError: the record describes no model that can be built (an
      edited record, a Keras model file gone since training, or data that
      cannot be read).
  """
  info = dataset_spec(record, data_dir, tfds_data_dir)
  return models.build(record.model, num_classes=info.num_classes,
                      image_shape=info.image_shape,
                      sync_batch_norm=sync_batch_norm,
                      **model_settings(record))


def check_batch_memory(record, memory_bytes):
  """Refuses a batch whose activations alone exceed the memory there is.

  A training step holds at least the model's largest activation for the
  whole (per-device) batch at once, in fact several; a batch past even that
  bound would otherwise grow tf.data's buffers until TensorFlow reports
  running out of memory, or the kernel kills the process with no message.

  Args:
    record: the run's ``RunRecord``.
    memory_bytes: the memory the batch's replicas share (a CPU host's RAM).

  Raises:
    errors.UserError: naming --batch_size, the bound and the memory.
  """
  model = build_model(record)
  per_image = max(math.prod(layer.output.shape[1:]) for layer in model.layers)
  item = 4 if record.mixed_precision == "float32" else 2
  need = per_image * item * record.batch_size
  if need > memory_bytes:
    raise errors.UserError(
        f"--batch_size={record.batch_size} cannot fit in memory: the largest "
        f"activation of {architecture(record)} alone takes "
        f"{need / 2**30:,.1f} GiB for the batch, and there are "
        f"{memory_bytes / 2**30:,.1f} GiB: use a smaller --batch_size (the "
        f"paper's is 32)")


_FOLDERS = {"last": "checkpoints", "best": "best"}


def remove_partial_checkpoints(model_dir):
  """Deletes the ``*_temp`` folders of checkpoint saves that did not finish.

  ``tf.train.CheckpointManager`` writes a checkpoint into ``<prefix>_temp/``
  and renames its files only once they are complete, so such a folder is
  never part of an intact checkpoint: a save that failed (a full disk) or
  was killed left it.

  Returns:
    The folders removed.
  """
  removed = []
  for folder in _FOLDERS.values():
    for path in sorted(tf.io.gfile.glob(
        os.path.join(model_dir, folder, "*_temp"))):
      if tf.io.gfile.isdir(path):
        tf.io.gfile.rmtree(path)
        removed.append(path)
  return removed


def checkpoint_number(prefix):
  """The number that ends a checkpoint prefix (``ckpt-12``), or None."""
  tail = prefix.rsplit("-", 1)[-1]
  return int(tail) if tail.isdigit() else None


def _listed_checkpoints(folder):
  """Checkpoint prefixes in ``folder``, oldest first, intact or not.

  Both the ``checkpoint`` state file and the files on disk name them, so a
  checkpoint whose ``.index`` or data file was deleted, or a folder whose
  state file was, still shows what it held.
  """
  prefixes = set()
  state = None
  try:
    state = tf.train.get_checkpoint_state(folder)
  except (tf.errors.OpError, ValueError):
    # A damaged state file: the files on disk still name the checkpoints.
    pass
  if state is not None:
    prefixes.update(
        os.path.join(folder, os.path.basename(p))
        for p in state.all_model_checkpoint_paths)
  for pattern, marker in (("*.index", ".index"), ("*.data-*", ".data-")):
    for name in tf.io.gfile.glob(os.path.join(folder, pattern)):
      prefixes.add(name[:name.rindex(marker)])
  return sorted((p for p in prefixes if checkpoint_number(p) is not None),
                key=checkpoint_number)


def checkpoint_damage(prefix):
  """Why the checkpoint ``prefix`` cannot be restored, or None if intact.

  Reads every tensor, which checks that the ``.index`` and data files exist,
  hold every byte they list and match their checksums.
  """
  if not tf.io.gfile.exists(prefix + ".index"):
    return "its .index file is missing"
  try:
    reader = tf.train.load_checkpoint(prefix)
    for name, dtype in reader.get_variable_to_dtype_map().items():
      # An input iterator's state (older checkpoints) has no array form and
      # is never restored.
      if dtype != tf.variant:
        reader.get_tensor(name)
  except (tf.errors.OpError, IndexError, ValueError) as e:
    return errors.first_line(e)
  return None


def has_checkpoint(model_dir):
  """Whether ``model_dir`` holds a last checkpoint, intact or not."""
  return bool(_listed_checkpoints(os.path.join(model_dir, "checkpoints")))


def checkpoint_path(model_dir, which="last", required=True):
  """Path of the run's newest intact last or best checkpoint.

  A newer checkpoint that is damaged (a file missing, truncated or failing
  its checksum) is skipped with one ``warning:`` line on stderr naming it and
  the checkpoint used instead, so training resumes, and evaluation and export
  read, the newest checkpoint that can be restored.

  Args:
    model_dir: the run folder.
    which: "last" or "best".
    required: raise when there is no checkpoint at all (else return None).

  Raises:
    errors.UserError: there is no such checkpoint and one is required, or
      every checkpoint there is damaged.
  """
  folder = os.path.join(model_dir, _FOLDERS[which])
  listed = _listed_checkpoints(folder)
  if not listed:
    if not required:
      return None
    hint = ("train with --val_size > 0 to keep a best checkpoint"
            if which == "best" else "train first, or check --model_dir")
    raise errors.UserError(f"{model_dir} has no {which} checkpoint: {hint}")
  damaged = []
  for prefix in reversed(listed):
    reason = checkpoint_damage(prefix)
    if reason is None:
      for bad, why in damaged:
        cli.warn(f"{bad} is damaged ({why}); using {prefix} instead")
      return prefix
    damaged.append((prefix, reason))
  bad, why = damaged[0]
  raise errors.UserError(
      f"every {which} checkpoint in {folder} is damaged (the newest, {bad}: "
      f"{why}): restore the folder from a copy, or train into a new "
      f"--model_dir")


def restore_model(model_dir, which="last", *, data_dir=None,
                  tfds_data_dir=None):
  """Rebuilds a run's model and restores its weights.

  Args:
    model_dir: the run folder.
    which: "last" or "best" checkpoint.
    data_dir, tfds_data_dir: where the run's data is now, overriding its
      record's folders (see ``dataset_spec``).

  Returns:
    ``(model, record, checkpoint_path)``: the model, its ``RunRecord`` and
    the checkpoint restored (the newest intact one, see
    ``checkpoint_path``).

  Raises:
    errors.UserError: no intact checkpoint, or one that holds another
      architecture than the record describes.
  """
  record = load_record(model_dir)
  model = build_model(record, data_dir=data_dir, tfds_data_dir=tfds_data_dir)
  path = checkpoint_path(model_dir, which)
  try:
    status = tf.train.Checkpoint(model=model).restore(path)
    # Every model variable must come from the checkpoint; the optimizer and
    # iterator it also holds are not needed here.
    status.assert_existing_objects_matched().expect_partial()
  except (AssertionError, ValueError) as e:
    raise errors.UserError(
        f"{path} does not hold the {architecture(record)} that "
        f"the record of {model_dir} describes ({errors.first_line(e)}): "
        f"restore its {RECORD_FILE} from a copy") from None
  return model, record, path


def register_radius_validators(flag_values, names=("epsilon", "step_size")):
  """Makes the named float flags accept only values in (0, 1] (or unset).

  Attack radii and steps are in pixel units of [0, 1] images; the message
  says so, since 8 (for 8/255) is the usual mistake.
  """
  for name in names:
    flags.register_validator(
        name, lambda v: v is None or 0.0 < v <= 1.0,
        message=f"--{name} must be in (0, 1] (images are in [0, 1]; e.g. "
        f"0.03 for 7.65/255)", flag_values=flag_values)

