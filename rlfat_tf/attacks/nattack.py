"""The N attack (Li et al., ICML 2019), a black-box L-infinity attack.

N attack learns, per image, a Gaussian N(mu, sigma^2 I) over perturbations
from the model's output probabilities alone (natural evolution strategies).
As in the official RLFAT evaluation (``nattack.py``, itself from the NAttack
reference code):

- perturbations live in tanh space: a draw w maps to the image
  x + clip(tanh(arctanh(2x - 1) + w) / 2 + 1/2 - x, -eps, eps), which is in
  [0, 1] by construction (the official code centres the ball on
  tanh(arctanh(x)), 1e-6 away from x; here it is x itself);
- mu starts at 0.001 N(0, I); each iteration scores a population of draws
  mu + sigma N(0, I) by the reward -0.5 clip(log p_y - log max_{j!=y} p_j,
  0, 1000), standardises the rewards and moves mu along the reward-weighted
  noise with step ``learning_rate / (population * sigma)``;
- success is checked every ``check_every`` iterations, before that
  iteration's update, on the image of mu itself, so the last update of a
  200-iteration run is never checked (iteration 190 is the last check);
- images the model already misclassifies are not attacked.

One deliberate difference: the reference code takes the runner-up
probability of population member 0 for all candidates (``.max(1)[0]`` in
NumPy), so its reward varies only through p_y. Here each candidate's reward
uses its own runner-up, which is the margin the attack is meant to shrink.
Log-probabilities come from ``log_softmax`` rather than log(p + 1e-30).

The population is one batched forward pass, and the loop over iterations for
one image is a single ``tf.while_loop`` that stops at the first success.
``NAttack.run`` attacks the images of a batch one after another in the graph.
"""

import dataclasses

import tensorflow as tf

from rlfat_tf.attacks import base
from rlfat_tf.attacks import losses


@dataclasses.dataclass(frozen=True)
class NAttackSpec:
  """Settings of the N attack (defaults: the official RLFAT evaluation).

  Attributes:
    epsilon: L-infinity radius in [0, 1] pixel units.
    population: candidates drawn per iteration.
    sigma: standard deviation of the search distribution in tanh space.
    learning_rate: step of the update of mu.
    iterations: maximum iterations per image.
    check_every: iterations between success checks.
    init_scale: standard deviation of the initial mu.
  """
  epsilon: float = 0.03
  population: int = 300
  sigma: float = 0.1
  learning_rate: float = 0.008
  iterations: int = 200
  check_every: int = 10
  init_scale: float = 0.001

  def __post_init__(self):
    if self.population < 2:
      raise ValueError("the N attack needs a population of at least 2 to "
                       "standardise rewards")
    if self.iterations < 1 or self.check_every < 1:
      raise ValueError("iterations and check_every must be positive")


def _to_image(image, image_tanh, offsets, epsilon):
  """Maps tanh-space offsets to images in the epsilon ball of ``image``."""
  candidate = tf.tanh(image_tanh + offsets) * 0.5 + 0.5
  return image + tf.clip_by_value(candidate - image, -epsilon, epsilon)


def _margin(logits, label):
  """log p_y - max_{j != y} log p_j for each row of ``logits``."""
  return losses.margin(tf.nn.log_softmax(logits), label)


def attack_image(model, spec, image, label, seed):
  """Runs the N attack on one image.

  Args:
    model: a Keras model mapping images to logits.
    spec: an ``NAttackSpec``.
    image: [H, W, C] clean image in [0, 1].
    label: int scalar true label.
    seed: int64 [2] stateless seed of the image's draws.

  Returns:
    ``(success, adversarial, queries)``: whether a checked image of mu was
    misclassified, that image (on failure the image of the final mu), and
    the number of images the model was queried on.
  """
  image = tf.convert_to_tensor(image, tf.float32)
  label = tf.cast(label, tf.int32)
  # arctanh(+-1) is infinite; the official code scales by 0.999999 too.
  image_tanh = tf.atanh((image * 2.0 - 1.0) * 0.999999)
  init_seed, loop_seed = tf.unstack(
      tf.random.experimental.stateless_split(seed, num=2))
  mu = spec.init_scale * tf.random.stateless_normal(tf.shape(image), init_seed)
  population_shape = tf.concat([[spec.population], tf.shape(image)], 0)
  scale = spec.learning_rate / (spec.population * spec.sigma)

  def cond(i, mu, success, queries):
    del mu, queries
    return (i < spec.iterations) & tf.logical_not(success)

  def body(i, mu, success, queries):
    def check():
      adv = _to_image(image, image_tanh, mu, spec.epsilon)
      logits = model(adv[None], training=False)
      return tf.not_equal(tf.argmax(logits[0], output_type=tf.int32), label)

    checking = tf.equal(i % spec.check_every, 0)
    success = tf.cond(checking, check, lambda: tf.constant(False))
    queries += tf.cast(checking, tf.int32)

    def update():
      noise = tf.random.stateless_normal(
          population_shape,
          tf.random.experimental.stateless_fold_in(loop_seed, i))
      candidates = _to_image(image, image_tanh, mu + spec.sigma * noise,
                             spec.epsilon)
      margin = _margin(model(candidates, training=False), label)
      reward = -0.5 * tf.clip_by_value(margin, 0.0, 1000.0)
      advantage = ((reward - tf.reduce_mean(reward)) /
                   (tf.math.reduce_std(reward) + 1e-7))
      return mu + scale * tf.tensordot(advantage, noise, axes=1)

    # A success stops the loop before the update, which leaves mu at the
    # point that was checked.
    mu = tf.cond(success, lambda: mu, update)
    queries += tf.where(success, 0, spec.population)
    return i + 1, mu, success, queries

  _, mu, success, queries = tf.while_loop(
      cond, body, (tf.constant(0), mu, tf.constant(False), tf.constant(0)))
  return success, _to_image(image, image_tanh, mu, spec.epsilon), queries


@dataclasses.dataclass(frozen=True, kw_only=True)
class NAttack(base.Attack):
  """The N attack as an evaluation attack; ``spec`` is an ``NAttackSpec``."""
  kind = "black_box"

  def run(self, model, images, labels, seeds):
    """Attacks each image the model classifies correctly; see ``Attack``.

    An image the model already misclassifies is returned as it is, at no
    query. Image i draws from ``seeds[i]``.
    """
    correct = tf.equal(
        tf.argmax(model(images, training=False), -1, output_type=tf.int32),
        tf.cast(labels, tf.int32))

    def one(args):
      image, label, seed, attack = args
      return tf.cond(
          attack,
          lambda: attack_image(model, self.spec, image, label, seed)[1],
          lambda: image)

    return tf.stop_gradient(tf.map_fn(
        one, (images, labels, seeds, correct),
        fn_output_signature=images.dtype))


SETTINGS = (
    base.Setting("nattack_examples", 1500, "N attack on the first N images.",
                 lower_bound=1),
    base.Setting("nattack_population", NAttackSpec.population,
                 "N-attack population.", lower_bound=2),
    base.Setting("nattack_sigma", NAttackSpec.sigma, "N-attack search "
                 "deviation in tanh space.", type=float, lower_bound=0.0),
    base.Setting("nattack_lr", NAttackSpec.learning_rate, "N-attack learning "
                 "rate.", type=float, lower_bound=0.0),
    base.Setting("nattack_iterations", NAttackSpec.iterations, "N-attack "
                 "iterations per image.", lower_bound=1),
)


def options(values):
  """``NAttack`` fields from the evaluation values (``attacks.Registered``)."""
  return {"spec": NAttackSpec(epsilon=values["epsilon"],
                              population=values["nattack_population"],
                              sigma=values["nattack_sigma"],
                              learning_rate=values["nattack_lr"],
                              iterations=values["nattack_iterations"]),
          "examples": values["nattack_examples"]}
