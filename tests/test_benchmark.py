"""Tests of the benchmark's counting and of its output (not of any speed)."""

import json
import subprocess
import sys

from absl import flags
import keras
import numpy as np
import pytest
import tensorflow as tf

from rlfat_tf import benchmark
from rlfat_tf import data
from rlfat_tf import models
from rlfat_tf import trainer

from helpers import ENV
from helpers import ROOT


# A loop running a 3x3 convolution of a [2,8,8,4] input to 5 features 7
# times, then a [2,4] x [4,3] product, and a conditional with one free and
# one [1,6] x [6,2] branch.
HLO = """\
HloModule toy, entry_computation_layout={()->f32[]}

%body (p: (s32[], f32[2,8,8,4], f32[3,3,4,5])) -> (s32[], f32[2,8,8,4], f32[3,3,4,5]) {
  %p = (s32[], f32[2,8,8,4]{3,2,1,0}, f32[3,3,4,5]{3,2,1,0}) parameter(0)
  %x = f32[2,8,8,4]{3,2,1,0} get-tuple-element(%p), index=1
  %w = f32[3,3,4,5]{3,2,1,0} get-tuple-element(%p), index=2
  %c = f32[2,8,8,5]{3,2,1,0} convolution(%x, %w), window={size=3x3 pad=1_1x1_1}, dim_labels=b01f_01io->b01f
  ROOT %t = (s32[], f32[2,8,8,4]{3,2,1,0}, f32[3,3,4,5]{3,2,1,0}) tuple(%i, %x, %w)
}

%cond (q: (s32[], f32[2,8,8,4], f32[3,3,4,5])) -> pred[] {
  %q = (s32[], f32[2,8,8,4]{3,2,1,0}, f32[3,3,4,5]{3,2,1,0}) parameter(0)
  ROOT %lt = pred[] compare(%i, %n), direction=LT
}

%free (a: f32[]) -> f32[] {
  ROOT %a = f32[] parameter(0)
}

%costly (b: f32[]) -> f32[] {
  %m = f32[1,6]{1,0} parameter(0)
  %k = f32[6,2]{1,0} parameter(1)
  %d2 = f32[1,2]{1,0} dot(%m, %k), lhs_contracting_dims={1}, rhs_contracting_dims={0}
  ROOT %b = f32[] parameter(2)
}

ENTRY %main () -> f32[] {
  %init = (s32[], f32[2,8,8,4]{3,2,1,0}, f32[3,3,4,5]{3,2,1,0}) tuple(%zero, %x0, %w0)
  %loop = (s32[], f32[2,8,8,4]{3,2,1,0}, f32[3,3,4,5]{3,2,1,0}) while(%init), condition=%cond, body=%body, backend_config={"known_trip_count":{"n":"7"}}
  %l = f32[2,4]{1,0} parameter(0)
  %r = f32[4,3]{1,0} parameter(1)
  %d = f32[2,3]{1,0} dot(%l, %r), lhs_contracting_dims={1}, rhs_contracting_dims={0}
  ROOT %pick = f32[] conditional(%flag, %s, %s), branch_computations={%free, %costly}
}
"""


def _valid_taps(height, width, kernel, strides):
  """(output, tap) pairs on real pixels, counted by convolving ones."""
  ones = tf.nn.conv2d(tf.ones([1, height, width, 1]),
                      tf.ones([kernel, kernel, 1, 1]), strides, "SAME")
  return float(tf.reduce_sum(ones))


def test_hlo_count_multiplies_loops_and_takes_the_costliest_branch():
  # 3x3 "same" taps on 8 pixels: 8 * 3 - 2 = 22 per axis.
  conv = 2 * 2 * 5 * 22 * 22 * 4
  assert benchmark.hlo_flops(HLO) == 7 * conv + 2 * 2 * 3 * 4 + 2 * 2 * 6


def test_hlo_count_of_a_loop_without_trip_count_is_refused():
  with pytest.raises(ValueError, match="no known trip count"):
    benchmark.hlo_flops(HLO.replace('{"known_trip_count":{"n":"7"}}', "{}"))


@pytest.mark.parametrize("strides", [1, 2])
def test_convolution_and_its_gradients_count_the_forward_taps(strides):
  x = tf.random.stateless_uniform([3, 10, 10, 4], [0, 1])
  w = tf.random.stateless_normal([3, 3, 4, 6], [0, 2])

  def step(x, w):
    with tf.GradientTape() as tape:
      tape.watch([x, w])
      y = tf.nn.conv2d(x, w, strides, "SAME")
      loss = tf.reduce_sum(y * y)
    return tape.gradient(loss, [x, w])

  hlo = tf.function(step, jit_compile=True).experimental_get_compiler_ir(
      x, w)(stage="optimized_hlo")
  forward = 2 * 3 * 6 * 4 * _valid_taps(10, 10, 3, strides)
  # Forward, input gradient and weight gradient each pair every real input
  # pixel with every kernel tap once.
  assert benchmark.hlo_flops(hlo) == 3 * forward


def test_hand_count_of_wrn_10_1():
  model = models.wide_resnet(10, 1, 10, (32, 32, 3))
  by_layer = [
      2 * 32 * 32 * 16 * 9 * 3,  # init conv
      2 * 2 * 32 * 32 * 16 * 9 * 16,  # stage 1
      2 * 16 * 16 * 32 * 9 * 16 + 2 * 16 * 16 * 32 * 9 * 32,  # stage 2
      2 * 8 * 8 * 64 * 9 * 32 + 2 * 8 * 8 * 64 * 9 * 64,  # stage 3
      2 * 64 * 10,  # logits
  ]
  assert benchmark.forward_flops_by_hand(model) == sum(by_layer) == 24_478_976


@pytest.mark.parametrize("method, passes, units", [
    ("pgdat", 11, 24), ("rlfat_p", 12, 27), ("trades", 12, 27),
    ("rlfat_t", 13, 30), ("rbsat_p", 11, 25), ("rbsat_t", 12, 28)])
def test_pass_counts_at_k_10(method, passes, units):
  assert benchmark.pass_counts(method, 10) == {"passes": passes,
                                               "forward_units": units}


@pytest.mark.parametrize("method", ["pgdat", "rlfat_p"])
def test_step_count_equals_the_count_of_its_passes(method):
  batch_size, steps = 4, 3
  rng = np.random.RandomState(0)
  images = rng.randint(0, 256, (16, 8, 8, 3)).astype(np.uint8)
  labels = np.arange(16, dtype=np.int32) % 10
  config = trainer.TrainConfig(method=method, attack_steps=steps,
                               batch_size=batch_size)
  input_fn = data.train_input_fn(
      images, labels, batch_size=batch_size, seed=0,
      augmentation=data.Augmentation(),
      rbs_blocks=2 if config.method_spec.uses_rbs else None)

  runner = trainer.Trainer(
      config, lambda: models.wide_resnet(10, 1, 10, (8, 8, 3)), input_fn,
      "/nonexistent", verbose=0)
  batch = next(iter(input_fn(None, 0)))
  counted = benchmark.hlo_flops(benchmark.step_hlo(runner, batch))
  convs = [l for l in runner.model.layers
           if isinstance(l, keras.layers.Conv2D)]
  forward = [2 * batch_size * l.filters * l.input.shape[-1]
             * _valid_taps(*l.input.shape[1:3], 3, l.strides) for l in convs]
  dense = 2 * batch_size * 64 * 10
  train_passes = len(config.method_spec.passes)
  # Each attack step: forward and input gradient of every layer. Each
  # training pass: forward, weight gradients, and input gradients of every
  # layer but the first. One inference forward reports clean accuracy.
  expected = (steps * 2 * sum(forward)
              + train_passes * (3 * sum(forward) - forward[0])
              + sum(forward) + dense * (2 * steps + 3 * train_passes + 1))
  assert counted == expected


def test_step_hlo_needs_the_default_strategy():
  strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
  runner = trainer.Trainer(
      trainer.TrainConfig(method="pgdat", batch_size=4),
      lambda: models.wide_resnet(10, 1, 10, (8, 8, 3)), None, "/nonexistent",
      strategy=strategy, verbose=0)
  with pytest.raises(ValueError, match="needs a trainer on the default"):
    benchmark.step_hlo(runner, {})


def test_cli_writes_consistent_json_and_a_table(tmp_path):
  # XLA off only: compiling the training loop with XLA is most of what a run
  # with both costs, and test_targets_and_table_of_both_xla_modes checks
  # the XLA columns on hand-made results.
  output = tmp_path / "bench.json"
  result = subprocess.run(
      [sys.executable, "-m", "rlfat_tf.benchmark", "--depth=10", "--width=1",
       "--batch_size=4", "--attack_steps=1", "--methods=pgdat,rlfat_p",
       "--xla=off", "--rounds=2", "--steps_per_round=1", "--peak_batch=4",
       "--peak_repeats=1", "--pipeline_batches=5", f"--output={output}"],
      capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=400,
      check=False)
  assert result.returncode == 0, result.stderr
  with open(output) as f:
    results = json.load(f)
  assert set(results) == {"settings", "machine", "model", "methods",
                          "relative_cost", "conv_peak", "input_pipeline",
                          "targets"}
  peak = results["conv_peak"]["peak_flops_per_second"]
  assert peak == max(results["conv_peak"][f"xla_{x}"]["flops_per_second"]
                     for x in ("off", "on"))
  for method in ("pgdat", "rlfat_p"):
    entry = results["methods"][method]
    assert entry["flops_per_step"] > 0
    assert "xla_on" not in entry
    timing = entry["xla_off"]
    assert len(timing["rates"]) == 2 and min(timing["rates"]) > 0
    assert timing["seconds_per_step"] == pytest.approx(
        4 / timing["examples_per_second"])
    assert timing["fraction_of_peak"] == pytest.approx(
        entry["flops_per_step"] / timing["seconds_per_step"] / peak)
    assert timing["first_call_seconds"] > 0
  rel = results["relative_cost"]["rlfat_p/pgdat"]
  pgdat, rlfat_p = results["methods"]["pgdat"], results["methods"]["rlfat_p"]
  assert rel["predicted_by_passes"] == pytest.approx(3 / 2)
  assert rel["predicted_by_forward_units"] == pytest.approx(9 / 6)
  assert rel["predicted_by_flops"] == pytest.approx(
      rlfat_p["flops_per_step"] / pgdat["flops_per_step"])
  assert rel["measured_xla_off"] == pytest.approx(
      rlfat_p["xla_off"]["seconds_per_step"]
      / pgdat["xla_off"]["seconds_per_step"])
  fastest = max(results["methods"][m]["xla_off"]["examples_per_second"]
                for m in ("pgdat", "rlfat_p"))
  pipeline = results["input_pipeline"]
  assert pipeline["times_fastest_training"] == pytest.approx(
      pipeline["examples_per_second"] / fastest)
  assert results["targets"] == benchmark.evaluate_targets(results)
  assert "wrn-10-1, batch 4, K = 1" in result.stdout
  assert "rlfat_p/pgdat" in result.stdout and "conv peak" in result.stdout


def _timing(examples_per_second, fraction_of_peak):
  return {"rates": [examples_per_second] * 2,
          "examples_per_second": examples_per_second,
          "seconds_per_step": 4 / examples_per_second,
          "flops_per_second": 1e9, "fraction_of_peak": fraction_of_peak,
          "first_call_seconds": 3.0, "loop_call_seconds": 0.002}


def test_targets_and_table_of_both_xla_modes():
  results = {
      "settings": {"batch_size": 4, "attack_steps": 1,
                   "mixed_precision": "float32", "xla": ["off", "on"]},
      "machine": {"cpus": 2, "gpus": 0, "load_average_start": 0.1,
                  "load_average_end": 0.2},
      "model": {"name": "wrn-10-1"},
      "methods": {
          "pgdat": {"flops_per_step": 2e9, "xla_off": _timing(10.0, 0.2),
                    "xla_on": _timing(20.0, 0.6)},
          "rlfat_p": {"flops_per_step": 3e9, "xla_off": _timing(8.0, 0.3),
                      "xla_on": _timing(20.0, 0.4)}},
      "relative_cost": {"rlfat_p/pgdat": {
          "predicted_by_passes": 1.5, "predicted_by_forward_units": 1.5,
          "predicted_by_flops": 1.5, "measured_xla_off": 1.25,
          "measured_xla_on": 1.0}},
      "conv_peak": {"batch_size": 4, "peak_flops_per_second": 2e9,
                    "xla_off": {"flops_per_second": 1e9},
                    "xla_on": {"flops_per_second": 2e9}},
      "input_pipeline": {"examples_per_second": 300.0,
                         "times_fastest_training": 15.0}}
  targets = benchmark.evaluate_targets(results)
  assert {k: (v["value"], v["met"]) for k, v in targets.items()} == {
      "rlfat_p/pgdat xla_off <= 1.12": (1.25, False),
      "rlfat_p/pgdat xla_on <= 1.12": (1.0, True),
      # Seconds per step without XLA over seconds with it: 2.0 and 2.5.
      "pgdat XLA speed-up > 1": (pytest.approx(2.0), True),
      "rlfat_p XLA speed-up > 1": (pytest.approx(2.5), True),
      "pgdat fraction of conv peak >= 0.5": (0.6, True),
      "rlfat_p fraction of conv peak >= 0.5": (0.4, False),
      "input pipeline / fastest training >= 20": (15.0, False)}
  results["targets"] = targets
  table = benchmark.format_table(results)
  assert "rlfat_p/pgdat       1.250    1.000" in table
  assert "NOT met input pipeline / fastest training >= 20: 15.000" in table
  assert "met     pgdat XLA speed-up > 1: 2.000" in table


@pytest.mark.parametrize("argv, needle", [
    (["--methods=pgdat,foo"], "--methods must be a list of"),
    (["--xla=maybe"], "--xla must be off, on or off,on"),
    (["--depth=12"], "--depth must be a WideResNet depth"),
])
def test_flag_validators_name_the_fix(argv, needle):
  parsed = flags.FlagValues()
  benchmark.define_flags(parsed)
  with pytest.raises(flags.IllegalFlagValueError, match=needle):
    parsed(["benchmark", *argv])


def test_missing_output_folder_gives_one_clear_line_before_measuring():
  result = subprocess.run(
      [sys.executable, "-m", "rlfat_tf.benchmark",
       "--output=/nonexistent/folder/b.json"],
      capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=120,
      check=False)
  assert result.returncode == 2
  assert "Traceback" not in result.stderr
  errors = [l for l in result.stderr.splitlines() if l.startswith("error:")]
  assert len(errors) == 1 and "/nonexistent/folder" in errors[0]


def test_autoattack_mode_needs_a_run():
  parsed = flags.FlagValues()
  benchmark.define_flags(parsed)
  with pytest.raises(flags.IllegalFlagValueError,
                     match="--mode=autoattack needs --model_dir"):
    parsed(["benchmark", "--mode=autoattack"])


def test_autoattack_mode_defaults_and_its_own_batch_size():
  parsed = flags.FlagValues()
  benchmark.define_flags(parsed)
  parsed(["benchmark", "--mode=autoattack", "--model_dir=run"])
  assert benchmark.autoattack_arguments(parsed) == {
      "model_dir": "run", "data_dir": None, "num_examples": 500,
      "epsilon": 0.03, "batch_size": 100, "seed": 0,
      "venv": "/tmp/autoattack-venv"}
  parsed = flags.FlagValues()
  benchmark.define_flags(parsed)
  parsed(["benchmark", "--mode=autoattack", "--model_dir=run",
          "--data_dir=d", "--num_examples=20", "--batch_size=32",
          "--epsilon=0.05", "--seed=3", "--venv=v"])
  assert benchmark.autoattack_arguments(parsed) == {
      "model_dir": "run", "data_dir": "d", "num_examples": 20,
      "epsilon": 0.05, "batch_size": 32, "seed": 3, "venv": "v"}
