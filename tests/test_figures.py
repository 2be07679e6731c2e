"""Tests of the PNG figures: they exist, decode to their size, are not blank."""

import numpy as np
from PIL import Image
import pytest

from rlfat_tf import figures


def _decoded(path):
  with Image.open(path) as image:
    assert image.format == "PNG"
    return np.asarray(image.convert("RGB"))


def _images(count=3, size=8):
  return np.random.default_rng(0).integers(
      0, 256, (count, size, size, 3)).astype(np.uint8)


def test_grid_sizes_follow_the_cells():
  # 1.6-inch cells at 100 dpi are 160 pixels; the title band adds 40.
  assert figures.grid_size(3, 4) == (640, 520)
  assert figures.ablation_size(2) == (1200, 400)


def test_salience_grid(tmp_path):
  maps = np.random.default_rng(1).random((3, 8, 8))
  path = str(tmp_path / "salience.png")
  figures.salience_grid(_images(), {"PGDAT": maps, "RLFAT_P": maps * 2},
                        path, class_names=("cat", "dog", "ship"),
                        labels=[2, 0, 1])
  pixels = _decoded(path)
  assert pixels.shape == (520, 480, 3)
  assert pixels.var() > 0
  assert [p.name for p in tmp_path.iterdir()] == ["salience.png"]


def test_salience_grid_rejects_maps_of_other_images(tmp_path):
  with pytest.raises(ValueError, match="PGDAT"):
    figures.salience_grid(_images(), {"PGDAT": np.zeros((2, 8, 8))},
                          str(tmp_path / "s.png"))
  assert not list(tmp_path.iterdir())


def test_normalise_map_scales_to_the_99th_percentile():
  salience = np.arange(101, dtype=np.float32)  # 99th percentile: 99
  out = figures.normalise_map(salience)
  assert out[0] == 0.0 and out[99] == pytest.approx(1.0)
  assert out[100] == 1.0  # clipped
  assert out[33] == pytest.approx(33 / 99)
  np.testing.assert_array_equal(figures.normalise_map(np.zeros((2, 2))),
                                np.zeros((2, 2)))


def test_rbs_illustration(tmp_path):
  path = str(tmp_path / "sub" / "rbs.png")
  figures.rbs_illustration(_images(2, 12), path, blocks=(2, 3), seed=1)
  pixels = _decoded(path)
  assert pixels.shape == (360, 480, 3)
  assert pixels.var() > 0


def test_ablation_bars(tmp_path):
  rows = [
      {"dataset": "CIFAR-10", "method": "PGDAT",
       "accuracy": {"Clean": 0.8, "PGD-20": 0.45, "Worst case": 0.42}},
      {"dataset": "CIFAR-10", "method": "RBSAT_P",
       "accuracy": {"Clean": 0.82, "PGD-20": 0.46}},
      {"dataset": "CIFAR-10", "method": "RLFAT_P",
       "accuracy": {"Clean": 0.84, "PGD-20": 0.48, "Worst case": 0.44}},
      {"dataset": "STL-10", "method": "RLFAT_P",
       "accuracy": {"Clean": 0.6, "PGD-20": 0.3}},
  ]
  path = str(tmp_path / "ablation.png")
  figures.ablation_bars(rows, path)
  pixels = _decoded(path)
  assert pixels.shape == (400, 1200, 3)
  assert pixels.var() > 0
  with pytest.raises(ValueError, match="at least one row"):
    figures.ablation_bars([], str(tmp_path / "empty.png"))


def _curve(group, panel, dashed=False):
  return {"label": f"{group}, {panel}", "group": group, "dashed": dashed,
          "x": [16, 32, 48], "mean": [0.1, 0.2, 0.15],
          "std": [0.01, 0.02, 0.0], "panel": panel}


def test_study_curves_draw_one_panel_per_size(tmp_path):
  one, two = str(tmp_path / "one.png"), str(tmp_path / "two.png")
  figures.study_curves([_curve("PGDAT", None), _curve("RLFAT_P", None)],
                       one, "robust accuracy (%)")
  figures.study_curves(
      [_curve("PGDAT", "250 training images"),
       _curve("PGDAT", "1,000 training images"),
       _curve("RLFAT_P", "1,000 training images", dashed=True)],
      two, "robust accuracy (%)", "epoch")
  # 6 x 4 inches per panel at 100 dpi.
  assert _decoded(one).shape == (400, 600, 3)
  assert _decoded(two).shape == (400, 1200, 3)
  with pytest.raises(ValueError, match="at least one curve"):
    figures.study_curves([], one, "robust accuracy (%)")
