r"""Times IBM ART's APGD-CE on a SavedModel: the other side of evalbench.

``rlfat_tf.evalbench`` runs this module as a subprocess with the Python of
the environment that ``scripts/install_art.sh`` creates, where the
adversarial-robustness-toolbox (ART) is installed beside the project's own
TensorFlow; the main environment never imports ART. The two processes
exchange npz files: the images and labels go in, ART's per-example verdicts
and its time come out.

ART attacks the SavedModel that ``rlfat_tf.serving`` writes, through its
``serving_default`` signature, whose graph calls the model with
``training=False``. ART's ``TensorFlowV2Classifier`` passes
``training=training_mode`` on every call (``predict``, ``compute_loss``,
``loss_gradient``), False unless asked, and its APGD never asks; the wrapper
here refuses ``training=True``, so a run that completes attacked the model in
inference mode.

Example (what evalbench runs):
  /tmp/art-venv/bin/python -m rlfat_tf.evalbench_art --saved_model=DIR \
      --data=batch.npz --output=art.npz --epsilon=0.03
"""

import io
import os
import time

from absl import flags

# Before TensorFlow loads: keep its C++ start-up chatter off the console.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import tensorflow as tf

from rlfat_tf import cli
from rlfat_tf import errors
from rlfat_tf import files

FLAGS = flags.FLAGS


def define_flags(flag_values=FLAGS):
  """Defines the command's flags on ``flag_values``."""
  fv = {"flag_values": flag_values}
  flags.DEFINE_string("saved_model", None, "SavedModel folder written by "
                      "rlfat_tf.serving.save.", **fv)
  flags.DEFINE_string("data", None, "npz with float32 ``images`` [N, H, W, "
                      "C] in [0, 1] and int ``labels`` [N].", **fv)
  flags.DEFINE_string("output", None, "npz to write the results to.", **fv)
  flags.DEFINE_float("epsilon", None, "L-infinity radius.", **fv)
  flags.DEFINE_integer("steps", 100, "APGD iterations.", lower_bound=1, **fv)
  flags.DEFINE_integer("batch_size", 500, "ART's batch_size.", lower_bound=1,
                       **fv)
  flags.DEFINE_integer("warmup_examples", 16, "Images of the untimed "
                       "warm-up call.", lower_bound=1, **fv)
  flags.DEFINE_integer("seed", 0, "Seed of NumPy's generator, which draws "
                       "ART's random start.", **fv)
  for name in ("saved_model", "data", "output", "epsilon"):
    flags.mark_flag_as_required(name, flag_values=flag_values)


class InferenceLogits:
  """The logits of a SavedModel, as the callable ART's classifier calls.

  Attributes:
    num_classes: classes of the model.
    image_shape: (H, W, C) of its images.
  """

  def __init__(self, saved_model):
    """Loads the model.

    Args:
      saved_model: folder of a SavedModel with a ``serving_default``
        signature that takes ``images`` and returns ``logits``.
    """
    # The signature holds its variables only weakly: the loaded object must
    # live as long as the signature is called.
    self._loaded = tf.saved_model.load(saved_model)
    self._serve = self._loaded.signatures["serving_default"]
    self.num_classes = self._serve.structured_outputs["logits"].shape[-1]
    self.image_shape = tuple(
        self._serve.structured_input_signature[1]["images"].shape[1:])

  def __call__(self, x, training=False):
    """Logits of ``x`` (cast to float32: ART probes with float64 arrays).

    Raises:
      ValueError: ``training`` is true.
    """
    if training:
      raise ValueError("ART called the model in training mode; evaluation "
                       "attacks must run it in inference mode")
    return self._serve(images=tf.cast(x, tf.float32))["logits"]


def run(saved_model, images, labels, *, epsilon, steps, batch_size,
        warmup_examples, seed):
  """ART's APGD-CE on the images, timed after one warm-up call.

  Args:
    saved_model: SavedModel folder (see ``InferenceLogits``).
    images: float32 [N, H, W, C] in [0, 1].
    labels: int [N] true labels.
    epsilon: L-infinity radius.
    steps: APGD iterations (ART's ``max_iter``).
    batch_size: ART's ``batch_size``.
    warmup_examples: the warm-up attacks the first this many images.
    seed: seed of NumPy's global generator, ART's source of randomness.

  Returns:
    Dict: ``seconds`` (the timed ``generate`` call), ``warmup_seconds``,
    ``clean_correct`` and ``robust`` (bool [N], from ART's own predictions),
    ``art_version``.
  """
  import art
  from art.attacks.evasion import AutoProjectedGradientDescent
  from art.estimators.classification import TensorFlowV2Classifier

  model = InferenceLogits(saved_model)
  classifier = TensorFlowV2Classifier(
      model=model, nb_classes=model.num_classes,
      input_shape=model.image_shape,
      loss_object=tf.keras.losses.SparseCategoricalCrossentropy(
          from_logits=True),
      clip_values=(0.0, 1.0))
  attack = AutoProjectedGradientDescent(
      estimator=classifier, norm=np.inf, eps=epsilon, eps_step=2 * epsilon,
      max_iter=steps, targeted=False, nb_random_init=1,
      batch_size=batch_size, loss_type="cross_entropy", verbose=False)
  np.random.seed(seed)
  start = time.perf_counter()
  attack.generate(images[:warmup_examples], labels[:warmup_examples])
  warmup = time.perf_counter() - start
  start = time.perf_counter()
  adversarial = attack.generate(images, labels)
  seconds = time.perf_counter() - start
  predict = lambda x: np.argmax(classifier.predict(x), axis=1)
  return {"seconds": seconds, "warmup_seconds": warmup,
          "clean_correct": predict(images) == labels,
          "robust": predict(adversarial) == labels,
          "art_version": art.__version__}


def main():
  """Runs ART's APGD-CE as the parsed flags say; writes the results npz.

  Raises:
    errors.UserError: this Python cannot import ART.
  """
  with np.load(FLAGS.data) as batch:
    images, labels = batch["images"], batch["labels"]
  try:
    results = run(FLAGS.saved_model, images, labels, epsilon=FLAGS.epsilon,
                  steps=FLAGS.steps, batch_size=FLAGS.batch_size,
                  warmup_examples=FLAGS.warmup_examples, seed=FLAGS.seed)
  except ImportError as e:
    raise errors.UserError(
        f"{e}: run this module with the Python of the environment that "
        f"scripts/install_art.sh creates") from None
  buffer = io.BytesIO()
  np.savez(buffer, **results)
  files.write_bytes(FLAGS.output, buffer.getvalue())


if __name__ == "__main__":
  cli.run_absl(main, define_flags)
