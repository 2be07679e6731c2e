"""The settings of a training run and the optimizer they describe.

Every hyper-parameter the trainer reads is a field of ``TrainConfig``, and
``build_optimizer`` is the one place that turns them into a Keras optimizer.
"""

import dataclasses

import keras

from rlfat_tf import methods
from rlfat_tf.attacks import pgd

OPTIMIZERS = ("adam", "sgd")
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")
# tf.compat.v1.train.AdamOptimizer's default, used by the official code.
ADAM_EPSILON = 1e-8


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Hyper-parameters of a training run (defaults: the official code's).

  Attributes:
    method: key of ``methods.METHODS``.
    epsilon: L-infinity radius of the training attack.
    step_size: step of the training attack.
    attack_steps: steps of the training attack.
    attack_bn_mode: BatchNorm mode while the training attack runs.
    trades_beta: weight "beta" of the KL term (None: the method's default).
    eta: weight "eta" of the transfer term (None: the method's default).
      Methods ignore the weights they do not read.
    batch_size: global batch size.
    train_steps: total optimizer steps.
    steps_per_loop: steps run by one call of the compiled loop.
    optimizer: "adam" or "sgd" (with momentum).
    learning_rate: initial learning rate.
    momentum: SGD momentum.
    weight_decay: decoupled weight decay on kernels (Keras optimizers'
      ``weight_decay``); BatchNorm parameters and biases are excluded.
    lr_boundaries: steps at which the learning rate is multiplied by
      ``lr_decay``.
    lr_decay: factor applied at each boundary.
    checkpoint_every: steps between checkpoints.
    keep_checkpoints: most recent checkpoints kept.
    eval_every: steps between validations (when there is a validation split).
    jit_compile: compile the gradient computation of a step with XLA.
    mixed_precision: Keras dtype policy of the model's layers, one of
      ``PRECISIONS``.
  """
  method: str
  epsilon: float = 0.03
  step_size: float = 0.0075
  attack_steps: int = 10
  attack_bn_mode: str = "train"
  trades_beta: float | None = None
  eta: float | None = None
  batch_size: int = 32
  train_steps: int = 79_800
  steps_per_loop: int = 100
  optimizer: str = "adam"
  learning_rate: float = 1e-3
  momentum: float = 0.9
  weight_decay: float = 0.0
  lr_boundaries: tuple[int, ...] = ()
  lr_decay: float = 0.1
  checkpoint_every: int = 1000
  keep_checkpoints: int = 3
  eval_every: int = 1000
  jit_compile: bool = False
  mixed_precision: str = "float32"

  @property
  def method_spec(self):
    return methods.get(self.method)

  @property
  def weights(self):
    """The weights the method's objective reads, by name."""
    given = {"beta": self.trades_beta, "eta": self.eta}
    return {name: default if given[name] is None else given[name]
            for name, default in self.method_spec.weights.items()}

  def attack_spec(self):
    """The method's training attack."""
    return self.method_spec.attack(self.epsilon, self.step_size,
                                   self.attack_steps, self.attack_bn_mode)

  def validation_attack_spec(self):
    """``validation_attack`` at the training attack's epsilon, step, steps."""
    return validation_attack(self.epsilon, self.step_size, self.attack_steps)


def validation_attack(epsilon, step_size, steps):
  """The attack validation scores every method with.

  PGD on cross-entropy from a uniform random start with BatchNorm in eval
  mode, whatever the method trains against (TRADES, RLFAT_T and RBSAT_T
  train against the TRADES KL attack), so that the best checkpoint is chosen
  on the same criterion for every method.
  """
  return pgd.pgd(epsilon, step_size, steps, "eval")


def build_optimizer(config):
  """The optimizer and learning-rate schedule of ``config``."""
  lr = config.learning_rate
  if config.lr_boundaries:
    lr = keras.optimizers.schedules.PiecewiseConstantDecay(
        list(config.lr_boundaries),
        [config.learning_rate * config.lr_decay**i
         for i in range(len(config.lr_boundaries) + 1)])
  wd = config.weight_decay or None
  if config.optimizer == "adam":
    # Keras defaults to 1e-7.
    optimizer = keras.optimizers.Adam(lr, epsilon=ADAM_EPSILON,
                                      weight_decay=wd)
  elif config.optimizer == "sgd":
    optimizer = keras.optimizers.SGD(lr, momentum=config.momentum,
                                     weight_decay=wd)
  else:
    raise ValueError(f"unknown optimizer {config.optimizer!r}")
  if wd:
    optimizer.exclude_from_weight_decay(var_names=["gamma", "beta", "bias"])
  if config.mixed_precision == "mixed_float16":
    # float16 gradients underflow without a loss scale; bfloat16 has float32's
    # exponent range and needs none.
    optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
  return optimizer
