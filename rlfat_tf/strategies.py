"""The ``tf.distribute`` strategies that training runs under, chosen by name.

- ``default``: TensorFlow's default strategy, one device.
- ``mirrored``: ``MirroredStrategy`` over every local GPU or, with no GPU, over
  the logical CPU devices (see ``split_cpu``), which is how tests run it.
- ``multi_worker``: ``MultiWorkerMirroredStrategy``, configured by the
  ``TF_CONFIG`` environment variable (the cluster and this process's task).
- ``tpu``: ``TPUStrategy`` on the TPU that a ``TPUClusterResolver`` finds.

Under ``multi_worker`` every worker runs the same program, and checkpoint
saves are collective, so every worker must save. Only the chief (the task
"chief", or worker 0 when the cluster has none) writes to the run directory;
the others write to a private directory inside it that is deleted after each
save, the ``write_filepath`` pattern of TensorFlow's multi-worker guide.
"""

import json
import os

import tensorflow as tf

from rlfat_tf import errors

NAMES = ("default", "mirrored", "multi_worker", "tpu")


def split_cpu(num_devices):
  """Splits the host CPU into ``num_devices`` logical devices.

  Replicas on logical CPUs share the same cores, so this is for running and
  testing multi-replica code without accelerators, not for speed.

  Args:
    num_devices: number of logical CPU devices, >= 1.

  Raises:
    errors.UserError: TensorFlow has already initialised its devices.
  """
  cpu = tf.config.list_physical_devices("CPU")[0]
  current = tf.config.get_logical_device_configuration(cpu)
  if current is not None and len(current) == num_devices:
    return
  try:
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * num_devices)
  except RuntimeError:
    raise errors.UserError(
        f"cannot split the CPU into {num_devices} logical devices after "
        f"TensorFlow has started: split it first thing in the process "
        f"(--cpu_devices does)") from None


def _check_tf_config():
  """Checks that ``TF_CONFIG`` names a cluster and this process's task in it."""
  raw = os.environ.get("TF_CONFIG")
  if not raw:
    raise errors.UserError(
        "--strategy=multi_worker reads the cluster from the TF_CONFIG "
        "environment variable, which is not set: set it on every worker, "
        "e.g. TF_CONFIG='{\"cluster\": {\"worker\": [\"host1:12345\", "
        "\"host2:12345\"]}, \"task\": {\"type\": \"worker\", \"index\": 0}}'")
  try:
    config = json.loads(raw)
    cluster, task = config["cluster"], config["task"]
    jobs = cluster[task["type"]]
    if not 0 <= int(task["index"]) < len(jobs):
      raise IndexError(task["index"])
  except (ValueError, KeyError, TypeError, IndexError):
    raise errors.UserError(
        "TF_CONFIG must be JSON with a \"cluster\" of jobs and a \"task\" "
        "with the \"type\" and \"index\" of one of their addresses: fix it "
        f"(got {raw!r})") from None


def create(name, tpu_address=None):
  """Creates the named strategy.

  Args:
    name: one of ``NAMES``.
    tpu_address: TPU name, ``grpc://`` address or "local" (a TPU VM's own
      TPU) for ``tpu``; None lets the resolver find it in the Cloud TPU
      environment.

  Returns:
    A ``tf.distribute.Strategy``.

  Raises:
    errors.UserError: ``multi_worker`` without a usable ``TF_CONFIG``.
  """
  if name == "default":
    return tf.distribute.get_strategy()
  if name == "mirrored":
    devices = (tf.config.list_logical_devices("GPU")
               or tf.config.list_logical_devices("CPU"))
    return tf.distribute.MirroredStrategy([d.name for d in devices])
  if name == "multi_worker":
    _check_tf_config()
    return tf.distribute.MultiWorkerMirroredStrategy()
  if name == "tpu":
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(
        tpu=tpu_address or "")
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return tf.distribute.TPUStrategy(resolver)
  raise ValueError(f"unknown strategy {name!r}; expected one of {NAMES}")


def task(strategy):
  """This process's ``(task_type, task_id)``, or ``(None, None)`` alone."""
  resolver = getattr(strategy, "cluster_resolver", None)
  if resolver is None or not resolver.task_type:
    return None, None
  return resolver.task_type, resolver.task_id


def is_chief(strategy):
  """Whether this process writes the run's files."""
  task_type, task_id = task(strategy)
  if task_type is None or task_type == "chief":
    return True
  jobs = strategy.cluster_resolver.cluster_spec().as_dict()
  return task_type == "worker" and task_id == 0 and "chief" not in jobs


def write_dir(model_dir, strategy):
  """Where this process writes: ``model_dir`` on the chief.

  Other workers get ``model_dir/.<task_type>_<task_id>_tmp``, which they
  delete after each write (see ``discard_writes``); nothing they write is
  ever read.
  """
  if is_chief(strategy):
    return model_dir
  task_type, task_id = task(strategy)
  return os.path.join(model_dir, f".{task_type}_{task_id}_tmp")


def discard_writes(model_dir, strategy):
  """Deletes a non-chief worker's private directory (no-op on the chief)."""
  path = write_dir(model_dir, strategy)
  if path != model_dir and tf.io.gfile.exists(path):
    tf.io.gfile.rmtree(path)


def check_batch_size(batch_size, strategy):
  """Checks that the global batch splits evenly across the replicas.

  Raises:
    errors.UserError: it does not.
  """
  replicas = strategy.num_replicas_in_sync
  if batch_size % replicas:
    raise errors.UserError(
        f"--batch_size={batch_size} does not split evenly across "
        f"{replicas} replicas: use a multiple of {replicas}")


def on_cpu(strategy):
  """Whether the strategy's replicas run on CPUs (no GPU or TPU)."""
  if isinstance(strategy, tf.distribute.TPUStrategy):
    return False
  return not tf.config.list_logical_devices("GPU")


def uses_merge_call(strategy):
  """Whether cross-replica sums in a replica function go through merge_call.

  ``MirroredStrategy`` and ``MultiWorkerMirroredStrategy`` synchronise
  replicas with ``merge_call`` unless the replica function is compiled by XLA
  on GPUs. A merge_call cannot sit inside a loop or a nested ``tf.function``
  of the replica function, which constrains where synchronised BatchNorm can
  run (see ``trainer``).
  """
  return isinstance(strategy, (tf.distribute.MirroredStrategy,
                               tf.distribute.MultiWorkerMirroredStrategy))
