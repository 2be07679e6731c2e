r"""Runs the reference AutoAttack on a Keras model: the other side of aabench.

``rlfat_tf.aabench`` runs this module as a subprocess with the Python of the
environment that ``scripts/install_autoattack.sh`` creates, where
pyautoattack 0.2.0 (fra31/auto-attack, commit a392200, packaged for PyPI)
and a CPU build of PyTorch are installed beside the project's own
TensorFlow; the main environment never imports either. The two processes
exchange npz files: the images and labels go in, the per-image verdicts and
the times come out.

How the reference is driven, and why:

- The model is the run's Keras model, saved by the main process with
  ``model.save`` and read back with ``classifier.load``, wrapped in fra31's
  own TensorFlow 2 adapter, ``utils_tf2.ModelAdapter`` (identical in
  pyautoattack), which takes NCHW torch tensors, transposes them to the
  model's channels-last layout and calls the model with ``training=False``.
  Its one change here: the adapter moves every result to CUDA
  (``torch.from_numpy(...).cuda()``), which a CPU build of PyTorch refuses,
  so ``CpuModelAdapter`` keeps the results on the CPU.
- pyautoattack's ``AutoAttack`` dropped fra31's ``is_tf_model`` switch and
  always builds the PyTorch-model attacks, which cannot take gradients
  through a TensorFlow model. ``reference_autoattack`` puts fra31's
  ``is_tf_model=True`` branch back as a392200's ``autoattack.py`` writes it:
  the same four constructors with the same arguments (APGD and APGD-T with
  ``is_tf_model=True``, ``FABAttack_TF``, Square on ``model.predict``),
  then the standard version's settings, logits from ``model.predict``, and
  the dynamic-defence check skipped as fra31 skips it for TensorFlow models
  (it traces a PyTorch forward pass). Everything else is pyautoattack's own
  ``run_standard_evaluation``, called once on all the images.
- Each component's seconds are the sum of its ``perturb`` calls as
  ``run_standard_evaluation`` makes them (one per batch of the images still
  robust), timed by wrapping the attack objects' ``perturb``; the total is
  the whole ``run_standard_evaluation`` call (clean predictions, the checks
  and the predictions after each batch included). Nothing is warmed up:
  the adapter's ``tf.function``\ s trace on their first calls (and again
  for every new batch shape), as they do in any use of the reference.
- One thread: this process pins every thread it has to one CPU
  (``pin_to_cpu``) and sets TensorFlow's and PyTorch's thread pools to one
  thread before either runs an operation (``limit_threads``).

With ``--ready=FILE`` the process loads everything, creates FILE and waits
for a line on its standard input before it starts, so that the caller can
start both sides at the same moment.

Example (what aabench runs):
  /tmp/autoattack-venv/bin/python -m rlfat_tf.aabench_reference \
      --model=model.keras --data=images.npz --output=reference.npz \
      --epsilon=0.03 --batch_size=100 --seed=0 --cpu=1
"""

import hashlib
import importlib.metadata
import io
import json
import os
import sys
import time

from absl import flags

# Before TensorFlow loads: keep its C++ start-up chatter off the console.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import tensorflow as tf

from rlfat_tf import cli
from rlfat_tf import errors
from rlfat_tf import files

# The standard version's components, as ``run_standard_evaluation`` names
# them, and the attribute of ``AutoAttack`` whose ``perturb`` each calls.
COMPONENTS = {"apgd-ce": "apgd", "apgd-t": "apgd_targeted", "fab-t": "fab",
              "square": "square"}
# pyautoattack's source files that the standard Linf evaluation runs.
SOURCES = ("autoattack.py", "autopgd_base.py", "checks.py", "fab_base.py",
           "fab_projections.py", "fab_tf.py", "other_utils.py", "square.py",
           "state.py", "utils_tf2.py")

FLAGS = flags.FLAGS


def define_flags(flag_values=FLAGS):
  """Defines the command's flags on ``flag_values``."""
  fv = {"flag_values": flag_values}
  flags.DEFINE_string("model", None, ".keras file of the model (written by "
                      "model.save).", **fv)
  flags.DEFINE_string("data", None, "npz with float32 ``images`` [N, H, W, "
                      "C] in [0, 1] and int ``labels`` [N].", **fv)
  flags.DEFINE_string("output", None, "npz to write the results to.", **fv)
  flags.DEFINE_float("epsilon", None, "L-infinity radius.", **fv)
  flags.DEFINE_integer("batch_size", 100, "run_standard_evaluation's "
                       "batch_size.", lower_bound=1, **fv)
  flags.DEFINE_integer("seed", 0, "AutoAttack's seed.", **fv)
  flags.DEFINE_integer("cpu", None, "Pin the process to this CPU; unset "
                       "leaves it where it is.", **fv)
  flags.DEFINE_string("ready", None, "Create this file once loaded, then "
                      "wait for a line on standard input before starting.",
                      **fv)
  for name in ("model", "data", "output", "epsilon"):
    flags.mark_flag_as_required(name, flag_values=flag_values)


def pin_to_cpu(cpu):
  """Pins every thread of this process to ``cpu``.

  ``os.sched_setaffinity(0, ...)`` moves only the calling thread on Linux;
  threads that imports started already stay where they were, so each is
  moved by its id. Threads started later inherit their creator's CPU.
  """
  for tid in os.listdir("/proc/self/task"):
    try:
      os.sched_setaffinity(int(tid), {cpu})
    except ProcessLookupError:  # The thread ended meanwhile.
      pass


def limit_threads():
  """One intra-op and one inter-op thread for TensorFlow.

  Raises:
    RuntimeError: TensorFlow has run an operation already, after which its
      thread pools are fixed.
  """
  tf.config.threading.set_intra_op_parallelism_threads(1)
  tf.config.threading.set_inter_op_parallelism_threads(1)


def thread_settings():
  """TensorFlow's thread settings and the CPUs this process may use."""
  return {"tensorflow_intra_op": tf.config.threading
                                 .get_intra_op_parallelism_threads(),
          "tensorflow_inter_op": tf.config.threading
                                 .get_inter_op_parallelism_threads(),
          "cpus": sorted(os.sched_getaffinity(0))}


def _adapter_class():
  """``CpuModelAdapter``: fra31's TF2 adapter with its results on the CPU."""
  import torch
  from pyautoattack import utils_tf2

  class CpuModelAdapter(utils_tf2.ModelAdapter):
    """fra31's ``ModelAdapter``, whose results stay on the CPU.

    The private ``__tf_to_pt`` that every public method calls ends in
    ``.cuda()``; this overrides it (by its mangled name) with the same
    conversion minus the move.
    """

    def _ModelAdapter__tf_to_pt(self, tf_tensor):  # pylint: disable=invalid-name
      return torch.from_numpy(tf_tensor.numpy())

  return CpuModelAdapter


def reference_autoattack(adapter, *, epsilon, seed):
  """pyautoattack's standard Linf AutoAttack with fra31's TensorFlow branch.

  Args:
    adapter: a ``utils_tf2.ModelAdapter`` of the model.
    epsilon: L-infinity radius.
    seed: the attacks' seed.

  Returns:
    A ``pyautoattack.AutoAttack`` whose attacks are those fra31's
    ``AutoAttack(..., is_tf_model=True)`` builds (a392200,
    ``autoattack.py``), in the standard version.
  """
  from pyautoattack import autoattack
  from pyautoattack import checks
  from pyautoattack.autopgd_base import APGDAttack, APGDAttack_targeted
  from pyautoattack.fab_tf import FABAttack_TF
  from pyautoattack.square import SquareAttack

  aa = autoattack.AutoAttack(adapter, norm="Linf", eps=epsilon, seed=seed,
                             version="standard", device="cpu")
  # fra31's is_tf_model=True branch, argument for argument.
  aa.apgd = APGDAttack(
      aa.model, n_restarts=5, n_iter=100, verbose=False, eps=aa.epsilon,
      norm=aa.norm, eot_iter=1, rho=.75, seed=aa.seed, device=aa.device,
      is_tf_model=True, logger=aa.logger)
  aa.fab = FABAttack_TF(
      aa.model, n_restarts=5, n_iter=100, eps=aa.epsilon, seed=aa.seed,
      norm=aa.norm, verbose=False, device=aa.device)
  aa.square = SquareAttack(
      aa.model.predict, p_init=.8, n_queries=5000, eps=aa.epsilon,
      norm=aa.norm, n_restarts=1, seed=aa.seed, verbose=False,
      device=aa.device, resc_schedule=False)
  aa.apgd_targeted = APGDAttack_targeted(
      aa.model, n_restarts=1, n_iter=100, verbose=False, eps=aa.epsilon,
      norm=aa.norm, eot_iter=1, rho=.75, seed=aa.seed, device=aa.device,
      is_tf_model=True, logger=aa.logger)
  aa._set_version("standard")  # pylint: disable=protected-access
  # fra31's get_logits for a TensorFlow model.
  aa.get_logits = aa.model.predict
  # fra31 passes is_tf_model=True here, which skips the check: it would
  # trace a PyTorch forward pass, and the adapter is not a torch module.
  check_dynamic = checks.check_dynamic
  checks.check_dynamic = (
      lambda model, x, is_tf_model=False, logger=None:
      check_dynamic(model, x, True, logger=logger))
  return aa


def _timed(perturb, log):
  """``perturb``, adding each call's seconds and images to ``log``."""

  def timed(x, *args, **kwargs):
    start = time.perf_counter()
    out = perturb(x, *args, **kwargs)
    log["seconds"] += time.perf_counter() - start
    log["calls"] += 1
    log["images"] += int(x.shape[0])
    return out

  return timed


def _source_digests():
  """sha256 of each of pyautoattack's files in ``SOURCES``."""
  import pyautoattack
  folder = os.path.dirname(pyautoattack.__file__)
  digests = {}
  for name in SOURCES:
    with open(os.path.join(folder, name), "rb") as f:
      digests[name] = hashlib.sha256(f.read()).hexdigest()
  return digests


def prepare(model_path, *, epsilon, seed):
  """Loads the model and builds the reference attack (nothing runs yet).

  Args:
    model_path: a ``.keras`` file of a model mapping images in [0, 1] to
      logits.
    epsilon: L-infinity radius.
    seed: AutoAttack's seed.

  Returns:
    ``(autoattack, adapter)``.
  """
  import torch
  from rlfat_tf import classifier

  torch.set_num_threads(1)
  torch.set_num_interop_threads(1)
  model = classifier.load(model_path).keras_model
  adapter = _adapter_class()(model, num_classes=model.output_shape[-1])
  return reference_autoattack(adapter, epsilon=epsilon, seed=seed), adapter


def run(aa, adapter, images, labels, *, batch_size):
  """The reference's standard evaluation of the images, timed.

  Args:
    aa, adapter: from ``prepare``.
    images: float32 [N, H, W, C] in [0, 1].
    labels: int [N] true labels.
    batch_size: ``run_standard_evaluation``'s batch size.

  Returns:
    Dict: ``total_seconds`` (the ``run_standard_evaluation`` call), and per
    component name of ``COMPONENTS`` its ``seconds``, ``calls`` and
    ``images`` (attacked, over all its calls); bool [N] ``robust`` (the
    final adversarial example is classified correctly; False for an image
    misclassified clean) and ``clean_correct`` (an untimed clean pass).
  """
  import torch

  # NCHW, as the adapter expects of a PyTorch caller.
  x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
  y = torch.from_numpy(np.asarray(labels, np.int64))
  logs = {}
  for name, attribute in COMPONENTS.items():
    logs[name] = {"seconds": 0.0, "calls": 0, "images": 0}
    attack = getattr(aa, attribute)
    attack.perturb = _timed(attack.perturb, logs[name])
  start = time.perf_counter()
  _, y_adv = aa.run_standard_evaluation(x, y, batch_size=batch_size)
  total = time.perf_counter() - start
  clean = torch.cat([adapter.predict(x[i:i + batch_size]).argmax(1)
                     for i in range(0, len(x), batch_size)])
  return {"total_seconds": total, "components": logs,
          "robust": (y_adv == y).numpy(), "clean_correct": (clean == y).numpy()}


def versions():
  """Versions of the packages the reference runs on, and its sources."""
  import torch
  import pyautoattack
  return {"pyautoattack": importlib.metadata.version("pyautoattack"),
          "pyautoattack_module_version": pyautoattack.__version__,
          "pyautoattack_sha256": _source_digests(),
          "torch": torch.__version__, "tensorflow": tf.__version__,
          "keras": importlib.metadata.version("keras"),
          "numpy": np.__version__, "python": sys.version.split()[0]}


def main():
  """Runs the reference as the parsed flags say; writes the results npz.

  Raises:
    errors.UserError: this Python cannot import pyautoattack or torch.
  """
  if FLAGS.cpu is not None:
    pin_to_cpu(FLAGS.cpu)
  limit_threads()
  with np.load(FLAGS.data) as batch:
    images, labels = batch["images"], batch["labels"]
  try:
    aa, adapter = prepare(FLAGS.model, epsilon=FLAGS.epsilon, seed=FLAGS.seed)
    info = versions()
  except ImportError as e:
    raise errors.UserError(
        f"{e}: run this module with the Python of the environment that "
        f"scripts/install_autoattack.sh creates") from None
  import torch
  if FLAGS.ready:
    files.write_text(FLAGS.ready, "ready\n")
    sys.stdin.readline()
  results = run(aa, adapter, images, labels, batch_size=FLAGS.batch_size)
  info["threads"] = {**thread_settings(),
                     "torch_intra_op": torch.get_num_threads(),
                     "torch_inter_op": torch.get_num_interop_threads()}
  info["components"] = results.pop("components")
  info["total_seconds"] = results.pop("total_seconds")
  buffer = io.BytesIO()
  np.savez(buffer, info=json.dumps(info), **results)
  files.write_bytes(FLAGS.output, buffer.getvalue())


if __name__ == "__main__":
  cli.run_absl(main, define_flags)
