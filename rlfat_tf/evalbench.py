"""What APGD-CE costs: the project's against IBM ART's, on one model and batch.

Both sides attack only the images the model classifies correctly (a
misclassified image is not robust whatever the attack does), with the same
radius, 100 iterations, step 2 eps, one random start and the same batch size:

- the project's side is its evaluation path itself: the registered
  ``apgd_ce`` attack, built from a ``robustness.EvalConfig`` as
  ``rlfat_tf.evaluate`` builds it, run by ``robustness.run_attack``, which
  finds the correctly classified images and attacks them gathered into full
  batches, one compiled ``tf.function`` call per batch, on the Keras model;
- ART 1.20's ``AutoProjectedGradientDescent`` (``loss_type="cross_entropy"``)
  runs on ``TensorFlowV2Classifier`` around the SavedModel exported from the
  same model, in its own process (``rlfat_tf.evalbench_art``) with the Python
  of the environment ``scripts/install_art.sh`` creates, so ART and its
  dependencies never enter the main environment. The two processes exchange
  npz files.

Each side is timed from the clean images to the adversarial ones (finding the
correctly classified images included), after one untimed warm-up call on the
first few images. ART's warm-up leaves nothing to load for the timed call;
``run_attack`` traces its compiled function on every call, so the project's
timed call includes one trace, as every evaluation does. Scoring the result
is not timed. The robust accuracies of the two should be close: they are a
check that both ran the same attack, not a contest.
"""

import os
import platform
import subprocess
import sys
import tempfile
import time

import keras
import numpy as np
import tensorflow as tf

from rlfat_tf import datasets
from rlfat_tf import errors
from rlfat_tf import robustness
from rlfat_tf import runs
from rlfat_tf import serving

DEFAULT_ART_PYTHON = "/tmp/art-venv/bin/python"
# The target: the project's APGD-CE at least this many times faster.
TARGET_SPEED_RATIO = 2.0
# Lines of the ART process's error output shown when it fails.
_STDERR_LINES = 20
# The project's attack: the evaluation's registered APGD-CE.
ATTACK = "apgd_ce"


def project_apgd(model, images, labels, *, epsilon, steps, batch_size,
                 warmup_examples, seed=0):
  """Times the project's APGD-CE as an evaluation runs it.

  Args:
    model: a Keras model mapping images to logits.
    images: float32 [N, H, W, C] in [0, 1].
    labels: int32 [N] true labels.
    epsilon: L-infinity radius.
    steps: APGD iterations (``--apgd_steps``).
    batch_size: images per compiled call, of the prediction and the attack.
    warmup_examples: the untimed warm-up runs on the first this many images.
    seed: seed of the evaluation's per-example random starts.

  Returns:
    Dict: ``seconds`` (timed), ``warmup_seconds``, and bool [N] arrays
    ``clean_correct`` and ``robust``.
  """
  config = robustness.EvalConfig(
      attacks=(ATTACK,), epsilon=epsilon, settings={"apgd_steps": steps},
      checks=False, batch_size=batch_size, seed=seed)
  (attack,) = config.build()

  def evaluate(n):
    return robustness.run_attack(model, attack, images[:n], labels[:n],
                                 batch_size=batch_size, seed=seed, verbose=0)

  start = time.perf_counter()
  evaluate(warmup_examples)
  warmup = time.perf_counter() - start
  start = time.perf_counter()
  out = evaluate(len(images))
  seconds = time.perf_counter() - start
  return {"seconds": seconds, "warmup_seconds": warmup,
          "clean_correct": out["attacked"], "robust": out["robust"]}


def art_apgd(saved_model, images, labels, *, epsilon, steps, batch_size,
             warmup_examples, art_python, seed=0):
  """Times ART's APGD-CE in the ART environment (``rlfat_tf.evalbench_art``).

  Args:
    saved_model: folder of the model's SavedModel (``serving.save``).
    images: float32 [N, H, W, C] in [0, 1].
    labels: int32 [N] true labels.
    epsilon: L-infinity radius.
    steps: APGD iterations (ART's ``max_iter``).
    batch_size: ART's ``batch_size``.
    warmup_examples: the untimed warm-up runs on the first this many images.
    art_python: the Python of the environment that has ART.
    seed: seed of NumPy's generator in the ART process.

  Returns:
    Dict: ``seconds`` (timed), ``warmup_seconds``, bool [N] arrays
    ``clean_correct`` and ``robust``, and ``art_version``.

  Raises:
    errors.UserError: ``art_python`` does not exist or has no ART.
    RuntimeError: the ART process failed otherwise; the message ends with its
      last error lines.
  """
  if not os.path.isfile(art_python):
    raise errors.UserError(
        f"no Python at {art_python} to run ART with: run "
        f"scripts/install_art.sh, or pass the Python of an environment "
        f"that has adversarial-robustness-toolbox 1.20")
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  with tempfile.TemporaryDirectory() as tmp:
    inputs, outputs = os.path.join(tmp, "in.npz"), os.path.join(tmp, "out.npz")
    np.savez(inputs, images=images, labels=labels)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (root, os.environ.get("PYTHONPATH")) if p))
    result = subprocess.run(
        [art_python, "-m", "rlfat_tf.evalbench_art",
         f"--saved_model={saved_model}", f"--data={inputs}",
         f"--output={outputs}", f"--epsilon={epsilon!r}", f"--steps={steps}",
         f"--batch_size={batch_size}",
         f"--warmup_examples={warmup_examples}", f"--seed={seed}"],
        capture_output=True, text=True, env=env, check=False)
    if result.returncode == 2:
      raise errors.UserError(
          f"{art_python} cannot run ART: run scripts/install_art.sh and "
          f"pass its Python ({result.stderr.strip().splitlines()[-1]})")
    if result.returncode != 0:
      tail = "\n".join(result.stderr.splitlines()[-_STDERR_LINES:])
      raise RuntimeError(f"the ART process failed with status "
                         f"{result.returncode}:\n{tail}")
    with np.load(outputs) as out:
      return {"seconds": float(out["seconds"]),
              "warmup_seconds": float(out["warmup_seconds"]),
              "clean_correct": out["clean_correct"], "robust": out["robust"],
              "art_version": str(out["art_version"])}


def _summary(timing, num_examples):
  attacked = int(np.sum(timing["clean_correct"]))
  return {"seconds": timing["seconds"],
          "warmup_seconds": timing["warmup_seconds"],
          "attacked_images": attacked,
          "seconds_per_image": timing["seconds"] / num_examples,
          "seconds_per_attacked_image": (timing["seconds"] / attacked
                                         if attacked else None),
          "clean_accuracy": attacked / num_examples,
          "robust_accuracy": float(np.mean(timing["robust"]))}


def compare(model, saved_model, images, labels, *, epsilon, steps=100,
            batch_size=500, warmup_examples=16, art_python=DEFAULT_ART_PYTHON,
            seed=0):
  """Times the project's APGD-CE and ART's on the same model and images.

  The project's side runs first, then ART's, one after the other so that
  neither competes with the other for the machine.

  Args:
    model: a Keras model mapping images to logits.
    saved_model: the same model as a SavedModel (``serving.save``).
    images: float32 [N, H, W, C] in [0, 1].
    labels: int [N] true labels.
    epsilon: L-infinity radius.
    steps: APGD iterations.
    batch_size: images per batch, on both sides.
    warmup_examples: each side's untimed warm-up attacks this many images.
    art_python: the Python of the environment that has ART.
    seed: seed of both sides' random starts (they draw differently).

  Returns:
    Dict: the settings, ``project`` and ``art`` (each with ``seconds``,
    ``warmup_seconds``, ``attacked_images``, ``seconds_per_image``,
    ``seconds_per_attacked_image``, ``clean_accuracy``,
    ``robust_accuracy``; ART's also ``version``), ``speed_ratio`` (ART's
    seconds / the project's), ``clean_agreement`` and ``robust_agreement``
    (fractions of images on which the two sides' verdicts agree) and
    ``target`` (the ratio against ``TARGET_SPEED_RATIO``).
  """
  images = np.asarray(images, np.float32)
  labels = np.asarray(labels, np.int32)
  settings = {"num_examples": len(images), "epsilon": epsilon,
              "steps": steps, "batch_size": batch_size,
              "warmup_examples": warmup_examples, "seed": seed}
  ours = project_apgd(model, images, labels, epsilon=epsilon, steps=steps,
                      batch_size=batch_size, warmup_examples=warmup_examples,
                      seed=seed)
  theirs = art_apgd(saved_model, images, labels, epsilon=epsilon,
                    steps=steps, batch_size=batch_size,
                    warmup_examples=warmup_examples, art_python=art_python,
                    seed=seed)
  ratio = theirs["seconds"] / ours["seconds"]
  return {
      "settings": settings,
      "project": _summary(ours, len(images)),
      "art": {**_summary(theirs, len(images)),
              "version": theirs["art_version"]},
      "speed_ratio": ratio,
      "clean_agreement": float(np.mean(ours["clean_correct"]
                                       == theirs["clean_correct"])),
      "robust_agreement": float(np.mean(ours["robust"] == theirs["robust"])),
      "target": {"name": f"APGD-CE at least {TARGET_SPEED_RATIO:g}x ART's "
                         f"speed", "value": ratio,
                 "met": ratio >= TARGET_SPEED_RATIO},
  }


def first_test_images(record, data_dir, num_examples):
  """A run's first ``num_examples`` test images, as float32 in [0, 1].

  Args:
    record: the run's ``runs.RunRecord``.
    data_dir: the run's data folder if it moved; None means the run's.
    num_examples: how many.

  Returns:
    ``(images, labels)``: float32 [N, H, W, C] and int [N].

  Raises:
    errors.UserError: the test split has fewer images.
  """
  images, labels = runs.load_split(record, "test", data_dir)
  if num_examples > len(images):
    raise errors.UserError(
        f"{num_examples} examples asked for, the test split has "
        f"{len(images)}: ask for at most {len(images)}")
  return (robustness.as_float(datasets.in_memory(images[:num_examples])),
          labels[:num_examples])


def run(model_dir, *, which="last", data_dir=None, num_examples=500,
        epsilon=None, steps=100, batch_size=500, warmup_examples=16,
        art_python=DEFAULT_ART_PYTHON, seed=0):
  """Restores a run, exports its SavedModel and compares the two APGD-CEs.

  Args:
    model_dir: the training run.
    which: its "last" or "best" checkpoint.
    data_dir: the run's data folder if it moved (see ``runs.load_split``);
      None means the run's.
    num_examples: the first this many test images.
    epsilon: L-infinity radius; None means the run's training epsilon.
    steps, batch_size, warmup_examples, art_python, seed: as ``compare``.

  Returns:
    ``compare``'s dict, plus ``run`` (folder, checkpoint, its step, dataset,
    architecture) and ``machine`` (CPUs, versions, load average before and
    after).

  Raises:
    errors.UserError: no run or checkpoint, too few test images, or no ART.
  """
  load_start = os.getloadavg()
  model, record, checkpoint = runs.restore_model(model_dir, which,
                                                 data_dir=data_dir)
  images, labels = first_test_images(record, data_dir, num_examples)
  with tempfile.TemporaryDirectory() as tmp:
    saved_model = os.path.join(tmp, "saved_model")
    serving.save(model, runs.dataset_spec(record, data_dir).class_names,
                 saved_model)
    results = compare(
        model, saved_model, images, labels,
        epsilon=epsilon or record.epsilon, steps=steps,
        batch_size=batch_size, warmup_examples=warmup_examples,
        art_python=art_python, seed=seed)
  results["run"] = {
      "model_dir": model_dir, "checkpoint": checkpoint,
      "step": int(checkpoint.rsplit("-", 1)[-1]),
      "dataset": record.dataset,
      "architecture": runs.architecture(record)}
  results["machine"] = {
      "cpus": os.cpu_count(), "platform": platform.platform(),
      "tensorflow": tf.__version__, "keras": keras.__version__,
      "python": sys.version.split()[0],
      "load_average_start": load_start, "load_average_end": os.getloadavg()}
  return results


def format_table(results):
  """The comparison as a plain-text table."""
  s = results["settings"]
  lines = []
  if "run" in results:
    r, m = results["run"], results["machine"]
    lines += [f"{r['architecture']} {r['dataset']}, step {r['step']}; "
              f"{m['cpus']} CPUs, load {m['load_average_start'][0]:.1f} -> "
              f"{m['load_average_end'][0]:.1f}"]
  lines += [
      f"APGD-CE, {s['steps']} iterations, eps {s['epsilon']:g}, "
      f"{s['num_examples']} images, batch {s['batch_size']}", "",
      f"{'':<14}{'attacked':>9}{'s':>9}{'s/image':>9}{'s/attacked':>11}"
      f"{'clean':>8}{'robust':>8}"]
  for key, name in (("project", "rlfat_tf"),
                    ("art", f"ART {results['art']['version']}")):
    e = results[key]
    per_attacked = e["seconds_per_attacked_image"]
    lines.append(
        f"{name:<14}{e['attacked_images']:>9}{e['seconds']:>9.1f}"
        f"{e['seconds_per_image']:>9.3f}"
        f"{per_attacked if per_attacked is not None else float('nan'):>11.3f}"
        f"{e['clean_accuracy']:>8.1%}{e['robust_accuracy']:>8.1%}")
  target = results["target"]
  lines += [
      "", f"speed ratio (ART s / rlfat_tf s): {results['speed_ratio']:.2f}; "
      f"verdicts agree on {results['robust_agreement']:.1%} of the images",
      f"{'met    ' if target['met'] else 'NOT met'} {target['name']}: "
      f"{target['value']:.2f}"]
  return "\n".join(lines)
