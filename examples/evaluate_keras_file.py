r"""Evaluates a classifier saved as a .keras file with AutoAttack, from Python.

  python -m examples.evaluate_keras_file net.keras --dataset=cifar10 \
      --data_dir=../shared/data --num_examples=1000

The model maps float images in [0, 1] to logits. The report holds the same
metrics and per-image verdicts as ``python -m rlfat_tf.evaluate --model=``,
and ``write`` stores them as its results JSON and npz.
"""

import argparse

import rlfat_tf


def main(path, dataset="cifar10", data_dir=None, num_examples=1000,
         epsilon=8 / 255, output=None, settings=None):
  """AutoAttack on the first ``num_examples`` test images; returns the report.

  ``settings`` overrides attack settings by flag name (fewer steps, say).
  """
  model = rlfat_tf.load_model(path)
  images, labels = rlfat_tf.datasets.load_split(dataset, "test", data_dir)
  report = rlfat_tf.evaluate_robustness(
      model, images[:num_examples], labels[:num_examples], epsilon=epsilon,
      settings=settings)
  for key, value in sorted(report.metrics.items()):
    print(f"{key}: {value:.4f}")
  if output:
    report.write(output)
  return report


if __name__ == "__main__":
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("path", help="the .keras file")
  parser.add_argument("--dataset", default="cifar10")
  parser.add_argument("--data_dir", default=None)
  parser.add_argument("--num_examples", type=int, default=1000)
  parser.add_argument("--epsilon", type=float, default=8 / 255)
  parser.add_argument("--output", default=None, help="results JSON to write")
  args = parser.parse_args()
  main(args.path, args.dataset, args.data_dir, args.num_examples,
       args.epsilon, args.output)
