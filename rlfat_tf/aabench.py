"""What standard AutoAttack costs: the project's against the reference's.

Both sides run standard AutoAttack (APGD-CE, APGD-T, FAB-T, Square; Linf)
on the same Keras model and the same images in [0, 1], with the same radius,
batch size and seed, at the same time, each as one single-threaded process
pinned to its own CPU:

- the project's side is its evaluation path itself, in this process:
  ``robustness.evaluate`` with ``EvalConfig(attacks=("autoattack",),
  checks=False)``, which times each stage and gives per-example verdicts;
  its total is the whole ``evaluate`` call (the clean pass included);
- the reference is pyautoattack 0.2.0, fra31/auto-attack (a392200)
  packaged for PyPI, driven through fra31's own TensorFlow 2 adapter in its
  own process (``rlfat_tf.aabench_reference``, which says how and why), with
  the Python of the environment that ``scripts/install_autoattack.sh``
  creates, so torch and pyautoattack never enter the main environment. The
  model goes there as a ``.keras`` file, the images and the results as npz
  files.

Side by side rather than one after the other, so that a change of machine
load hits both alike, and each on its own core with one thread, so that
neither takes the other's: ``run`` pins this process to the first CPU it may
use and the reference to the second, and sets both sides' thread pools to
one thread (TensorFlow's here and there, PyTorch's there) before any
operation runs. The reference loads first and then waits; both start their
timed call at the same moment. The one that ends first leaves the machine to
the other for the rest (each still on its own core).

Neither side is warmed up: each pays for its own tracing, as every
evaluation does (the project traces each stage's compiled call; the
reference's adapter traces its functions per batch shape). The per-image
verdicts should mostly agree: both implement the same attacks, but their
random draws differ, so an image near the boundary may fall either way.
"""

import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import keras
import numpy as np
import tensorflow as tf

from rlfat_tf import aabench_reference
from rlfat_tf import attacks
from rlfat_tf import errors
from rlfat_tf import evalbench
from rlfat_tf import robustness
from rlfat_tf import runs

DEFAULT_VENV = "/tmp/autoattack-venv"
EPSILON = 0.03
# The components in the order they run: the project's stage name -> the
# reference's name and the table's.
COMPONENTS = {"apgd_ce": ("apgd-ce", "APGD-CE"), "apgd_t": ("apgd-t", "APGD-T"),
              "fab_t": ("fab-t", "FAB-T"), "square": ("square", "Square")}
# Lines of the reference process's log shown when it fails.
_LOG_LINES = 20
# How often to look whether the reference has loaded, in seconds.
_POLL_SECONDS = 0.1


def venv_python(venv):
  """The Python of the reference environment ``venv``.

  Raises:
    errors.UserError: it has none.
  """
  python = os.path.join(venv, "bin", "python")
  if not os.path.isfile(python):
    raise errors.UserError(
        f"--venv={venv} has no bin/python to run the reference AutoAttack "
        f"with: run scripts/install_autoattack.sh {venv}, or pass the "
        f"--venv it created")
  return python


def model_passes(values=None):
  """Model passes per attacked image of each component, if none breaks.

  APGD iterates ``apgd_steps`` times, each a forward-backward pass, and
  APGD-T does so for each of its ``apgd_targets``; FAB-T's ``fab_steps``
  per target each take a forward-backward pass (the gradients) and a forward
  pass (the new point); each of Square's ``square_queries`` is a forward
  pass. An image broken early needs fewer.

  Args:
    values: attack settings (``attacks.default_values()`` by default).

  Returns:
    Per stage name of ``COMPONENTS``, ``(forward, forward_backward)``.
  """
  v = values or attacks.default_values()
  return {"apgd_ce": (0, v["apgd_steps"]),
          "apgd_t": (0, v["apgd_steps"] * v["apgd_targets"]),
          "fab_t": (v["fab_steps"] * v["fab_targets"],) * 2,
          "square": (v["square_queries"], 0)}


def pass_costs(model, images, *, repeats=20):
  """Seconds per image of a compiled forward, and forward-backward, pass.

  Each is the mean of ``repeats`` calls on ``images`` in inference mode
  after one untimed call (the trace), with the threads as they are.

  Args:
    model: a Keras model mapping images to logits.
    images: float32 [B, H, W, C], the batch to time.
    repeats: timed calls of each.

  Returns:
    Dict: ``forward`` and ``forward_backward`` seconds per image, and the
    ``batch_size`` and ``repeats`` they were timed at.
  """
  x = tf.constant(images)
  labels = tf.zeros(len(images), tf.int32)

  def forward(x):
    return model(x, training=False)

  def forward_backward(x):
    with tf.GradientTape() as tape:
      tape.watch(x)
      loss = tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(
          labels, model(x, training=False)))
    return tape.gradient(loss, x)

  out = {"batch_size": len(images), "repeats": repeats}
  for name, fn in (("forward", forward),
                   ("forward_backward", forward_backward)):
    call = tf.function(fn)
    call(x).numpy()
    start = time.perf_counter()
    for _ in range(repeats):
      result = call(x)
    result.numpy()
    out[name] = (time.perf_counter() - start) / repeats / len(images)
  return out


def floor_seconds(seconds, costs, passes=None):
  """What the model passes alone cost each component, and in all.

  Args:
    seconds: ``timing_table``'s dict (the images each component attacked).
    costs: ``pass_costs``'s dict.
    passes: ``model_passes``'s dict (default: the standard settings).

  Returns:
    Per stage name and "total", seconds: the images it attacked times its
    passes per image (``model_passes``) at their cost per image. A bound
    from below where no attacked image breaks.
  """
  passes = passes or model_passes()
  out = {}
  for stage, (forward, forward_backward) in passes.items():
    out[stage] = seconds[stage]["images"]["project"] * (
        forward * costs["forward"]
        + forward_backward * costs["forward_backward"])
  out["total"] = sum(out.values())
  return out


def two_cpus():
  """The CPUs of the two sides: the first two this process may use.

  Raises:
    errors.UserError: it may use only one.
  """
  cpus = sorted(os.sched_getaffinity(0))
  if len(cpus) < 2:
    raise errors.UserError(
        f"the AutoAttack benchmark runs both sides at once, each on its own "
        f"CPU, and this process may use only CPU {cpus[0]}: run it where it "
        f"may use two")
  return cpus[0], cpus[1]


def project_autoattack(model, images, labels, *, epsilon, batch_size, seed):
  """The project's standard AutoAttack, as an evaluation runs it, timed.

  Args:
    model: a Keras model mapping images to logits.
    images: float32 [N, H, W, C] in [0, 1].
    labels: int [N] true labels.
    epsilon: L-infinity radius.
    batch_size: images per compiled call.
    seed: the evaluation's seed.

  Returns:
    Dict: ``total_seconds`` (the ``evaluate`` call), ``autoattack_seconds``
    (evaluate's own time of the attack, without the clean pass), per stage
    name of ``COMPONENTS`` its ``seconds`` and ``images`` (attacked: those
    still robust when it starts), bool [N] ``robust`` and
    ``clean_correct``.
  """
  config = robustness.EvalConfig(attacks=("autoattack",), epsilon=epsilon,
                                 checks=False, batch_size=batch_size,
                                 seed=seed)
  start = time.perf_counter()
  out = robustness.evaluate(model, images, labels, config, verbose=0,
                            keep_adversarial=())
  total = time.perf_counter() - start
  entry, metrics, n = out["attacks"]["autoattack"], out["metrics"], len(images)
  components, before = {}, metrics["test/clean_accuracy"]
  for stage in COMPONENTS:
    components[stage] = {"seconds": entry[stage]["seconds"],
                         "images": round(before * n)}
    before = metrics[f"test/autoattack/after_{stage}_accuracy"]
  return {"total_seconds": total, "autoattack_seconds": entry["seconds"],
          "components": components,
          "robust": out["per_example"]["autoattack"],
          "clean_correct": out["per_example"]["clean"]}


class Reference:
  """The reference AutoAttack in its own process (``aabench_reference``).

  ``start`` launches it; it loads the model and builds the attack, then
  waits; ``go`` starts its timed run; ``result`` waits for it and reads the
  results. Its output goes to a log file, never to a pipe that could fill
  up and stall it while this process is busy.
  """

  def __init__(self, python, model_path, images, labels, *, epsilon,
               batch_size, seed, cpu, folder):
    """Writes the images to ``folder`` and starts the process.

    Args:
      python: the reference environment's Python (``venv_python``).
      model_path: ``.keras`` file of the model.
      images: float32 [N, H, W, C] in [0, 1].
      labels: int [N] true labels.
      epsilon: L-infinity radius.
      batch_size: ``run_standard_evaluation``'s batch size.
      seed: AutoAttack's seed.
      cpu: the CPU to pin the process to, or None.
      folder: an existing folder for the exchanged files and the log.
    """
    self._ready = os.path.join(folder, "ready")
    self._output = os.path.join(folder, "reference.npz")
    self._log_path = os.path.join(folder, "reference.log")
    self.python = python
    inputs = os.path.join(folder, "images.npz")
    np.savez(inputs, images=images, labels=labels)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (root, os.environ.get("PYTHONPATH")) if p))
    argv = [python, "-m", "rlfat_tf.aabench_reference",
            f"--model={model_path}", f"--data={inputs}",
            f"--output={self._output}", f"--epsilon={epsilon!r}",
            f"--batch_size={batch_size}", f"--seed={seed}",
            f"--ready={self._ready}"]
    if cpu is not None:
      argv.append(f"--cpu={cpu}")
    with open(self._log_path, "w", encoding="utf-8") as log:
      self._process = subprocess.Popen(argv, stdin=subprocess.PIPE,
                                       stdout=log, stderr=subprocess.STDOUT,
                                       text=True, env=env)

  def wait_ready(self):
    """Waits until the process has loaded everything and waits itself.

    Raises:
      errors.UserError, RuntimeError: it ended instead (see ``result``).
    """
    while not os.path.exists(self._ready):
      if self._process.poll() is not None:
        self._fail()
      time.sleep(_POLL_SECONDS)

  def go(self):
    """Lets the waiting process start its timed run."""
    self._process.stdin.write("go\n")
    self._process.stdin.close()

  def result(self):
    """Waits for the process; its results.

    Returns:
      Dict: ``total_seconds``, per reference component name its
      ``seconds``, ``calls`` and ``images``, bool [N] ``robust`` and
      ``clean_correct``, ``versions`` (with the sources' sha256) and
      ``threads``.

    Raises:
      errors.UserError: the Python cannot run the reference.
      RuntimeError: the process failed otherwise; the message ends with its
        last log lines.
    """
    if self._process.wait() != 0:
      self._fail()
    with np.load(self._output) as out:
      info = json.loads(str(out["info"]))
      threads = info.pop("threads")
      components = info.pop("components")
      return {"total_seconds": info.pop("total_seconds"),
              "components": components, "robust": out["robust"],
              "clean_correct": out["clean_correct"], "versions": info,
              "threads": threads}

  def stop(self):
    """Ends the process if it still runs (after a failure on this side)."""
    if self._process.poll() is None:
      self._process.kill()
      self._process.wait()

  def _fail(self):
    status = self._process.wait()
    with open(self._log_path, encoding="utf-8") as f:
      lines = f.read().splitlines()
    if status == 2:
      raise errors.UserError(
          f"{self.python} cannot run the reference AutoAttack: run "
          f"scripts/install_autoattack.sh and pass its --venv "
          f"({lines[-1] if lines else 'no output'})")
    tail = "\n".join(lines[-_LOG_LINES:])
    raise RuntimeError(f"the reference process failed with status "
                       f"{status}:\n{tail}")


def compare_verdicts(project, reference):
  """Where the two sides' per-image verdicts differ.

  Args:
    project, reference: bool [N], True where an image stays robust.

  Returns:
    Dict: ``differing`` (count), ``differing_indices``,
    ``robust_only_in_project`` and ``robust_only_in_reference`` (counts).
  """
  project = np.asarray(project, bool)
  reference = np.asarray(reference, bool)
  if project.shape != reference.shape:
    raise ValueError(f"verdicts of {project.shape} and {reference.shape} "
                     f"images")
  return {"differing": int(np.sum(project != reference)),
          "differing_indices": np.flatnonzero(project != reference).tolist(),
          "robust_only_in_project": int(np.sum(project & ~reference)),
          "robust_only_in_reference": int(np.sum(reference & ~project))}


def timing_table(project, reference):
  """Seconds of both sides per component and in total, and their ratios.

  Args:
    project: ``project_autoattack``'s dict (``components``, keyed by the
      project's stage names, and ``total_seconds``).
    reference: ``Reference.result``'s dict (``components`` keyed by the
      reference's names, and ``total_seconds``).

  Returns:
    Dict: per project stage name and "total", ``project`` and ``reference``
    seconds and ``ratio`` (reference / project; None where the project
    took no time, as when no image was left to attack), and per stage the
    ``images`` each side attacked.
  """
  def row(ours, theirs):
    return {"project": ours, "reference": theirs,
            "ratio": theirs / ours if ours > 0 else None}

  table = {}
  for stage, (name, _) in COMPONENTS.items():
    ours, theirs = project["components"][stage], reference["components"][name]
    table[stage] = {**row(ours["seconds"], theirs["seconds"]),
                    "images": {"project": ours["images"],
                               "reference": theirs["images"]}}
  table["total"] = row(project["total_seconds"], reference["total_seconds"])
  return table


def cpu_model():
  """The CPU's model name (Linux's /proc/cpuinfo), or platform's guess."""
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor()


def compare(model, model_path, images, labels, *, python, epsilon=EPSILON,
            batch_size=100, seed=0, cpus=(None, None)):
  """Runs both AutoAttacks on the same model and images, side by side.

  Args:
    model: a Keras model mapping images to logits.
    model_path: the same model as a ``.keras`` file (``model.save``).
    images: float32 [N, H, W, C] in [0, 1].
    labels: int [N] true labels.
    python: the reference environment's Python (``venv_python``).
    epsilon: L-infinity radius.
    batch_size: images per batch, on both sides.
    seed: both sides' seed (they draw differently).
    cpus: (this process's CPU, the reference's): the reference is pinned to
      the second; this process is only recorded (``run`` pins it).

  Returns:
    Dict: ``settings``, ``seconds`` (``timing_table``), ``verdicts``
    (``compare_verdicts`` of the robust verdicts, plus ``clean_differing``),
    ``project`` and ``reference`` (clean and robust accuracy, threads; the
    project's ``autoattack_seconds``, the reference's ``calls`` per
    component and ``versions``).

  Raises:
    errors.UserError: ``python`` cannot run the reference.
    RuntimeError: the reference process failed.
  """
  images = np.asarray(images, np.float32)
  labels = np.asarray(labels, np.int32)
  with tempfile.TemporaryDirectory() as tmp:
    reference = Reference(python, model_path, images, labels,
                          epsilon=epsilon, batch_size=batch_size, seed=seed,
                          cpu=cpus[1], folder=tmp)
    try:
      reference.wait_ready()
      reference.go()
      ours = project_autoattack(model, images, labels, epsilon=epsilon,
                                batch_size=batch_size, seed=seed)
      theirs = reference.result()
    finally:
      reference.stop()
  verdicts = compare_verdicts(ours["robust"], theirs["robust"])
  verdicts["clean_differing"] = int(np.sum(ours["clean_correct"]
                                           != theirs["clean_correct"]))
  return {
      "settings": {"num_examples": len(images), "epsilon": epsilon,
                   "norm": "Linf", "version": "standard",
                   "batch_size": batch_size, "seed": seed},
      "seconds": timing_table(ours, theirs),
      "verdicts": verdicts,
      "project": {"clean_accuracy": float(np.mean(ours["clean_correct"])),
                  "robust_accuracy": float(np.mean(ours["robust"])),
                  "autoattack_seconds": ours["autoattack_seconds"],
                  "threads": aabench_reference.thread_settings()},
      "reference": {"clean_accuracy": float(np.mean(theirs["clean_correct"])),
                    "robust_accuracy": float(np.mean(theirs["robust"])),
                    "calls": {n: c["calls"]
                              for n, c in theirs["components"].items()},
                    "versions": theirs["versions"],
                    "threads": theirs["threads"]},
  }


def run(model_dir, *, data_dir=None, num_examples=500, epsilon=EPSILON,
        batch_size=100, seed=0, venv=DEFAULT_VENV):
  """Restores a run and compares the two AutoAttacks on its test images.

  Pins this process to its CPU and limits TensorFlow to one thread first, so
  it must run before this process has run any TensorFlow operation.

  Args:
    model_dir: the training run; its last checkpoint is attacked.
    data_dir: the run's data folder if it moved (see ``runs.load_split``);
      None means the run's.
    num_examples: the first this many test images.
    epsilon, batch_size, seed: as ``compare``.
    venv: the reference environment (``scripts/install_autoattack.sh``).

  Returns:
    ``compare``'s dict, plus ``run`` (folder, checkpoint, its step, dataset,
    architecture), ``machine`` (CPU model, cores, the two sides' CPUs,
    load average before and after, versions) and ``model_passes`` (the
    model's pass costs per image, ``pass_costs``, and the floor they put
    under each component, ``floor_seconds``).

  Raises:
    errors.UserError: no reference environment, one CPU only, no run or
      checkpoint, or too few test images.
  """
  python = venv_python(venv)
  cpus = two_cpus()
  load_start = os.getloadavg()
  aabench_reference.pin_to_cpu(cpus[0])
  aabench_reference.limit_threads()
  model, record, checkpoint = runs.restore_model(
      model_dir, "last", data_dir=data_dir, tfds_data_dir=None)
  images, labels = evalbench.first_test_images(record, data_dir,
                                               num_examples)
  with tempfile.TemporaryDirectory() as tmp:
    model_path = os.path.join(tmp, "model.keras")
    model.save(model_path)
    results = compare(model, model_path, images, labels,
                      python=python, epsilon=epsilon, batch_size=batch_size,
                      seed=seed, cpus=cpus)
  # Timed once both sides have ended, on this process's CPU and thread.
  costs = pass_costs(model, images[:batch_size])
  results["model_passes"] = {
      "seconds_per_image": costs,
      "floor_seconds": floor_seconds(results["seconds"], costs)}
  results["run"] = {
      "model_dir": model_dir, "checkpoint": checkpoint,
      "step": runs.checkpoint_number(checkpoint), "dataset": record.dataset,
      "architecture": runs.architecture(record)}
  results["machine"] = {
      "cpu_model": cpu_model(), "cores": os.cpu_count(),
      "platform": platform.platform(), "project_cpu": cpus[0],
      "reference_cpu": cpus[1],
      "load_average_start": load_start, "load_average_end": os.getloadavg(),
      "tensorflow": tf.__version__, "keras": keras.__version__,
      "numpy": np.__version__, "python": sys.version.split()[0],
      "venv": venv}
  return results


def format_table(results):
  """The comparison as a plain-text table."""
  s, sec, v = results["settings"], results["seconds"], results["verdicts"]
  ours, theirs = results["project"], results["reference"]
  versions = theirs["versions"]
  lines = []
  if "run" in results:
    r, m = results["run"], results["machine"]
    lines += [f"{r['architecture']} {r['dataset']}, step {r['step']}; "
              f"{m['cpu_model']}, {m['cores']} cores, load "
              f"{m['load_average_start'][0]:.2f} -> "
              f"{m['load_average_end'][0]:.2f}",
              f"rlfat_tf on CPU {m['project_cpu']}, pyautoattack "
              f"{versions['pyautoattack']} (torch {versions['torch']}) on "
              f"CPU {m['reference_cpu']}, side by side, one thread each"]
  lines += [
      f"standard AutoAttack, Linf eps {s['epsilon']:g}, "
      f"{s['num_examples']} images, batch {s['batch_size']}, seed "
      f"{s['seed']}", "",
      f"{'':<9}{'images':>8}{'rlfat_tf s':>12}{'reference s':>13}"
      f"{'ref/rlfat_tf':>14}"]
  floor = results.get("model_passes", {}).get("floor_seconds")
  if floor:
    lines[-1] += f"{'passes s':>10}"
  for key, row in sec.items():
    label = COMPONENTS[key][1] if key in COMPONENTS else "total"
    images = (f"{row['images']['project']}/{row['images']['reference']}"
              if "images" in row else "")
    ratio = f"{row['ratio']:.2f}" if row["ratio"] is not None else "-"
    lines.append(f"{label:<9}{images:>8}{row['project']:>12.1f}"
                 f"{row['reference']:>13.1f}{ratio:>14}"
                 + (f"{floor[key]:>10.1f}" if floor else ""))
  lines += [
      "(images: attacked by rlfat_tf / by the reference, those still robust "
      "when the component starts)"]
  if floor:
    costs = results["model_passes"]["seconds_per_image"]
    lines.append(
        f"(passes: what the model's passes alone cost the images rlfat_tf "
        f"attacked, {1e3 * costs['forward']:.2f} ms forward and "
        f"{1e3 * costs['forward_backward']:.2f} ms forward-backward per "
        f"image at batch {costs['batch_size']}; below it where images "
        f"break)")
  lines += [
      "",
      f"clean accuracy {ours['clean_accuracy']:.1%} / "
      f"{theirs['clean_accuracy']:.1%}, robust accuracy "
      f"{ours['robust_accuracy']:.1%} / {theirs['robust_accuracy']:.1%} "
      f"(rlfat_tf / reference)",
      f"per-image verdicts differ on {v['differing']} of "
      f"{s['num_examples']} images ({v['robust_only_in_project']} robust "
      f"only for rlfat_tf, {v['robust_only_in_reference']} only for the "
      f"reference)"]
  return "\n".join(lines)
