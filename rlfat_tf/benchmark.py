r"""Measures what a training step costs, and how close it runs to the machine.

For one architecture, batch and attack length it reports:
- training examples/second of every method, with XLA off and on, timed in
  interleaved rounds so that a change of machine load hits every
  configuration alike;
- each method's cost relative to the baseline of its framework
  (``methods.Method.framework``: rlfat_p / pgdat, rlfat_t / trades, ...), next to what the pass count, the forward-equivalent cost and the
  counted FLOPs predict;
- floating-point operations per step, counted from XLA's optimised HLO of the
  step (convolutions and matrix products, valid taps only, loops multiplied
  by their trip counts), checked against a hand count of the model's
  convolutions, and the FLOP/s the step achieves;
- the machine's peak for the same convolution shapes: every convolution of
  the model, forward and both backward products, at a large batch, timed
  with and without XLA;
- the input pipeline's throughput on its own.

It writes everything as JSON (--output) and prints a table. It is a
measurement, not a test: the numbers depend on the machine and its load,
which the JSON records.

Example (the table of docs/performance.md):
  python -m rlfat_tf.benchmark --output=benchmark.json

With --mode=evaluation it instead times APGD-CE against IBM ART's on a trained
run (``rlfat_tf.evalbench``; ART comes from scripts/install_art.sh):
  python -m rlfat_tf.benchmark --mode=evaluation --model_dir=runs/c10

With --mode=autoattack it runs the project's standard AutoAttack and the
reference's (pyautoattack, fra31/auto-attack) side by side on a trained run
and compares their per-component times and per-image verdicts
(``rlfat_tf.aabench``; the reference comes from
scripts/install_autoattack.sh). --batch_size is then the attacks' batch on
both sides, 100 unless given (its training default, 32, is not used):
  python -m rlfat_tf.benchmark --mode=autoattack \
      --model_dir=models/c10_wrn10-2_pgdat --data_dir=/work/shared/data \
      --num_examples=500 --output=results/benchmark_autoattack.json
"""

import os
import platform
import re
import statistics
import tempfile
import time

from absl import flags
from absl import logging

# Before TensorFlow loads: keep its C++ start-up chatter off the console.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import tensorflow as tf

from rlfat_tf import aabench
from rlfat_tf import classifier
from rlfat_tf import cli
from rlfat_tf import data
from rlfat_tf import datasets
from rlfat_tf import errors
from rlfat_tf import evalbench
from rlfat_tf import files
from rlfat_tf import models
from rlfat_tf import methods
from rlfat_tf import runs
from rlfat_tf import trainer
from rlfat_tf.attacks import losses

XLA_SETTINGS = ("off", "on")
MODES = ("training", "evaluation", "autoattack")
# Modes that attack a trained run (--model_dir).
RUN_MODES = ("evaluation", "autoattack")
# --batch_size of --mode=autoattack when the flag is not given.
AUTOATTACK_BATCH_SIZE = 100
# The flags of --mode=evaluation, as ``evalbench.run`` names its arguments.
EVALUATION_FLAGS = {"model_dir": "model_dir", "data_dir": "data_dir",
                    "num_examples": "num_examples", "epsilon": "epsilon",
                    "apgd_steps": "steps", "eval_batch_size": "batch_size",
                    "art_python": "art_python"}

FLAGS = flags.FLAGS


def define_flags(flag_values=FLAGS):
  """Defines the command's flags on ``flag_values``.

  Called only when the module runs as a program, so importing it defines no
  flag that could collide with another entry point's.
  """
  fv = {"flag_values": flag_values}
  classifier.define_dataset_flags(
      flag_values, __name__, default="cifar10_sample",
      what="Images to train on (the speed does not depend on them, only on "
      "their shape)")
  flags.DEFINE_integer("depth", 16, "WRN depth 6n+4.", lower_bound=10, **fv)
  flags.DEFINE_integer("width", 2, "WRN widening factor.", lower_bound=1,
                       **fv)
  flags.DEFINE_integer("batch_size", 32, "Training batch; autoattack: images "
                       f"per batch on both sides, {AUTOATTACK_BATCH_SIZE} "
                       "unless given.", lower_bound=1, **fv)
  flags.DEFINE_integer("attack_steps", 10, "Attack steps K.", lower_bound=1,
                       **fv)
  flags.DEFINE_list("methods", ["pgdat", "rlfat_p", "trades", "rlfat_t"],
                    "Methods to time.", **fv)
  flags.DEFINE_list("xla", list(XLA_SETTINGS), "XLA settings to time: off, "
                    "on or both.", **fv)
  flags.DEFINE_enum("mixed_precision", "float32", trainer.PRECISIONS,
                    "Compute dtype policy of every configuration.", **fv)
  flags.DEFINE_integer("rounds", 5, "Timed rounds per configuration (the "
                       "median is reported).", lower_bound=1, **fv)
  flags.DEFINE_integer("steps_per_round", 2, "Training steps per timed "
                       "round, run as one compiled loop.", lower_bound=1,
                       **fv)
  flags.DEFINE_integer("peak_batch", 256, "Batch of the isolated "
                       "convolutions that measure the machine's peak.",
                       lower_bound=1, **fv)
  flags.DEFINE_integer("peak_repeats", 3, "Timed calls of the peak workload "
                       "(the fastest counts).", lower_bound=1, **fv)
  flags.DEFINE_integer("pipeline_batches", 300, "Batches drawn to time the "
                       "input pipeline.", lower_bound=1, **fv)
  flags.DEFINE_string("output", None, "Write the results to this JSON file.",
                      **fv)
  flags.DEFINE_enum("mode", "training", MODES, "training: the cost of a "
                    "training step; evaluation: APGD-CE against IBM ART's on "
                    "a trained run; autoattack: standard AutoAttack against "
                    "the reference's (pyautoattack) on a trained run.", **fv)
  flags.DEFINE_string("model_dir", None, "evaluation, autoattack: the "
                      "training run whose last checkpoint is attacked.", **fv)
  flags.DEFINE_integer("num_examples", 500, "evaluation, autoattack: the "
                       "first N test images.", lower_bound=1, **fv)
  flags.DEFINE_float("epsilon", None, "evaluation: L-infinity radius, "
                     "default the run's; autoattack: default "
                     f"{aabench.EPSILON:g}.", **fv)
  flags.DEFINE_integer("apgd_steps", 100, "evaluation: APGD iterations.",
                       lower_bound=1, **fv)
  flags.DEFINE_integer("eval_batch_size", 500, "evaluation: images per "
                       "batch, on both sides.", lower_bound=1, **fv)
  flags.DEFINE_string("art_python", evalbench.DEFAULT_ART_PYTHON,
                      "evaluation: the Python of the environment that has "
                      "ART (scripts/install_art.sh).", **fv)
  flags.DEFINE_integer("seed", 0, "autoattack: the seed of both sides' "
                       "random draws.", **fv)
  flags.DEFINE_string("venv", aabench.DEFAULT_VENV, "autoattack: the "
                      "environment of the reference AutoAttack "
                      "(scripts/install_autoattack.sh).", **fv)
  runs.register_radius_validators(flag_values, names=("epsilon",))
  for mode in RUN_MODES:
    flags.register_multi_flags_validator(
        ["mode", "model_dir"],
        lambda v, mode=mode: v["mode"] != mode or bool(v["model_dir"]),
        message=f"--mode={mode} needs --model_dir: pass a training run",
        **fv)
  flags.register_validator(
      "depth", lambda v: (v - 4) % 6 == 0,
      message="--depth must be a WideResNet depth 6n+4, e.g. 10, 16, 28 or "
      "34", **fv)
  flags.register_validator(
      "methods", lambda v: bool(v) and set(v) <= set(methods.METHODS),
      message=f"--methods must be a list of {', '.join(methods.METHODS)}",
      **fv)
  flags.register_validator(
      "xla", lambda v: bool(v) and set(v) <= set(XLA_SETTINGS),
      message="--xla must be off, on or off,on", **fv)


# FLOP counting ---------------------------------------------------------------

_SHAPE = re.compile(r"^[a-z]+\d*\[([\d,]*)\]")
_CALLEE = re.compile(
    r"\b(calls|to_apply|body|condition|true_computation|false_computation)="
    r"%([\w.\-]+)")
_BRANCHES = re.compile(r"branch_computations=\{([^}]*)\}")
_TRIP_COUNT = re.compile(r'"known_trip_count":\{"n":"(\d+)"\}')


def _split_instruction(line):
  """(name, shape text, opcode, rest) of an HLO instruction line, or None."""
  match = re.match(r"^\s*(?:ROOT\s+)?%([\w.\-]+)\s*=\s*", line)
  if not match:
    return None
  text = line[match.end():]
  if text.startswith("("):
    depth = 0
    for end, char in enumerate(text):
      depth += {"(": 1, ")": -1}.get(char, 0)
      if depth == 0:
        break
    shape, text = text[:end + 1], text[end + 1:].lstrip()
  else:
    shape, _, text = text.partition(" ")
  opcode, _, rest = text.partition("(")
  return match.group(1), shape, opcode, rest


def _dims(shape):
  match = _SHAPE.match(shape)
  if not match:
    return None
  return [int(d) for d in match.group(1).split(",") if d]


def _parse_hlo(text):
  """Computations of an HLO module: ``({name: [instruction]}, entry)``."""
  computations, entry, current = {}, None, None
  for line in text.splitlines():
    header = re.match(r"^(ENTRY\s+)?%([\w.\-]+)\s.*\{\s*$", line)
    if header and current is None:
      current = header.group(2)
      computations[current] = []
      if header.group(1):
        entry = current
    elif line.strip() == "}":
      current = None
    elif current is not None:
      parsed = _split_instruction(line)
      if parsed:
        computations[current].append(parsed)
  if entry is None:
    raise ValueError("no ENTRY computation in the HLO text")
  return computations, entry


def _valid_taps(size, window, stride, low, high, lhs_dilation, rhs_dilation):
  """Pairs (output position, window position) that read a real input.

  Padding and the holes of a dilated input hold no data, so products with
  them are not counted (XLA's cost analysis counts the same way).
  """
  dilated = (size - 1) * lhs_dilation + 1
  span = (window - 1) * rhs_dilation + 1
  outputs = (dilated + low + high - span) // stride + 1
  taps = 0
  for out in range(outputs):
    for tap in range(window):
      index = out * stride + tap * rhs_dilation - low
      taps += 0 <= index < dilated and index % lhs_dilation == 0
  return taps


def _window(rest, rank):
  """Per spatial dimension: size, stride, padding and dilations."""
  match = re.search(r"window=\{([^}]*)\}", rest)
  fields = (dict(f.split("=", 1) for f in match.group(1).split()) if match
            else {})

  def ints(key, default):
    if key not in fields:
      return [default] * rank
    return [int(v) for v in fields[key].split("x")]

  pads = ([tuple(int(v) for v in pad.split("_"))
           for pad in fields["pad"].split("x")]
          if "pad" in fields else [(0, 0)] * rank)
  return (ints("size", 1), ints("stride", 1), pads, ints("lhs_dilate", 1),
          ints("rhs_dilate", 1))


def _convolution_flops(rest, out_dims, shapes):
  lhs_name, rhs_name = re.findall(r"%([\w.\-]+)", rest.split(")", 1)[0])[:2]
  lhs, rhs = shapes[lhs_name], shapes[rhs_name]
  labels = re.search(r"dim_labels=(\w+)_(\w+)->(\w+)", rest)
  lhs_labels, rhs_labels, out_labels = labels.groups()
  spatial = [c for c in lhs_labels if c.isdigit()]
  sizes, strides, pads, lhs_dil, rhs_dil = _window(rest, len(spatial))
  taps = 1
  for i, axis in enumerate(spatial):
    taps *= _valid_taps(lhs[lhs_labels.index(axis)], sizes[i], strides[i],
                        pads[i][0], pads[i][1], lhs_dil[i], rhs_dil[i])
  return (2 * out_dims[out_labels.index("b")] * out_dims[out_labels.index("f")]
          * taps * rhs[rhs_labels.index("i")])


def _dot_flops(rest, out_dims, shapes):
  lhs_name = re.findall(r"%([\w.\-]+)", rest.split(")", 1)[0])[0]
  contracting = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", rest)
  size = 1
  for axis in contracting.group(1).split(",") if contracting else []:
    if axis:
      size *= shapes[lhs_name][int(axis)]
  total = 1
  for d in out_dims:
    total *= d
  return 2 * total * size


def hlo_flops(hlo_text):
  """Floating-point operations of an HLO module's convolutions and dots.

  A multiply-add counts as two operations. A ``while`` body counts as many
  times as XLA's known trip count says; of a conditional's branches the most
  expensive counts. Elementwise operations are not counted, as is usual for
  model FLOPs.

  Args:
    hlo_text: optimised HLO text, e.g. from
      ``tf.function(..., jit_compile=True).experimental_get_compiler_ir``.

  Returns:
    The operation count, a float.

  Raises:
    ValueError: a loop has no known trip count.
  """
  computations, entry = _parse_hlo(hlo_text)
  shapes = {name: _dims(shape) for body in computations.values()
            for name, shape, _, _ in body}
  memo = {}

  def flops(computation):
    if computation in memo:
      return memo[computation]
    total = 0.0
    for name, shape, opcode, rest in computations[computation]:
      if opcode == "convolution":
        total += _convolution_flops(rest, shapes[name], shapes)
      elif opcode == "dot":
        total += _dot_flops(rest, shapes[name], shapes)
      for kind, callee in _CALLEE.findall(rest):
        if kind == "body":
          trips = _TRIP_COUNT.search(rest)
          if not trips:
            raise ValueError(f"loop {name} has no known trip count")
          total += int(trips.group(1)) * flops(callee)
        elif kind != "condition":
          total += flops(callee)
      branches = _BRANCHES.search(rest)
      if branches:
        total += max(flops(b.strip().lstrip("%"))
                     for b in branches.group(1).split(","))
    memo[computation] = total
    return total

  return flops(entry)


def step_hlo(runner, batch):
  """XLA's optimised HLO of one training step of ``runner`` on ``batch``.

  The step is compiled as on a single device; with the attack in a loop,
  the loop body appears once, marked with its trip count. ``hlo_flops``
  counts its floating-point operations.

  Args:
    runner: a ``trainer.Trainer``.
    batch: one batch dict of ``data.train_dataset``.

  Returns:
    The HLO module as text.

  Raises:
    ValueError: the trainer runs under a strategy other than the default,
      whose replicas synchronise outside what XLA can compile.
  """
  if runner.strategy is not tf.distribute.get_strategy():
    raise ValueError("step_hlo needs a trainer on the default strategy")
  step = tf.function(runner.train_step.replica_step, jit_compile=True)
  # Compiled for the CPU whatever the devices: the arithmetic is the same,
  # and accelerators turn convolutions into library calls.
  return step.experimental_get_compiler_ir(batch)(
      stage="optimized_hlo", platform_name="CPU")


def forward_flops_by_hand(model):
  """Per-example forward FLOPs of the model's convolutions and dense layers.

  Counted as 2 * H_out * W_out * k * k * C_in * C_out per convolution
  (padding included) and 2 * inputs * outputs per dense layer.
  """
  total = 0
  for layer in model.layers:
    if isinstance(layer, keras.layers.Conv2D):
      _, height, width, channels = layer.output.shape
      k_h, k_w, c_in, _ = layer.kernel.shape
      total += 2 * height * width * channels * k_h * k_w * c_in
    elif isinstance(layer, keras.layers.Dense):
      c_in, c_out = layer.kernel.shape
      total += 2 * c_in * c_out
  return float(total)


def pass_counts(method_name, attack_steps):
  """What a step of a method costs, in passes of the model.

  Returns:
    Dict with ``passes``, the count the issue predicts with (attack steps
    plus training passes, each one forward-backward); and ``forward_units``,
    the cost in forward passes: an attack step is a forward and an input
    gradient (2), a training pass adds the weight gradient (3), the clean
    forward of the KL attack and the inference-mode forwards that report
    clean and adversarial accuracy for methods that do not train on them
    count 1 each.
  """
  config = trainer.TrainConfig(method=method_name, attack_steps=attack_steps)
  method = config.method_spec
  train_passes = len(method.passes)
  inference = len({"clean", "adv"} - set(method.passes))
  kl_clean = int(config.attack_spec().loss in losses.NEEDS_CLEAN_LOGITS)
  return {
      "passes": attack_steps + train_passes,
      "forward_units": 2 * attack_steps + 3 * train_passes + inference
                       + kl_clean,
  }


# Measurements ----------------------------------------------------------------


def _conv_workload(model, batch_size):
  """Every convolution of ``model``: forward, input and weight gradients."""
  convs = [l for l in model.layers if isinstance(l, keras.layers.Conv2D)]
  tensors = []
  for layer in convs:
    # In the layer's compute dtype, so mixed precision is measured against
    # its own peak.
    dtype = layer.compute_dtype
    in_shape = [batch_size, *layer.input.shape[1:]]
    out_shape = [batch_size, *layer.output.shape[1:]]
    tensors.append((tf.random.uniform(in_shape, dtype=dtype),
                    tf.random.normal(layer.kernel.shape, dtype=dtype),
                    tf.random.normal(out_shape, dtype=dtype), layer.strides))

  def work():
    outputs = []
    for x, w, upstream, strides in tensors:
      with tf.GradientTape() as tape:
        tape.watch([x, w])
        y = tf.nn.conv2d(x, w, strides, "SAME")
        # A random upstream gradient, so nothing folds the products away.
        loss = tf.reduce_sum(y * upstream)
      outputs.extend([y, *tape.gradient(loss, [x, w])])
    return outputs

  return work


def measure_conv_peak(model, batch_size, repeats):
  """The machine's FLOP/s on the model's convolutions at a large batch.

  Args:
    model: a Keras model with Conv2D layers.
    batch_size: batch of the workload.
    repeats: timed calls per setting; the fastest counts.

  Returns:
    Dict with the workload's ``flops`` and, for XLA off and on, its
    ``seconds`` and ``flops_per_second``, and ``peak_flops_per_second``, the
    better of the two.
  """
  work = _conv_workload(model, batch_size)
  flops = hlo_flops(tf.function(work, jit_compile=True)
                    .experimental_get_compiler_ir()(
                        stage="optimized_hlo", platform_name="CPU"))
  result = {"flops": flops, "batch_size": batch_size}
  for setting in XLA_SETTINGS:
    fn = tf.function(work, jit_compile=setting == "on")
    _block(fn())
    times = []
    for _ in range(repeats):
      start = time.perf_counter()
      _block(fn())
      times.append(time.perf_counter() - start)
    result[f"xla_{setting}"] = {"seconds": min(times),
                                "flops_per_second": flops / min(times)}
  result["peak_flops_per_second"] = max(
      result[f"xla_{s}"]["flops_per_second"] for s in XLA_SETTINGS)
  return result


def _block(tensors):
  """Waits for results by fetching one element of each."""
  for t in tf.nest.flatten(tensors):
    tf.reshape(t, [-1])[:1].numpy()


def measure_pipeline(images, labels, batch_size, rbs_blocks, num_batches):
  """Examples/second of ``data.train_dataset`` alone, after a warm-up."""
  it = iter(data.train_dataset(
      images, labels, batch_size=batch_size, seed=0,
      augmentation=data.Augmentation(), rbs_blocks=rbs_blocks))
  for _ in range(min(20, num_batches)):
    next(it)
  start = time.perf_counter()
  for _ in range(num_batches):
    batch = next(it)
  batch["image"].numpy()
  return num_batches * batch_size / (time.perf_counter() - start)


def build_runner(method, xla, settings, images, labels, info):
  """A ``trainer.Trainer`` for one configuration (its files go nowhere)."""
  config = trainer.TrainConfig(
      method=method, attack_steps=settings["attack_steps"],
      batch_size=settings["batch_size"], jit_compile=xla == "on",
      mixed_precision=settings["mixed_precision"])
  input_fn = data.train_input_fn(
      images, labels, batch_size=settings["batch_size"], seed=0,
      augmentation=data.Augmentation(),
      rbs_blocks=2 if config.method_spec.uses_rbs else None)

  # Only ``run_steps`` is called, which writes nothing, so the run folder is
  # never created.
  return trainer.Trainer(
      config,
      lambda: models.wide_resnet(settings["depth"], settings["width"],
                                 info.num_classes, info.image_shape),
      input_fn, os.path.join(tempfile.gettempdir(), "rlfat_benchmark_unused"),
      verbose=0)


def measure_training(runners, rounds, steps):
  """Examples/second of each runner, timed in interleaved rounds.

  Args:
    runners: dict of name -> ``trainer.Trainer``.
    rounds: rounds; in each, every runner runs ``steps`` steps in turn.
    steps: steps per round, one compiled loop call.

  Returns:
    Dict name -> {``first_call_seconds`` (tracing and compilation plus one
    step), ``rates`` (examples/second of each round),
    ``examples_per_second`` (their median), ``seconds_per_step``,
    ``loop_call_seconds`` (a call that runs no step: the host's cost of one
    loop)}.
  """
  results = {}
  for name, runner in runners.items():
    start = time.perf_counter()
    runner.run_steps(1)
    first = time.perf_counter() - start
    start = time.perf_counter()
    runner.run_steps(0)
    results[name] = {"first_call_seconds": first,
                     "loop_call_seconds": time.perf_counter() - start,
                     "rates": []}
    logging.info("compiled %s in %.1f s", name, first)
  for _ in range(rounds):
    for name, runner in runners.items():
      start = time.perf_counter()
      runner.run_steps(steps)
      elapsed = time.perf_counter() - start
      results[name]["rates"].append(
          steps * runner.config.batch_size / elapsed)
  for name, runner in runners.items():
    rate = statistics.median(results[name]["rates"])
    results[name]["examples_per_second"] = rate
    results[name]["seconds_per_step"] = runner.config.batch_size / rate
  return results


def _first_batch(images, labels, batch_size, method):
  rbs_blocks = 2 if methods.get(method).uses_rbs else None
  return next(iter(data.train_dataset(
      images, labels, batch_size=batch_size, seed=0,
      augmentation=data.Augmentation(), rbs_blocks=rbs_blocks)))


def run(settings):
  """Runs every measurement; returns the results as a JSON-able dict.

  Args:
    settings: dict with dataset, data_dir, tfds_data_dir, image_size,
      depth, width, batch_size,
      attack_steps, methods, xla, mixed_precision, rounds, steps_per_round,
      peak_batch, peak_repeats, pipeline_batches (the flags).
  """
  load_start = os.getloadavg()
  where = {"data_dir": settings["data_dir"],
           "tfds_data_dir": settings["tfds_data_dir"],
           "image_size": settings["image_size"]}
  info = datasets.get(settings["dataset"], **where)
  images, labels = datasets.load_split(settings["dataset"], "train", **where)
  batch_size, steps = settings["batch_size"], settings["attack_steps"]
  runners = {(m, x): build_runner(m, x, settings, images, labels, info)
             for m in settings["methods"] for x in settings["xla"]}
  timing = measure_training(
      {f"{m}/xla_{x}": r for (m, x), r in runners.items()},
      settings["rounds"], settings["steps_per_round"])

  model = next(iter(runners.values())).model
  hand_forward = forward_flops_by_hand(model)
  peak = measure_conv_peak(model, settings["peak_batch"],
                           settings["peak_repeats"])
  per_method = {}
  for method in settings["methods"]:
    runner = runners[(method, settings["xla"][0])]
    flops = hlo_flops(step_hlo(
        runner, _first_batch(images, labels, batch_size, method)))
    counts = pass_counts(method, steps)
    entry = {"flops_per_step": flops,
             "hand_flops_per_step": counts["forward_units"] * hand_forward
                                    * batch_size,
             **counts}
    for xla in settings["xla"]:
      measured = timing[f"{method}/xla_{xla}"]
      achieved = flops / measured["seconds_per_step"]
      entry[f"xla_{xla}"] = {
          **measured, "flops_per_second": achieved,
          "fraction_of_peak": achieved / peak["peak_flops_per_second"]}
    per_method[method] = entry

  relative = {}
  for method, m in per_method.items():
    base = methods.get(method).framework
    if base == method or base not in per_method:
      continue
    b = per_method[base]
    relative[f"{method}/{base}"] = {
        "predicted_by_passes": m["passes"] / b["passes"],
        "predicted_by_forward_units": m["forward_units"] / b["forward_units"],
        "predicted_by_flops": m["flops_per_step"] / b["flops_per_step"],
        **{f"measured_xla_{x}": m[f"xla_{x}"]["seconds_per_step"]
                                / b[f"xla_{x}"]["seconds_per_step"]
           for x in settings["xla"]}}

  fastest = max(t["examples_per_second"] for t in timing.values())
  pipeline_rate = measure_pipeline(
      images, labels, batch_size,
      2 if any(methods.get(m).uses_rbs for m in settings["methods"])
      else None, settings["pipeline_batches"])
  results = {
      "settings": settings,
      "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                  "processor": platform.processor(),
                  "gpus": len(tf.config.list_physical_devices("GPU")),
                  "tensorflow": tf.__version__, "keras": keras.__version__,
                  "load_average_start": load_start[0],
                  "load_average_end": os.getloadavg()[0]},
      "model": {"name": model.name, "parameters": model.count_params(),
                "forward_flops_per_example_by_hand": hand_forward},
      "methods": per_method,
      "relative_cost": relative,
      "conv_peak": peak,
      "input_pipeline": {"examples_per_second": pipeline_rate,
                         "times_fastest_training": pipeline_rate / fastest},
  }
  results["targets"] = evaluate_targets(results)
  return results


def evaluate_targets(results):
  """The issue's speed targets, each with its number and whether it is met."""
  targets = {}
  for key, rel in results["relative_cost"].items():
    for name, value in rel.items():
      if name.startswith("measured_"):
        targets[f"{key} {name[len('measured_'):]} <= 1.12"] = {
            "value": value, "met": value <= 1.12}
  for method, entry in results["methods"].items():
    if "xla_on" in entry and "xla_off" in entry:
      speedup = (entry["xla_off"]["seconds_per_step"]
                 / entry["xla_on"]["seconds_per_step"])
      targets[f"{method} XLA speed-up > 1"] = {"value": speedup,
                                               "met": speedup > 1}
    best = max(entry[k]["fraction_of_peak"] for k in entry
               if k.startswith("xla_"))
    targets[f"{method} fraction of conv peak >= 0.5"] = {"value": best,
                                                         "met": best >= 0.5}
  ratio = results["input_pipeline"]["times_fastest_training"]
  targets["input pipeline / fastest training >= 20"] = {"value": ratio,
                                                        "met": ratio >= 20}
  return targets


def format_table(results):
  """The results as a plain-text table."""
  s, m = results["settings"], results["machine"]
  lines = [
      f"{results['model']['name']}, batch {s['batch_size']}, K = "
      f"{s['attack_steps']}, {s['mixed_precision']}; {m['cpus']} CPUs, "
      f"{m['gpus']} GPUs, load {m['load_average_start']:.1f} -> "
      f"{m['load_average_end']:.1f}",
      "",
      f"{'method':<9}{'XLA':<5}{'ex/s':>8}{'spread':>8}{'s/step':>8}"
      f"{'GFLOP/step':>12}{'GFLOP/s':>9}{'of peak':>9}{'1st call s':>12}",
  ]
  for method, entry in results["methods"].items():
    for key in (k for k in entry if k.startswith("xla_")):
      e = entry[key]
      spread = (max(e["rates"]) - min(e["rates"])) / e["examples_per_second"]
      lines.append(
          f"{method:<9}{key[4:]:<5}{e['examples_per_second']:>8.2f}"
          f"{spread:>8.0%}{e['seconds_per_step']:>8.2f}"
          f"{entry['flops_per_step'] / 1e9:>12.1f}"
          f"{e['flops_per_second'] / 1e9:>9.1f}{e['fraction_of_peak']:>9.0%}"
          f"{e['first_call_seconds']:>12.1f}")
  lines.append("(ex/s: median of the rounds; spread: (max - min) / median)")
  if results["relative_cost"]:
    xla = s["xla"]
    lines += ["", f"{'cost ratio':<16}"
              + "".join(f"{'XLA ' + x:>9}" for x in xla)
              + f"{'passes':>8}{'fwd units':>11}{'FLOPs':>7}"]
    for key, rel in results["relative_cost"].items():
      lines.append(f"{key:<16}"
                   + "".join(f"{rel['measured_xla_' + x]:>9.3f}" for x in xla)
                   + f"{rel['predicted_by_passes']:>8.3f}"
                   f"{rel['predicted_by_forward_units']:>11.3f}"
                   f"{rel['predicted_by_flops']:>7.3f}")
  peak = results["conv_peak"]
  pipe = results["input_pipeline"]
  host = max(e[k]["loop_call_seconds"] for e in results["methods"].values()
             for k in e if k.startswith("xla_"))
  lines += [
      "",
      f"host cost of one loop call: {host * 1e3:.1f} ms at most",
      f"conv peak (batch {peak['batch_size']}): "
      f"{peak['peak_flops_per_second'] / 1e9:.1f} GFLOP/s (XLA off "
      f"{peak['xla_off']['flops_per_second'] / 1e9:.1f}, on "
      f"{peak['xla_on']['flops_per_second'] / 1e9:.1f})",
      f"input pipeline: {pipe['examples_per_second']:.0f} ex/s = "
      f"{pipe['times_fastest_training']:.0f}x the fastest training step",
      "", "targets:"]
  for name, target in results["targets"].items():
    lines.append(f"  {'met    ' if target['met'] else 'NOT met'} {name}: "
                 f"{target['value']:.3f}")
  return "\n".join(lines)


def autoattack_arguments(flag_values):
  """``aabench.run``'s arguments from the parsed flags of --mode=autoattack."""
  batch_size = (flag_values.batch_size if flag_values["batch_size"].present
                else AUTOATTACK_BATCH_SIZE)
  return {"model_dir": flag_values.model_dir,
          "data_dir": flag_values.data_dir,
          "num_examples": flag_values.num_examples,
          "epsilon": flag_values.epsilon or aabench.EPSILON,
          "batch_size": batch_size, "seed": flag_values.seed,
          "venv": flag_values.venv}


def main():
  """Runs the benchmark the parsed flags describe; prints and writes it."""
  if not FLAGS["verbosity"].present:
    # Every configuration traces its own copy of the training loop, which
    # TensorFlow's retracing detector reports as retracing.
    tf.get_logger().setLevel("ERROR")
  settings = {name: FLAGS[name].value for name in (
      "dataset", "data_dir", "tfds_data_dir", "image_size", "depth", "width", "batch_size", "attack_steps",
      "methods", "xla", "mixed_precision", "rounds", "steps_per_round",
      "peak_batch", "peak_repeats", "pipeline_batches")}
  if FLAGS.output:
    folder = os.path.dirname(os.path.abspath(FLAGS.output))
    if not tf.io.gfile.isdir(folder):
      raise errors.UserError(
          f"--output={FLAGS.output}: folder {folder} does not exist: "
          f"create it or write elsewhere")
  if FLAGS.mode == "evaluation":
    results = evalbench.run(**{arg: FLAGS[name].value
                               for name, arg in EVALUATION_FLAGS.items()})
    table = evalbench.format_table(results)
  elif FLAGS.mode == "autoattack":
    results = aabench.run(**autoattack_arguments(FLAGS))
    table = aabench.format_table(results)
  else:
    results = run(settings)
    table = format_table(results)
  if FLAGS.output:
    files.write_json(FLAGS.output, results)
  print(table)


if __name__ == "__main__":
  cli.run_absl(main, define_flags)
