r"""Trains a robust classifier with RLFAT, PGDAT, TRADES or an RBSAT ablation.

Examples:
  python -m rlfat_tf.train --flagfile=flags/smoke.cfg --model_dir=/tmp/smoke
  python -m rlfat_tf.train --dataset=stl10 --method=rlfat_t \
      --model_dir=runs/stl10_rlfat_t
  python -m rlfat_tf.train --dataset=cifar10 --data_dir=../shared/data \
      --method=rlfat_p --depth=16 --width=2 --model_dir=runs/c10
  # Another architecture: PreAct ResNet-18, or one saved as a .keras file:
  python -m rlfat_tf.train --dataset=cifar10 --model=preact_resnet18 \
      --model_dir=runs/c10_preact
  python -m rlfat_tf.train --model=keras --model_path=net.keras \
      --model_dir=runs/net
  # Any tensorflow-datasets image dataset, or a folder of class folders:
  python -m rlfat_tf.train --dataset=tfds:mnist --model=preact_resnet18 \
      --model_dir=runs/mnist
  python -m rlfat_tf.train --dataset=folder --data_dir=pets --image_size=64 \
      --model_dir=runs/pets
  # All local GPUs, cross-replica BatchNorm, bfloat16 compute:
  python -m rlfat_tf.train --flagfile=flags/cifar10_rlfat_p.cfg \
      --strategy=mirrored --sync_batch_norm --mixed_precision=mixed_bfloat16 \
      --model_dir=runs/c10_rlfat_p
  # One process per machine, each with its own TF_CONFIG task:
  TF_CONFIG='{"cluster": {"worker": ["host1:2222", "host2:2222"]},
              "task": {"type": "worker", "index": 0}}' \
  python -m rlfat_tf.train --strategy=multi_worker --model_dir=/shared/run

Running again with the same --model_dir resumes from its last checkpoint.
--train_steps may grow; the learning rate and its schedule, the validation,
checkpoint and logging cadence and the hardware and speed flags may change;
the other training flags must stay the same (``runs.RunRecord``). Under --strategy=multi_worker, --model_dir
must be a folder every worker reads (e.g. a bucket or a network file system):
the chief writes there and every worker resumes from the chief's checkpoint.
"""

import contextlib
import dataclasses
import math
import os
import signal
import sys
import warnings

from absl import flags

# Before TensorFlow loads: keep its C++ start-up chatter off the console.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import tensorflow as tf

from rlfat_tf import classifier
from rlfat_tf import cli
from rlfat_tf import data
from rlfat_tf import datasets
from rlfat_tf import errors
from rlfat_tf import files
from rlfat_tf import models
from rlfat_tf import methods
from rlfat_tf import preemption
from rlfat_tf import progress
from rlfat_tf import runlock
from rlfat_tf import runs
from rlfat_tf import strategies
from rlfat_tf import trainer


def _weight_defaults(weight):
  """Help text: each method's default of a weight, e.g. "0.5 for rlfat_p"."""
  return ", ".join(f"{methods.METHODS[m].weights[weight]:g} for {m}"
                   for m in methods.with_weight(weight))

def _per_dataset(key):
  """A flag's official default on each dataset, for its help text."""
  return ", ".join(
      f"{getattr(datasets.get(name).defaults, key):,} on {name}"
      for name in datasets.NAMES)


def define_flags(flag_values=flags.FLAGS):
  """Defines the command's flags in ``flag_values``; ``__main__`` calls it.

  Defining them on import would clash with the other entry points' flags of
  the same names when several are imported into one process (tests).
  """
  fv = {"flag_values": flag_values}
  # Data.
  classifier.define_dataset_flags(
      flag_values, __name__, default="cifar10_sample",
      what="Dataset to train on (cifar10_sample: a 4,000/1,000-image CIFAR-10 "
      "sample embedded in the package, no download)")
  flags.DEFINE_float("memory_budget_gib", datasets.MEMORY_BUDGET / 2**30,
                     "GiB a split's decoded images may take in memory; a "
                     "larger folder or array_record tensorflow-datasets "
                     "split is streamed from its files instead.",
                     lower_bound=1e-9, **fv)
  flags.DEFINE_integer("val_size", 0, "Training examples held out for "
                       "validation and best-checkpoint selection (0: none, as "
                       "in the paper).", lower_bound=0, **fv)
  flags.DEFINE_integer("train_size", None, "Train on only the first N "
                       "training images left after --val_size (default: all "
                       "of them); a study of generalization varies it.",
                       lower_bound=1, **fv)
  flags.DEFINE_bool("flip", True, "Random horizontal flips (official code).",
                    **fv)
  flags.DEFINE_integer("pad_crop", 0, "Zero-pad by this many pixels and crop "
                       "back at random (0: off, as in the official code).",
                       lower_bound=0, **fv)

  # Model.
  flags.DEFINE_enum("model", models.DEFAULT, models.NAMES,
                    "Architecture: " + "; ".join(
                        f"{name}: {models.get(name).display_name}"
                        for name in models.NAMES) + ".", **fv)
  flags.DEFINE_integer("depth", None, "WRN depth 6n+4, with --model=wrn "
                       f"(default: {_per_dataset('depth')}).", lower_bound=10,
                       **fv)
  flags.DEFINE_integer("width", None, "WRN widening factor, with --model=wrn "
                       f"(default: {_per_dataset('width')}).", lower_bound=1,
                       **fv)
  flags.DEFINE_string("model_path", None, "With --model=keras (required): the "
                      ".keras file (model.save(...)) of the architecture to "
                      "train; it must take the dataset's images in [0, 1] "
                      "and output one logit per class.", **fv)
  flags.DEFINE_enum("model_weights", None, models.keras_file.WEIGHTS,
                    "With --model=keras: start from re-initialised weights "
                    "(scratch, the default) or from those saved in "
                    "--model_path (saved).", **fv)

  # Method and attack.
  flags.DEFINE_enum("method", "rlfat_p", tuple(methods.METHODS),
                    "Training method.", **fv)
  flags.DEFINE_float("epsilon", 0.03, "L-inf radius of the training attack, "
                     "in (0, 1].", **fv)
  flags.DEFINE_float("step_size", 0.0075, "Step of the training attack, in "
                     "(0, 1].", **fv)
  flags.DEFINE_integer("attack_steps", None, "Steps of the training attack "
                       f"(default: {_per_dataset('attack_steps')}).",
                       lower_bound=1, **fv)
  flags.DEFINE_enum("attack_bn_mode", "train", ("train", "eval"),
                    "BatchNorm mode of the model while the training attack "
                    "runs (train: the official code; eval: TRADES's code).",
                    **fv)
  flags.DEFINE_float("trades_beta", None, "Weight of the KL term (default: "
                     f"{_weight_defaults('beta')}).", lower_bound=0.0, **fv)
  flags.DEFINE_float("eta", None, "Weight of the transfer term (default: "
                     f"{_weight_defaults('eta')}).", lower_bound=0.0, **fv)
  flags.DEFINE_integer("rbs_blocks", 2, "Random Block Shuffle blocks per "
                       "axis.", lower_bound=1, **fv)
  flags.DEFINE_enum("rbs_granularity", "batch", ("batch", "example"),
                    "One RBS per batch (official code) or per example "
                    "(paper text).", **fv)

  # Optimisation.
  flags.DEFINE_integer("batch_size", 32, "Global batch size.", lower_bound=1,
                       **fv)
  flags.DEFINE_integer("train_steps", None, "Optimizer steps (default: "
                       f"{_per_dataset('train_steps')}).", lower_bound=1, **fv)
  flags.DEFINE_enum("optimizer", "adam", ("adam", "sgd"), "Optimizer.", **fv)
  flags.DEFINE_float("learning_rate", 1e-3, "Initial learning rate.",
                     lower_bound=0.0, **fv)
  flags.DEFINE_float("momentum", 0.9, "SGD momentum.", lower_bound=0.0,
                     upper_bound=1.0, **fv)
  flags.DEFINE_float("weight_decay", 0.0, "Decoupled weight decay (0: none, "
                     "as in the official code).", lower_bound=0.0, **fv)
  flags.DEFINE_list("lr_boundaries", [], "Steps at which the learning rate is "
                    "multiplied by --lr_decay, e.g. 40000,60000.", **fv)
  flags.DEFINE_float("lr_decay", 0.1, "Learning-rate factor at each boundary.",
                     lower_bound=0.0, **fv)

  # Loop, checkpoints, logging.
  flags.DEFINE_string("model_dir", None, "Run folder: checkpoints, summaries, "
                      "run.json, metrics.json.", **fv)
  flags.DEFINE_integer("steps_per_loop", 100, "Steps per call of the compiled "
                       "loop.", lower_bound=1, **fv)
  flags.DEFINE_integer("checkpoint_every", 1000, "Steps between checkpoints.",
                       lower_bound=1, **fv)
  flags.DEFINE_integer("keep_checkpoints", 3, "Recent checkpoints kept.",
                       lower_bound=1, **fv)
  flags.DEFINE_integer("eval_every", None, "Steps between validations "
                       "(default: --checkpoint_every).", lower_bound=1, **fv)
  flags.DEFINE_integer("monitor_examples", 0, "At every validation step "
                       "(--eval_every), also measure clean accuracy and the "
                       "validation PGD accuracy on the first N images the run "
                       "trains on (train_subset/*) and the first N test images "
                       "(test_subset/*): the generalization gap as training "
                       "goes (0: off).", lower_bound=0, **fv)
  flags.DEFINE_integer("seed", 0, "Seed of initialisation, data order, "
                       "augmentation, attack starts and RBS.", lower_bound=0,
                       **fv)
  flags.DEFINE_bool("deterministic", False, "Turn on TensorFlow op determinism "
                    "(bit-exact reruns and resumes on CPU; slower).", **fv)
  flags.DEFINE_bool("progress", None, progress.FLAG_HELP, **fv)

  # Devices and speed.
  flags.DEFINE_enum("strategy", "default", strategies.NAMES,
                    "tf.distribute strategy: default (one device), mirrored "
                    "(all local GPUs, or --cpu_devices logical CPUs), "
                    "multi_worker (the cluster in TF_CONFIG) or tpu.", **fv)
  flags.DEFINE_integer("cpu_devices", 1, "Split the CPU into this many logical "
                       "devices for --strategy=mirrored on a machine without "
                       "GPUs (to run multi-replica training anywhere; not "
                       "faster).", lower_bound=1, **fv)
  flags.DEFINE_string("tpu", None, "TPU name or grpc:// address for "
                      "--strategy=tpu, or 'local' on a TPU VM (default: found "
                      "from the Cloud TPU environment).", **fv)
  flags.DEFINE_bool("sync_batch_norm", False, "Normalise with batch statistics "
                    "summed across replicas, so a batch split across devices "
                    "is normalised as one batch.", **fv)
  flags.DEFINE_enum("mixed_precision", "float32", trainer.PRECISIONS,
                    "Compute dtype policy of the model (variables, logits, "
                    "losses and the attack's gradient sign stay float32).",
                    **fv)
  flags.DEFINE_bool("jit_compile", False, "Compile each step's attack, forward "
                    "and backward passes with XLA.", **fv)

  flags.mark_flag_as_required("model_dir", **fv)
  runs.register_radius_validators(flag_values)
  flags.register_validator(
      "lr_boundaries", lambda v: all(s.isdigit() and int(s) > 0 for s in v) and
      [int(s) for s in v] == sorted({int(s) for s in v}),
      message="--lr_boundaries must be increasing positive step numbers, e.g. "
      "40000,60000", **fv)


def parsed_values(flag_values=flags.FLAGS):
  """The parsed values of the flags ``define_flags`` defined, by name."""
  return cli.module_values(__name__, flag_values)


def values_from_argv(argv):
  """Parses a command line into a run folder and record, outside ``__main__``.

  Args:
    argv: the command line, program name first.

  Returns:
    ``(model_dir, record)``: the --model_dir and the ``resolve_flags`` record.
  """
  values = parsed_values(cli.parse_argv(define_flags, argv))
  return values["model_dir"], resolve_flags(values)


def resolve_flags(values):
  """Fills per-dataset and per-method defaults and checks flag combinations.

  Args:
    values: dict of flag values as parsed.

  Returns:
    The ``runs.RunRecord`` of every setting (all but --model_dir).

  Raises:
    errors.UserError: flags that contradict each other.
  """
  out = dict(values)
  del out["model_dir"]
  if not math.isfinite(out["learning_rate"]):
    raise errors.UserError(
        f"--learning_rate={out['learning_rate']} is not a finite number: "
        f"pass e.g. 0.001")
  if out["dataset"] == datasets.FOLDER and out["data_dir"] and (
      "://" not in out["data_dir"]):
    # The folder is the data itself: the run resumes, evaluates and exports
    # from any working directory.
    out["data_dir"] = os.path.abspath(out["data_dir"])
  # Reading the spec also checks, before anything runs, that the data is
  # there: a folder is scanned, a tfds: dataset's builder opened.
  defaults = dataclasses.asdict(datasets.get(
      out["dataset"], data_dir=out["data_dir"],
      tfds_data_dir=out["tfds_data_dir"],
      image_size=out["image_size"]).defaults)
  if out["model"] != "wrn":
    # The dataset's depth and width are the WideResNet's: no other model
    # records them.
    del defaults["depth"], defaults["width"]
  for key, default in defaults.items():
    if out[key] is None:
      out[key] = default
  if out["model_path"] and "://" not in out["model_path"]:
    # The run resumes, evaluates and exports from any working directory.
    out["model_path"] = os.path.abspath(out["model_path"])
  out.update(models.resolve(out["model"], {
      name: out[name] for name in models.SETTINGS}))
  method = methods.get(out["method"])
  if out["eta"] is not None and "eta" not in method.weights:
    raise errors.UserError(
        f"--eta has no effect with --method={method.name}, which has no "
        f"transfer term: drop --eta or use "
        f"{' / '.join(methods.with_weight('eta'))}")
  # A method records the weights it does not read at these values too, as
  # every run has so far: a run resumes only with the same flags.
  for flag, weight, unused in (("trades_beta", "beta", methods.TRADES_BETA),
                               ("eta", "eta", 0.0)):
    if out[flag] is None:
      out[flag] = method.weights.get(weight, unused)
  if out["eval_every"] is None:
    out["eval_every"] = out["checkpoint_every"]
  out["lr_boundaries"] = tuple(int(s) for s in out["lr_boundaries"])
  if out["model"] == "wrn":
    try:
      models.units_per_stage(out["depth"])
    except ValueError:
      raise errors.UserError(
          f"--depth={out['depth']} is not a WideResNet depth: use 6n+4, "
          f"e.g. 10, 16, 28, 34 or 40") from None
  if out["cpu_devices"] > 1 and out["strategy"] != "mirrored":
    raise errors.UserError(
        f"--cpu_devices={out['cpu_devices']} only applies to "
        f"--strategy=mirrored: add it, or drop --cpu_devices")
  if out["tpu"] and out["strategy"] != "tpu":
    raise errors.UserError(
        "--tpu only applies to --strategy=tpu: add it, or drop --tpu")
  if out["step_size"] > out["epsilon"] * 2 + 1e-12:
    raise errors.UserError(
        f"--step_size={out['step_size']} exceeds twice --epsilon="
        f"{out['epsilon']}: each step would leave the ball; use a smaller "
        f"step (official: 0.0075 for 0.03)")
  return runs.RunRecord(**out)


def train_config(record):
  """The ``trainer.TrainConfig`` of a run: the record's settings it names."""
  return trainer.TrainConfig(**{
      f.name: getattr(record, f.name)
      for f in dataclasses.fields(trainer.TrainConfig)})


def training_split(record, images, labels):
  """The images a run trains on and those it validates on.

  Args:
    record: the run's ``runs.RunRecord`` (``val_size``, ``train_size``).
    images, labels: the dataset's whole training split.

  Returns:
    ``((train_images, train_labels), (val_images, val_labels))``: the
    ``data.validation_split`` of ``val_size`` images, and of the rest the
    first ``train_size`` (all when None).

  Raises:
    errors.UserError: either size leaves no training data or exceeds it.
  """
  if record.val_size >= len(images):
    raise errors.UserError(
        f"--val_size={record.val_size} leaves no training data "
        f"({len(images)} examples): use a smaller --val_size")
  (images, labels), val = data.validation_split(images, labels,
                                                record.val_size)
  if record.train_size is not None:
    if record.train_size > len(images):
      raise errors.UserError(
          f"--train_size={record.train_size} exceeds the {len(images)} "
          f"training images left after --val_size={record.val_size}: pass "
          f"at most {len(images)}")
    images, labels = images[:record.train_size], labels[:record.train_size]
  return (images, labels), val


def build_trainer(model_dir, record, watcher=None):
  """Sets up devices, data and the trainer of a run.

  The chief writes the record (``run.json``) just before the run's first
  checkpoint, so a run that fails earlier leaves the folder free.

  Args:
    model_dir: the run folder.
    record: the run's ``runs.RunRecord`` (``resolve_flags``).
    watcher: a ``preemption.PreemptionWatcher`` whose request, agreed across
      workers, stops training at the next loop boundary; None never stops.

  Returns:
    A ``trainer.Trainer``, not yet restored.

  Raises:
    errors.UserError: flags that cannot work here, or that the run in
      ``model_dir`` may not change.
  """
  runs.check_resume(model_dir, record)
  # Devices and the cluster must be set up before TensorFlow runs any op.
  if record.cpu_devices > 1:
    strategies.split_cpu(record.cpu_devices)
  strategy = strategies.create(record.strategy, record.tpu)
  strategies.check_batch_size(record.batch_size, strategy)
  if strategies.on_cpu(strategy):
    # Before the seed is set: the model built to measure is discarded.
    runs.check_batch_memory(record, os.sysconf("SC_PAGE_SIZE") *
                            os.sysconf("SC_PHYS_PAGES"))
  if record.deterministic:
    tf.config.experimental.enable_op_determinism()
  keras.utils.set_random_seed(record.seed)

  (images, labels), (val_images, val_labels) = training_split(
      record, *runs.load_split(record, "train"))
  monitored = {}
  if record.monitor_examples:
    test_images, test_labels = runs.load_split(record, "test")
    for name, split, (x, y) in (
        ("train_subset", "train", (images, labels)),
        ("test_subset", "test", (test_images, test_labels))):
      if record.monitor_examples > len(x):
        raise errors.UserError(
            f"--monitor_examples={record.monitor_examples} exceeds the "
            f"{len(x)} images of the {split} set: pass at most {len(x)}")
      monitored[name] = (x[:record.monitor_examples],
                         y[:record.monitor_examples])

  config = train_config(record)
  augmentation = data.Augmentation(flip=record.flip, pad_crop=record.pad_crop)
  rbs_blocks = record.rbs_blocks if config.method_spec.uses_rbs else None

  train_input_fn = data.train_input_fn(
      images, labels, batch_size=config.batch_size, seed=record.seed,
      augmentation=augmentation, rbs_blocks=rbs_blocks,
      rbs_granularity=record.rbs_granularity)

  def eval_input_fn(images, labels):
    return lambda input_context: data.eval_dataset(
        images, labels, batch_size=config.batch_size, seed=record.seed,
        input_context=input_context)

  return trainer.Trainer(
      config,
      lambda: runs.build_model(record, sync_batch_norm=record.sync_batch_norm),
      train_input_fn, model_dir, strategy=strategy,
      val_input_fn=(eval_input_fn(val_images, val_labels) if len(val_images)
                    else None),
      monitor_input_fns={name: eval_input_fn(*split)
                         for name, split in monitored.items()},
      verbose=progress.from_flag(record.progress),
      before_first_save=lambda: runs.save_record(model_dir, record),
      **({"stop_requested": lambda: preemption.any_requested(
          strategy, watcher.requested)} if watcher else {}))


def run(model_dir, record):
  """Trains (or resumes) the run; returns the final metrics.

  The chief holds the run folder's lock (``runlock``) from before it reads
  the folder to resume until training ends, so a second trainer on the same
  folder is refused. SIGTERM or Ctrl-C (SIGINT) saves a checkpoint at the
  next loop boundary; a second Ctrl-C ends the process at once
  (``preemption``).

  Raises:
    errors.UserError: bad input; an unwritable --model_dir; a folder another
      trainer holds; no intact checkpoint to resume; running out of memory
      (named by --batch_size) or of disk space (named by the file).
    preemption.Stopped: SIGTERM or SIGINT stopped training after a
      checkpoint.
  """
  files.check_writable(model_dir, "--model_dir")
  with preemption.PreemptionWatcher() as watcher:
    runner = build_trainer(model_dir, record, watcher)
    lock = (runlock.RunLock(model_dir) if runner.is_chief
            else contextlib.nullcontext())
    with lock:
      # Again under the lock: another trainer may have written the folder
      # since the first look.
      runs.check_resume(model_dir, record)
      if runner.is_chief:
        for path in runs.remove_partial_checkpoints(model_dir):
          print(f"removed {path}, left by a checkpoint save that did not "
                f"finish", flush=True)
      restored = runner.restore()
      if restored:
        print(f"resuming from {restored} (step {runner.step})", flush=True)
      try:
        result = runner.train()
      except (tf.errors.OpError, OSError, MemoryError) as e:
        failure = _training_failure(e, model_dir, record, runner.is_chief)
        raise failure from None
  # The checkpoint this run just wrote: no need to read it back to check it.
  checkpoint = runner.checkpoints.latest
  if result.preempted:
    # A worker that was not signalled itself stops because another was.
    raise preemption.Stopped(watcher.received or signal.SIGTERM,
                             f"at step {result.step}",
                             f"the checkpoint {checkpoint}")
  print(f"trained to step {runner.step}; last checkpoint: {checkpoint}",
        flush=True)
  return result.metrics


def _training_failure(error, model_dir, record, is_chief):
  """The one-line error of a resource that ran out while training.

  A write the storage refused (TensorFlow reports a full disk as
  ResourceExhaustedError) is named as such, and the half-written checkpoint
  it leaves is removed; running out of memory names --batch_size. Any other
  error is returned as it is.
  """
  intact = "the checkpoints on disk are intact"
  failure = files.write_failure(error)
  if failure is not None:
    if is_chief:
      runs.remove_partial_checkpoints(model_dir)
    reason, path = failure
    return errors.UserError(
        f"{reason} while writing {path or model_dir}: free space or use "
        f"another --model_dir; {intact}")
  if isinstance(error, (tf.errors.ResourceExhaustedError, MemoryError)):
    return errors.UserError(
        f"{type(error).__name__}: TensorFlow ran out of memory at "
        f"--batch_size={record.batch_size}: use a smaller --batch_size, "
        f"or more devices with --strategy=mirrored; {intact}")
  return error


def main():
  """Trains as the parsed flags say (``python -m rlfat_tf.train``)."""
  if not flags.FLAGS["verbosity"].present:
    # tf.distribute reads dataset options while tracing, which tf.data warns
    # about on every multi-replica run although nothing is lost.
    warnings.filterwarnings(
        "ignore", message="To make it possible to preserve tf.data options")
  values = parsed_values()
  try:
    run(values["model_dir"], resolve_flags(values))
  except preemption.Stopped as e:
    print(e, file=sys.stderr, flush=True)
    return e.status


if __name__ == "__main__":
  cli.run_absl(main, define_flags)
