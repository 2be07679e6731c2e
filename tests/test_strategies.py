"""Tests of strategy creation, chief election and per-worker write folders."""

import json
import os
import subprocess
import sys

import pytest
import tensorflow as tf

from rlfat_tf import errors
from rlfat_tf import strategies

from helpers import ROOT


class _Worker:
  """A stand-in for a multi-worker strategy: only its cluster resolver."""

  def __init__(self, cluster, task_type, task_id):
    resolvers = tf.distribute.cluster_resolver
    self.cluster_resolver = resolvers.SimpleClusterResolver(
        tf.train.ClusterSpec(cluster), task_type=task_type, task_id=task_id)


class _Replicas:
  num_replicas_in_sync = 4


WORKERS = {"worker": ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"]}
WITH_CHIEF = {"chief": ["127.0.0.1:1"], "worker": ["127.0.0.1:2"]}


def test_default_strategy_is_the_current_one_and_the_chief(tmp_path):
  strategy = strategies.create("default")
  assert strategy is tf.distribute.get_strategy()
  assert strategies.task(strategy) == (None, None)
  assert strategies.is_chief(strategy)
  assert strategies.write_dir(str(tmp_path), strategy) == str(tmp_path)
  assert strategies.on_cpu(strategy)
  assert not strategies.uses_merge_call(strategy)


@pytest.mark.parametrize("cluster, task_type, task_id, chief", [
    (WORKERS, "worker", 0, True),
    (WORKERS, "worker", 1, False),
    (WORKERS, "worker", 2, False),
    (WITH_CHIEF, "chief", 0, True),
    (WITH_CHIEF, "worker", 0, False),
])
def test_chief_is_the_chief_task_or_else_worker_0(cluster, task_type, task_id,
                                                  chief):
  assert strategies.is_chief(_Worker(cluster, task_type, task_id)) == chief


def test_only_other_workers_write_to_a_private_folder_they_delete(tmp_path):
  model_dir = str(tmp_path / "run")
  chief, other = _Worker(WORKERS, "worker", 0), _Worker(WORKERS, "worker", 2)
  assert strategies.write_dir(model_dir, chief) == model_dir
  private = strategies.write_dir(model_dir, other)
  assert private == os.path.join(model_dir, ".worker_2_tmp")
  tf.io.gfile.makedirs(os.path.join(private, "checkpoints"))
  (tmp_path / "run" / "flags.json").write_text("{}")
  strategies.discard_writes(model_dir, chief)
  assert os.path.isdir(private)
  strategies.discard_writes(model_dir, other)
  assert not os.path.exists(private)
  assert os.listdir(model_dir) == ["flags.json"]
  strategies.discard_writes(model_dir, other)


def test_batch_must_split_evenly_across_replicas():
  strategies.check_batch_size(32, _Replicas())
  with pytest.raises(errors.UserError, match="multiple of 4"):
    strategies.check_batch_size(30, _Replicas())


@pytest.mark.parametrize("tf_config, needle", [
    (None, "TF_CONFIG environment variable, which is not set"),
    ("not json", "TF_CONFIG must be JSON"),
    (json.dumps({"cluster": WORKERS}), "TF_CONFIG must be JSON"),
    (json.dumps({"cluster": WORKERS, "task": {"type": "worker", "index": 3}}),
     "TF_CONFIG must be JSON"),
    (json.dumps({"cluster": WORKERS, "task": {"type": "ps", "index": 0}}),
     "TF_CONFIG must be JSON"),
])
def test_multi_worker_needs_a_usable_tf_config(tf_config, needle,
                                               monkeypatch):
  if tf_config is None:
    monkeypatch.delenv("TF_CONFIG", raising=False)
  else:
    monkeypatch.setenv("TF_CONFIG", tf_config)
  with pytest.raises(errors.UserError, match=needle) as error:
    strategies.create("multi_worker")
  assert "\n" not in str(error.value)


def test_cpu_cannot_be_split_once_tensorflow_runs():
  tf.constant(1.0).numpy()
  with pytest.raises(errors.UserError, match="after TensorFlow has started"):
    strategies.split_cpu(3)


def test_mirrored_runs_one_replica_per_logical_cpu():
  # Devices are configured once per process, so this needs a fresh one.
  script = (
      "from rlfat_tf import strategies\n"
      "strategies.split_cpu(3)\n"
      "strategies.split_cpu(3)\n"
      "s = strategies.create('mirrored')\n"
      "print(s.num_replicas_in_sync, strategies.uses_merge_call(s),"
      " strategies.on_cpu(s), strategies.is_chief(s))\n")
  result = subprocess.run(
      [sys.executable, "-c", script], capture_output=True, text=True,
      cwd=ROOT, timeout=120, check=False,
      env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="",
               PYTHONPATH=str(ROOT)))
  assert result.returncode == 0, result.stderr
  assert result.stdout.split() == ["3", "True", "True", "True"]
