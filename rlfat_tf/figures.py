"""PNG figures: RBS examples, the ablation, salience maps, study curves.

Figures are drawn on ``matplotlib.figure.Figure`` objects, which render with
the Agg backend without touching pyplot's global state, so the module is safe
to import in any program. Every figure has a fixed size in inches and a fixed
dpi, so its pixel size follows from its grid alone, and is written atomically.
"""

import io
import os

from matplotlib import figure as mpl_figure
from matplotlib import patches as mpl_patches
import numpy as np
import tensorflow as tf

from rlfat_tf import files
from rlfat_tf import rbs

DPI = 100
# Side of one image cell of a grid figure, and the band above a grid that
# holds the column titles, in inches.
CELL_INCHES = 1.6
TITLE_INCHES = 0.4
# Size of one dataset panel of the ablation chart, and of a study's curve
# and bar charts, in inches.
PANEL_INCHES = (6.0, 4.0)
# Maps are scaled to their 99th percentile so that a few extreme gradients do
# not turn the rest of the map black (the SmoothGrad paper's visualisation).
MAP_PERCENTILE = 99.0


def grid_size(rows, cols):
  """Pixel size (width, height) of a grid figure of image cells."""
  return (round(cols * CELL_INCHES * DPI),
          round((rows * CELL_INCHES + TITLE_INCHES) * DPI))


def ablation_size(num_datasets):
  """Pixel size (width, height) of an ablation chart."""
  return (round(PANEL_INCHES[0] * num_datasets * DPI),
          round(PANEL_INCHES[1] * DPI))


def _as_float_images(images):
  images = np.asarray(images)
  if images.dtype == np.uint8:
    return images.astype(np.float32) / 255.0
  return np.clip(images.astype(np.float32), 0.0, 1.0)


def _grid(rows, cols):
  width, height = grid_size(rows, cols)
  fig = mpl_figure.Figure(figsize=(width / DPI, height / DPI), dpi=DPI)
  top = 1.0 - TITLE_INCHES * DPI / height
  fig.subplots_adjust(left=0.0, right=1.0, bottom=0.0, top=top, wspace=0.05,
                      hspace=0.05)
  axes = fig.subplots(rows, cols, squeeze=False)
  for ax in axes.flat:
    ax.set_xticks([])
    ax.set_yticks([])
  return fig, axes


def _save(fig, path):
  """Renders a figure to PNG at its fixed size and writes it atomically."""
  buffer = io.BytesIO()
  fig.savefig(buffer, format="png", dpi=DPI)
  parent = os.path.dirname(path)
  if parent:
    tf.io.gfile.makedirs(parent)
  files.write_bytes(path, buffer.getvalue())


def normalise_map(salience):
  """Scales a salience map to [0, 1] by its 99th percentile.

  Args:
    salience: [H, W] non-negative map.

  Returns:
    float32 [H, W] in [0, 1]; all zeros when the map is.
  """
  salience = np.asarray(salience, np.float32)
  scale = np.percentile(salience, MAP_PERCENTILE)
  if scale <= 0:
    scale = salience.max()
  if scale <= 0:
    return np.zeros_like(salience)
  return np.clip(salience / scale, 0.0, 1.0)


def salience_grid(images, maps_by_model, path, class_names=None, labels=None):
  """Salience maps of several models side by side (Figure 3 style).

  One row per image: the image, then one map per model, in the order of
  ``maps_by_model``, each scaled to its own 99th percentile and shown in
  grayscale (white = salient).

  Args:
    images: [K, H, W, 3] images, uint8 or float in [0, 1].
    maps_by_model: dict model name -> [K, H, W] maps of those images.
    path: PNG file to write.
    class_names: class name of each label id; with ``labels``, each row is
      titled with its image's class.
    labels: int [K] labels of the images.

  Raises:
    ValueError: a map array does not match the images.
  """
  images = _as_float_images(images)
  for name, maps in maps_by_model.items():
    if np.shape(maps) != images.shape[:3]:
      raise ValueError(f"maps of {name!r} have shape {np.shape(maps)}, not "
                       f"{images.shape[:3]} like the images")
  fig, axes = _grid(len(images), 1 + len(maps_by_model))
  axes[0, 0].set_title("image", fontsize=9)
  for col, name in enumerate(maps_by_model, start=1):
    axes[0, col].set_title(name, fontsize=9)
  for row, image in enumerate(images):
    axes[row, 0].imshow(image, interpolation="nearest")
    if class_names is not None and labels is not None:
      axes[row, 0].text(0.02, 0.02, class_names[int(labels[row])],
                        transform=axes[row, 0].transAxes, fontsize=7,
                        bbox={"facecolor": "white", "alpha": 0.8, "pad": 1,
                              "linewidth": 0})
    for col, maps in enumerate(maps_by_model.values(), start=1):
      axes[row, col].imshow(normalise_map(maps[row]), cmap="gray", vmin=0.0,
                            vmax=1.0, interpolation="nearest")
  _save(fig, path)


def rbs_illustration(images, path, blocks=(2, 3, 4), seed=0):
  """Images and their Random Block Shuffles for several k (Figure 1 style).

  Args:
    images: [K, H, W, 3] images, uint8 or float in [0, 1].
    path: PNG file to write.
    blocks: the numbers of blocks per axis shown, one column each.
    seed: integer seed of the shuffles; image ``i`` with ``k`` blocks uses the
      stateless seed ``(seed, i)`` folded with ``k``, so every cell gets its
      own transform.
  """
  images = _as_float_images(images)
  fig, axes = _grid(len(images), 1 + len(blocks))
  axes[0, 0].set_title("image", fontsize=9)
  for col, k in enumerate(blocks, start=1):
    axes[0, col].set_title(f"RBS, k = {k}", fontsize=9)
  for row, image in enumerate(images):
    axes[row, 0].imshow(image, interpolation="nearest")
    for col, k in enumerate(blocks, start=1):
      cell_seed = tf.random.experimental.stateless_fold_in(
          tf.constant([seed, row], tf.int64), k)
      shuffled = rbs.random_block_shuffle(image, k, cell_seed).numpy()
      axes[row, col].imshow(shuffled, interpolation="nearest")
  _save(fig, path)


def ablation_bars(rows, path):
  """The ablation as grouped bars, one panel per dataset (Figure 2 style).

  Within a panel, each group of bars is one accuracy (e.g. clean, PGD, worst
  case) and each bar one method, in the order the rows give them; bars are
  labelled with the accuracy in percent.

  Args:
    rows: sequence of dicts with ``dataset`` (panel title), ``method`` (bar
      label) and ``accuracy`` (dict accuracy name -> fraction in [0, 1]).
      An accuracy a row lacks leaves a gap.
    path: PNG file to write.

  Raises:
    ValueError: ``rows`` is empty.
  """
  if not rows:
    raise ValueError("the ablation chart needs at least one row")
  datasets = list(dict.fromkeys(row["dataset"] for row in rows))
  width, height = ablation_size(len(datasets))
  fig = mpl_figure.Figure(figsize=(width / DPI, height / DPI), dpi=DPI,
                          layout="constrained")
  axes = fig.subplots(1, len(datasets), squeeze=False)[0]
  methods = list(dict.fromkeys(row["method"] for row in rows))
  colours = {m: f"C{i % 10}" for i, m in enumerate(methods)}
  for ax, dataset in zip(axes, datasets):
    panel = [row for row in rows if row["dataset"] == dataset]
    names = list(dict.fromkeys(n for row in panel for n in row["accuracy"]))
    bar_width = 0.8 / len(panel)
    for i, row in enumerate(panel):
      values = [100.0 * row["accuracy"].get(n, np.nan) for n in names]
      x = np.arange(len(names)) + (i - (len(panel) - 1) / 2) * bar_width
      bars = ax.bar(x, values, bar_width, color=colours[row["method"]])
      ax.bar_label(bars, [f"{v:.1f}" if np.isfinite(v) else "" for v in values],
                   fontsize=6, padding=1)
    ax.set_xticks(np.arange(len(names)), names)
    ax.set_ylim(0, 100)
    ax.set_ylabel("accuracy (%)")
    ax.set_title(dataset)
  # One legend for all panels: a method keeps its colour in every panel.
  handles = [mpl_patches.Patch(color=colours[m], label=m) for m in methods]
  fig.legend(handles=handles, loc="outside lower center",
             ncols=min(len(methods), 6), fontsize=8)
  _save(fig, path)


def _chart():
  width, height = PANEL_INCHES
  fig = mpl_figure.Figure(figsize=(width, height), dpi=DPI,
                          layout="constrained")
  return fig, fig.subplots()


def study_curves(series, path, ylabel, xlabel="training step"):
  """Curves over training, each a mean with a band of one std.

  Args:
    series: sequence of dicts with ``label``, ``group`` (curves of one group
      share a colour in every panel), ``dashed``, ``x`` (where each point
      was measured, in ``xlabel``'s unit), ``mean`` and ``std`` as fractions
      (drawn in percent, or points for a difference), and optionally
      ``panel``: curves of different panels are drawn side by side, under
      the panel as title, on a shared y axis.
    path: PNG file to write.
    ylabel: the y axis' label.
    xlabel: the x axis' label.

  Raises:
    ValueError: ``series`` is empty.
  """
  if not series:
    raise ValueError("a curve chart needs at least one curve")
  panels = list(dict.fromkeys(s.get("panel") for s in series))
  width, height = PANEL_INCHES
  fig = mpl_figure.Figure(figsize=(width * len(panels), height), dpi=DPI,
                          layout="constrained")
  axes = fig.subplots(1, len(panels), sharey=True, squeeze=False)[0]
  groups = list(dict.fromkeys(s["group"] for s in series))
  for curve in series:
    ax = axes[panels.index(curve.get("panel"))]
    colour = f"C{groups.index(curve['group']) % 10}"
    x = np.asarray(curve["x"])
    mean = 100.0 * np.asarray(curve["mean"])
    std = 100.0 * np.asarray(curve["std"])
    ax.plot(x, mean, color=colour, label=curve["label"],
            linestyle="--" if curve["dashed"] else "-")
    ax.fill_between(x, mean - std, mean + std, color=colour, alpha=0.15,
                    linewidth=0)
  for ax, panel in zip(axes, panels):
    if panel is not None:
      ax.set_title(panel, fontsize=9)
    ax.set_xlabel(xlabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  axes[0].set_ylabel(ylabel)
  _save(fig, path)


def error_bars(rows, path):
  """Grouped bars with error bars of one std, one group per accuracy.

  Args:
    rows: sequence of dicts with ``label`` (one bar colour each) and
      ``values``: accuracy name -> ``{"mean", "std"}`` as fractions (std
      None for one seed: no error bar).
    path: PNG file to write.

  Raises:
    ValueError: ``rows`` is empty.
  """
  if not rows:
    raise ValueError("a bar chart needs at least one row")
  fig, ax = _chart()
  names = list(dict.fromkeys(n for row in rows for n in row["values"]))
  bar_width = 0.8 / len(rows)
  for i, row in enumerate(rows):
    stats = [row["values"].get(n) for n in names]
    means = [100.0 * s["mean"] if s else np.nan for s in stats]
    stds = [100.0 * s["std"] if s and s["std"] is not None else 0.0
            for s in stats]
    x = np.arange(len(names)) + (i - (len(rows) - 1) / 2) * bar_width
    bars = ax.bar(x, means, bar_width, yerr=stds, capsize=3,
                  color=f"C{i % 10}", label=row["label"])
    ax.bar_label(bars, [f"{m:.1f}" if np.isfinite(m) else "" for m in means],
                 fontsize=6, padding=2)
  ax.set_xticks(np.arange(len(names)), names)
  ax.set_ylabel("accuracy (%)")
  ax.legend(fontsize=7)
  _save(fig, path)
