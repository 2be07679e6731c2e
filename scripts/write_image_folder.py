"""Writes a dataset as a folder of PNG images, the layout --dataset=folder reads.

Each split goes to OUT/<split>/<class name>/<index>.png, the index zero-padded
to the split's size so that a class folder's sorted order is the split's
order. PNG is lossless: ``--dataset=folder --data_dir=OUT`` decodes the very
pixels of the source, grouped by class.

Usage (from the repository root):

  python scripts/write_image_folder.py --dataset=cifar10 \
      --data_dir=../shared/data --out_dir=/tmp/cifar10_png
"""

import os
import shutil
import sys

from absl import flags
import numpy as np
from PIL import Image

# Lets the script run from a checkout in which the package is not installed.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# pylint: disable=g-import-not-at-top,wrong-import-position
from rlfat_tf import cli
from rlfat_tf import datasets
from rlfat_tf import errors
# pylint: enable=g-import-not-at-top,wrong-import-position



def define_flags(flag_values=flags.FLAGS):
  """Defines the script's flags in ``flag_values``."""
  fv = {"flag_values": flag_values}
  flags.DEFINE_string("dataset", None, f"Dataset to write: "
                      f"{datasets.NAME_HELP}.", **fv)
  flags.DEFINE_string("data_dir", None, "Its --data_dir, as for "
                      "rlfat_tf.train.", **fv)
  flags.DEFINE_string("tfds_data_dir", None, "tensorflow-datasets data "
                      "folder.", **fv)
  flags.DEFINE_string("out_dir", None, "Folder to write; must not exist "
                      "yet.", **fv)
  flags.mark_flags_as_required(["dataset", "out_dir"], **fv)


def write_split(images, labels, class_names, folder):
  """Writes uint8 [N, H, W, C] images under folder/<class name>/<index>.png."""
  digits = len(str(len(images) - 1))
  for name in class_names:
    os.makedirs(os.path.join(folder, name))
  for index, (image, label) in enumerate(zip(images, labels)):
    pixels = image[..., 0] if image.shape[-1] == 1 else image
    Image.fromarray(np.asarray(pixels)).save(
        os.path.join(folder, class_names[label], f"{index:0{digits}d}.png"))


def write(dataset, out_dir, data_dir=None, tfds_data_dir=None):
  """Writes both splits of ``dataset`` as PNG folders under ``out_dir``.

  Raises:
    errors.UserError: ``out_dir`` exists, or the dataset cannot be read.
  """
  if os.path.exists(out_dir):
    raise errors.UserError(f"--out_dir={out_dir} exists: pass a new folder")
  spec = datasets.get(dataset, data_dir=data_dir, tfds_data_dir=tfds_data_dir)
  names = [name.replace(os.sep, "_") for name in spec.class_names]
  partial = out_dir.rstrip(os.sep) + ".partial"
  shutil.rmtree(partial, ignore_errors=True)
  for split in datasets.SPLITS:
    images, labels = datasets.load_split(dataset, split, data_dir,
                                         tfds_data_dir)
    write_split(datasets.in_memory(images), labels, names,
                os.path.join(partial, split))
    print(f"{split}: {len(labels)} images", flush=True)
  # Renamed only when complete, so a folder at --out_dir is never half written.
  os.rename(partial, out_dir)
  print(f"wrote {out_dir}", flush=True)


def main():
  write(flags.FLAGS.dataset, flags.FLAGS.out_dir, flags.FLAGS.data_dir,
        flags.FLAGS.tfds_data_dir)


if __name__ == "__main__":
  cli.run_absl(main, define_flags)
