"""Trains like ``python -m rlfat_tf.train`` and saves this worker's weights.

Usage: python tests/train_worker.py OUT.npz --flag=value ...

The multi-worker tests run one of these per worker: a non-chief worker keeps
no checkpoint, so its final weights are only visible this way.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

from rlfat_tf import cli
from rlfat_tf import train


def main():
  out, argv = sys.argv[1], sys.argv[2:]
  runner = train.build_trainer(*train.values_from_argv(["train", *argv]))
  restored = runner.restore()
  if restored:
    print(f"resuming from {restored} (step {runner.step})", flush=True)
  runner.train()
  np.savez(out, **{v.path: v.numpy() for v in runner.model.weights})
  print(f"trained to step {runner.step}", flush=True)


if __name__ == "__main__":
  cli.call(main)
