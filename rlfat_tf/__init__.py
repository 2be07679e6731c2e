"""rlfat-tf: Robust Local Features for Adversarial Training in TensorFlow 2 / Keras 3.

The commands (``python -m rlfat_tf.train``, ``.evaluate``, ``.export``, ...)
are built on this library; everything they do can be called from Python on
one's own Keras model and data. Public names:

- ``evaluate_robustness(model, images, labels, *, epsilon, attacks=...)``:
  robust accuracy under AutoAttack (or any registered attack) with the
  integrity checks, on a ``keras.Model``, a SavedModel signature or a
  function; returns a ``Report`` (metrics, per-example verdicts, ``write``).
- ``Report``: what ``evaluate_robustness`` returns.
- ``attacks``: the attack registry; ``attacks.get("apgd_t", epsilon=...)``
  builds an attack, ``attacks.perturb(attack, model, images, labels)`` runs
  it on a batch.
- ``load_model(path, signature=None, input_scale=1.0)``: a ``.keras`` file or
  a SavedModel folder as a classifier the attacks call.
- ``wrap_model(model, input_scale=1.0)``: a SavedModel signature or a
  function (or a [0, 255] model) as such a classifier.
- ``AdversarialTrainer(model, method="rlfat_p", epsilon=...)``: a
  ``keras.Model`` that trains ``model`` adversarially through ``compile`` /
  ``fit`` (callbacks, strategies, mixed precision), with the command-line
  trainer's own gradient step.
- ``RandomBlockShuffle``: the Random Block Shuffle as a keras-cv
  augmentation layer.
- ``methods``: the registry of training methods (PGDAT, TRADES, RLFAT_P,
  RLFAT_T and the RBSAT ablations); ``methods.get(name).objective`` is a
  method's loss.
- ``models``: the architecture registry (``models.build``).
- ``datasets``: the dataset registry (``datasets.get``, ``load_split``), which
  also names any tensorflow-datasets dataset (``tfds:NAME``) and folders of
  images (``folder``).

Names load on first use, so ``import rlfat_tf`` stays free of TensorFlow for
the modules that do not need it (``rlfat_tf.edge_eval`` runs with LiteRT
alone).
"""

import importlib

# Public name -> (module, attribute or None for the module itself).
_PUBLIC = {
    "evaluate_robustness": ("rlfat_tf.robustness", "evaluate_robustness"),
    "Report": ("rlfat_tf.robustness", "Report"),
    "attacks": ("rlfat_tf.attacks", None),
    "load_model": ("rlfat_tf.classifier", "load"),
    "wrap_model": ("rlfat_tf.classifier", "wrap"),
    "AdversarialTrainer": ("rlfat_tf.keras_trainer", "AdversarialTrainer"),
    "RandomBlockShuffle": ("rlfat_tf.rbs", "RandomBlockShuffle"),
    "methods": ("rlfat_tf.methods", None),
    "models": ("rlfat_tf.models", None),
    "datasets": ("rlfat_tf.datasets", None),
}

__all__ = sorted(_PUBLIC)


def __getattr__(name):
  if name not in _PUBLIC:
    raise AttributeError(f"module 'rlfat_tf' has no attribute {name!r}")
  module, attribute = _PUBLIC[name]
  value = importlib.import_module(module)
  if attribute is not None:
    value = getattr(value, attribute)
  globals()[name] = value
  return value


def __dir__():
  return sorted(set(globals()) | set(_PUBLIC))
