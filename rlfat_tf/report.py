r"""Turns evaluation results into the paper's tables and figures.

Reads the results.json files written by ``rlfat_tf.evaluate`` and writes to
--output_dir:

- ``report.md``: Table 1 (accuracy under white-box and black-box attacks
  and AutoAttack), Table 2 (loss sensitivity), the integrity checks of every
  file (failed ones in bold capitals, and on stderr), the runs, and links to
  the figures;
- ``ablation.png``: the RBSAT / RLFAT ablation (Figure 2 style), when some
  dataset has both an RBSAT and an RLFAT result of the same framework;
- ``salience.png``: SmoothGrad maps of the models side by side on the same
  images (Figure 3 style), from the salience.npz files next to the results;
  models whose maps are of different images get one figure per image set;
- ``rbs.png``: Random Block Shuffle on real images (Figure 1 style).

Exit status: 0 when every integrity check of every results file passed, 3
when the report was written but some check failed (each failure is printed as
an "INTEGRITY CHECK FAILED" line), 2 on bad input or a bad flag (see
``cli``).

Example:
  python -m rlfat_tf.report \
      --results=runs/c10_pgdat/results.json,runs/c10_rlfat_p/results.json \
      --output_dir=report
"""

import dataclasses
import json
import math
import os
import sys

from absl import flags

# Before TensorFlow loads: keep its C++ start-up chatter off the console.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import tensorflow as tf

from rlfat_tf import attacks
from rlfat_tf import classifier
from rlfat_tf import cli
from rlfat_tf import datasets
from rlfat_tf import errors
from rlfat_tf import figures
from rlfat_tf import files
from rlfat_tf import methods
from rlfat_tf import saliency

SCHEMA_VERSION = 1
# Keys every results file must have, by section.
REQUIRED_KEYS = {
    "run": ("dataset", "method", "architecture"),
    "eval": ("epsilon", "num_examples"),
    "attacks": (),
    "metrics": (),
    "checks": (),
}

# The paper's order of methods (datasets follow the registry's order).
METHOD_NAMES = {name: m.display_name
                for name, m in methods.METHODS.items()}
# The ablation compares, within each framework, the baseline, RBS adversarial
# training alone and RLFAT.
FRAMEWORKS = tuple(group for group in methods.frameworks().values()
                   if len(group) > 1)
ATTACK_NAMES = {name: a.display_name for name, a in attacks.ATTACKS.items()}
# Keys of an attack's entry that describe a run of it, not its settings.
NOT_SETTINGS = frozenset({"seconds", "images_per_second"})

MISSING = "—"

FLAGS = flags.FLAGS


@dataclasses.dataclass
class Result:
  """One results file.

  Attributes:
    path: the file as given on the command line.
    data: its parsed content.
    label: the row label of the model in tables and figures.
  """
  path: str
  data: dict
  label: str = ""

  @property
  def dataset(self):
    return self.data["run"]["dataset"]

  @property
  def method(self):
    return self.data["run"]["method"]

  @property
  def metrics(self):
    return self.data["metrics"]

  @property
  def split(self):
    return self.data["eval"].get("split", "test")

  def accuracy(self, attack):
    """The accuracy under an attack ("clean" for none), or None."""
    return self.metrics.get(f"{self.split}/{attack}_accuracy")

  @property
  def failed_checks(self):
    return [(name, check.get("detail", ""))
            for name, check in self.data["checks"].items()
            if not check["passed"]]


def dataset_name(dataset):
  if dataset in datasets.NAMES:
    return datasets.get(dataset).display_name
  return dataset


def method_name(method):
  return METHOD_NAMES.get(method, method.upper())


def _sort_key(order, value):
  order = list(order)
  return (order.index(value), "") if value in order else (len(order), value)


def _rerun(path):
  return f"rerun rlfat_tf.evaluate to rewrite {path}"


def load_result(path):
  """Reads and validates one results file.

  Args:
    path: a results.json written by ``rlfat_tf.evaluate``.

  Returns:
    A ``Result``.

  Raises:
    errors.UserError: the file is missing, not JSON, of another schema
      version, or lacks a required key.
  """
  if not tf.io.gfile.exists(path):
    raise errors.UserError(
        f"results file {path} does not exist: pass the results.json written "
        f"by rlfat_tf.evaluate")
  try:
    with tf.io.gfile.GFile(path) as f:
      content = json.load(f)
  except json.JSONDecodeError as e:
    raise errors.UserError(
        f"{path} is not valid JSON (line {e.lineno}: {e.msg}): "
        f"{_rerun(path)}") from e
  except (tf.errors.OpError, OSError, UnicodeDecodeError) as e:
    raise errors.UserError(
        f"could not read {path} ({type(e).__name__}): pass the results.json "
        f"written by rlfat_tf.evaluate") from e
  if not isinstance(content, dict):
    raise errors.UserError(f"{path} does not hold a JSON object: "
                           f"{_rerun(path)}")
  version = content.get("schema_version")
  if version != SCHEMA_VERSION:
    raise errors.UserError(
        f"{path} has schema_version {version!r}, but this report reads "
        f"version {SCHEMA_VERSION}: rewrite it with this version's "
        f"rlfat_tf.evaluate")
  for section, keys in REQUIRED_KEYS.items():
    if not isinstance(content.get(section), dict):
      raise errors.UserError(
          f"{path} lacks the required {section!r} object of schema version "
          f"{SCHEMA_VERSION}: {_rerun(path)}")
    for key in keys:
      if key not in content[section]:
        raise errors.UserError(
            f"{path} lacks the required key {section}.{key}: {_rerun(path)}")
  split = content["eval"].get("split", "test")
  if f"{split}/clean_accuracy" not in content["metrics"]:
    raise errors.UserError(
        f"{path} lacks the required key metrics.{split}/clean_accuracy: "
        f"{_rerun(path)}")
  _check_values(path, content)
  return Result(path, content)


def _check_values(path, content):
  """Rejects values of the wrong type, so rendering cannot fail later."""
  for key, value in content["metrics"].items():
    if isinstance(value, bool) or not isinstance(value, (int, float)):
      raise errors.UserError(
          f"{path} has a non-numeric metric {key} = {value!r}: {_rerun(path)}")
    if key.endswith("_accuracy") and not 0.0 <= value <= 1.0:
      raise errors.UserError(
          f"{path} has {key} = {value}, outside [0, 1] (accuracies are "
          f"fractions): {_rerun(path)}")
  for name, check in content["checks"].items():
    if not isinstance(check, dict) or not isinstance(check.get("passed"),
                                                     bool):
      raise errors.UserError(
          f"{path} has check {name!r} without a true/false 'passed': "
          f"{_rerun(path)}")
  salience = content.get("salience")
  if salience is not None and not (isinstance(salience, dict) and
                                   isinstance(salience.get("file"), str)):
    raise errors.UserError(
        f"{path} has a 'salience' entry without a 'file' name: "
        f"{_rerun(path)}")


def load_results(paths):
  """Loads every results file and gives each model a unique label.

  A model's label is its method's name; results that share a dataset and a
  method (e.g. the last and the best checkpoint) add their file path.

  Args:
    paths: results.json files.

  Returns:
    List of ``Result`` in the order given.

  Raises:
    errors.UserError: a file is bad or given twice.
  """
  seen = {}
  for path in paths:
    real = os.path.realpath(path)
    if real in seen:
      raise errors.UserError(
          f"--results names {seen[real]} twice (also as {path}): drop one")
    seen[real] = path
  results = [load_result(path) for path in paths]
  counts = {}
  for result in results:
    key = (result.dataset, result.method)
    counts[key] = counts.get(key, 0) + 1
  for result in results:
    result.label = method_name(result.method)
    if counts[(result.dataset, result.method)] > 1:
      result.label += f" ({result.path})"
  return results


def ordered(results):
  """Results in table order: by dataset, then method, then as given."""
  return sorted(results, key=lambda r: (_sort_key(datasets.NAMES, r.dataset),
                                        _sort_key(METHOD_NAMES, r.method)))


def markdown_table(header, rows):
  """A GitHub-flavoured Markdown table.

  Args:
    header: column titles.
    rows: lists of cell strings, one per column.

  Returns:
    The table as lines of text.
  """
  lines = ["| " + " | ".join(header) + " |",
           "|" + "|".join(["---"] * len(header)) + "|"]
  lines += ["| " + " | ".join(row) + " |" for row in rows]
  return lines


def percent(value):
  """An accuracy fraction as a percentage with one decimal, e.g. 45.0."""
  return MISSING if value is None else f"{100.0 * value:.1f}"


def _unique(values):
  values = set(values)
  return values.pop() if len(values) == 1 else None


def _attack_value(results, attack, key):
  return _unique(r.data["attacks"].get(attack, {}).get(key)
                 for r in results if attack in r.data["attacks"])


def table1_columns(results):
  """Table 1's columns as (title, attack): clean, the white-box attacks,
  their worst case, the black-box attacks and the composite ones
  (AutoAttack), each only if some result has it; settings such as steps in
  titles when every result shares them (``attacks.Registered.title``)."""

  def column(name):
    entry = attacks.entry(name)
    shared = (_attack_value(results, name, entry.title_setting)
              if entry.title_setting else None)
    return (entry.title(shared), name)

  columns = ([("Clean", "clean")]
             + [column(n) for n in attacks.of_kind("white_box")]
             + [("Worst case", "worst_case")]
             + [column(n) for n in attacks.of_kind("black_box")]
             + [column(n) for n in attacks.of_kind("composite")])
  return [(title, key) for title, key in columns
          if key == "clean" or any(r.accuracy(key) is not None
                                   for r in results)]


def composite_notes(results, columns):
  """One sentence per composite attack of Table 1: what it ran, in order."""
  notes = []
  for title, key in columns:
    if key not in attacks.ATTACKS or attacks.entry(key).kind != "composite":
      continue
    orders = {tuple(r.data["attacks"][key].get("components", ()))
              for r in results if key in r.data["attacks"]}
    if len(orders) == 1:
      names = ", ".join(ATTACK_NAMES.get(n, n) for n in orders.pop())
      notes.append(f"{title} runs {names} in turn, each on the images still "
                   "robust, and counts an image as robust only if all of "
                   "them failed.")
  return notes


def _row_label(result):
  if result.failed_checks:
    return f"{result.label} **(check FAILED)**"
  return result.label


def _format_setting(value):
  if isinstance(value, float):
    return f"{value:g}"
  if isinstance(value, list):
    return ", ".join(_format_setting(v) for v in value)
  if isinstance(value, dict):
    return f"({_format_settings(value)})"
  return str(value)


def _format_settings(settings):
  """An attack's settings as "k v, ...": steps first, no timings."""
  # Steps first: they are what the column titles name. Timings are not
  # settings, and would make every row's line differ.
  keys = sorted((k for k in settings if k not in NOT_SETTINGS),
                key=lambda k: (k != "steps", k != "components", k))
  return ", ".join(f"{k} {_format_setting(settings[k])}" for k in keys)


def attack_settings(result):
  """One line stating the radius, data and every attack's settings."""
  ev = result.data["eval"]
  epsilon = ev["epsilon"]
  parts = [f"ε = {epsilon:g} ({epsilon * 255:.2f}/255), "
           f"{ev['num_examples']} {ev.get('split', 'test')} images"]
  attacks = result.data["attacks"]
  for attack in sorted(attacks, key=lambda a: _sort_key(ATTACK_NAMES, a)):
    details = _format_settings(attacks[attack])
    name = ATTACK_NAMES.get(attack, attack)
    parts.append(f"{name}: {details}" if details else name)
  return "; ".join(parts)


def table1(results):
  """Lines of Table 1 and the attack settings under it."""
  columns = table1_columns(results)
  rows = [[dataset_name(r.dataset), _row_label(r)] +
          [percent(r.accuracy(key)) for _, key in columns]
          for r in ordered(results)]
  lines = markdown_table(["Dataset", "Model"] + [c for c, _ in columns], rows)
  lines.append("")
  lines.append("Accuracy (%) on the evaluated images (split and count "
               "below); the worst case counts an image as robust only if "
               "every white-box attack run on it failed; "
               f"{MISSING}: not evaluated.")
  lines += composite_notes(results, columns)
  lines.append("")
  groups = {}
  for r in ordered(results):
    groups.setdefault(attack_settings(r), []).append(r)
  if len(groups) == 1:
    lines.append(f"Attack settings of every row: {next(iter(groups))}.")
  else:
    lines.append("Attack settings:")
    lines.append("")
    for settings, members in groups.items():
      names = ", ".join(f"{dataset_name(r.dataset)} {r.label}"
                        for r in members)
      lines.append(f"- {names}: {settings}.")
  return lines


def _setting_sort_key(key):
  kind, _, value = key[len("sensitivity/"):].partition("_")
  try:
    number = float(value)
  except ValueError:
    number = math.inf
  return (kind != "brightness", kind, number, value)


def table2(results):
  """Lines of Table 2: loss sensitivity per model and setting."""
  by_dataset = {}
  for r in ordered(results):
    for key in r.metrics:
      if key.startswith("sensitivity/"):
        by_dataset.setdefault(r.dataset, set()).add(key)
  if not by_dataset:
    return ["No results file holds loss-sensitivity metrics "
            "(`sensitivity/*`)."]
  columns = [(d, key) for d in by_dataset
             for key in sorted(by_dataset[d], key=_setting_sort_key)]
  labels = list(dict.fromkeys(r.label for r in ordered(results)
                              if r.dataset in by_dataset))
  header = ["Model"]
  for dataset, key in columns:
    kind, _, value = key[len("sensitivity/"):].partition("_")
    header.append(f"{dataset_name(dataset)} {kind} {value}")
  values = {(r.dataset, r.label, key): v for r in results
            for key, v in r.metrics.items()}
  rows = []
  for label in labels:
    cells = [values.get((d, label, key)) for d, key in columns]
    rows.append([label] + [MISSING if v is None else f"{v:.4f}"
                           for v in cells])
  lines = markdown_table(header, rows)
  lines.append("")
  lines.append("Mean L2 norm of the input gradient of the cross-entropy loss "
               "after the transformation (lower: a smoother loss); "
               "brightness v: HSV value shifted by v; gamma v: x -> x^v; "
               f"{MISSING}: not evaluated.")
  inputs = {f"{dataset_name(r.dataset)} {r.label}": sensitivity_inputs(r)
            for r in ordered(results) if r.dataset in by_dataset}
  if len(set(inputs.values())) == 1:
    described = f"{next(iter(inputs.values()))}, for every model"
  else:
    described = "; ".join(f"{k}: {v}" for k, v in inputs.items())
  lines.append("")
  lines.append(f"Inputs: {described}. The official code measures on the "
               "PGD output of every test image, with its training k.")
  return lines


def sensitivity_inputs(result):
  """The images a result's loss sensitivity was measured on, in words."""
  ev = result.data["eval"]
  inputs, attack = ev.get("sensitivity_inputs"), ev.get("sensitivity_attack")
  if inputs == "pgd" and attack:
    return (f"the PGD-{attack['steps']} output of every image (ε "
            f"{attack['epsilon']:g}, step {attack['step_size']:g})")
  if inputs == "pgd":
    # Evaluations before the attack was recorded measured on the evaluation
    # PGD's results, which keep the clean image of a misclassified example.
    return ("PGD examples that keep the clean image of every misclassified "
            "example (an older evaluation: re-evaluate)")
  if inputs == "clean":
    return "the clean images"
  return "unrecorded images"


def integrity(results):
  """Lines of the integrity section and the failures, one line each."""
  failures = []
  unchecked = []
  total = 0
  for r in ordered(results):
    total += len(r.data["checks"])
    if not r.data["checks"]:
      unchecked.append(r)
    for name, detail in r.failed_checks:
      failures.append(f"{dataset_name(r.dataset)} {r.label} ({r.path}): "
                      f"{name}: {detail}")
  lines = []
  if failures:
    lines.append(f"**{len(failures)} OF {total} CHECK(S) FAILED.** The "
                 "numbers of these models are not trustworthy until the "
                 "cause is fixed:")
    lines.append("")
    lines += [f"- **FAILED** {line}" for line in failures]
  else:
    lines.append(f"All {total} check(s) of {len(results) - len(unchecked)} "
                 "results file(s) passed.")
  if unchecked:
    lines.append("")
    lines += [f"- **NO CHECKS RECORDED** for {dataset_name(r.dataset)} "
              f"{r.label} ({r.path})." for r in unchecked]
  return lines, failures


def ablation(results, output_dir):
  """Draws ablation.png if possible; returns the lines of its section."""
  rows = []
  columns = table1_columns(results)
  shown = [(title, key) for title, key in columns
           if key in ("clean", "pgd", "worst_case")]
  for dataset in dict.fromkeys(r.dataset for r in ordered(results)):
    present = [r for r in ordered(results) if r.dataset == dataset]
    trained = {r.method for r in present}
    for framework in FRAMEWORKS:
      if not set(framework[1:]) <= trained:
        continue
      members = sorted((r for r in present if r.method in framework),
                       key=lambda r, f=framework: f.index(r.method))
      for r in members:
        rows.append({"dataset": dataset_name(dataset), "method": r.label,
                     "accuracy": {title: r.accuracy(key)
                                  for title, key in shown
                                  if r.accuracy(key) is not None}})
  if not rows:
    found = ", ".join(sorted({f"{dataset_name(r.dataset)} "
                              f"{method_name(r.method)}" for r in results}))
    needed = ", or ".join(" with ".join(method_name(m) for m in group[1:])
                          for group in FRAMEWORKS)
    return [f"Skipped: no dataset has both an RBSAT and an RLFAT result of "
            f"the same framework ({needed}); the results hold {found}."]
  path = os.path.join(output_dir, "ablation.png")
  figures.ablation_bars(rows, path)
  return ["Baseline, RBS adversarial training alone (RBSAT) and RLFAT, per "
          "framework and dataset.", "", "![ablation](ablation.png)"]


def _salience_groups(results):
  """Groups models whose salience maps are of identical images.

  Returns:
    ``(groups, notes)``: groups are dicts with ``images``, ``labels``,
    ``dataset`` and ``models`` (list of (Result, maps)), largest first;
    notes are lines about files that could not be used.
  """
  groups, notes = [], []
  for r in ordered(results):
    entry = r.data.get("salience")
    if entry is None:
      continue
    path = os.path.join(os.path.dirname(r.path), entry["file"])
    try:
      images, labels, maps = saliency.load_maps(path)
    except errors.UserError as e:
      notes.append(f"- **NOT SHOWN**: {dataset_name(r.dataset)} {r.label}: "
                   f"{e}.")
      print(f"warning: {e}", file=sys.stderr)
      continue
    for group in groups:
      if (np.array_equal(group["images"], images) and
          np.array_equal(group["labels"], labels)):
        group["models"].append((r, maps))
        break
    else:
      groups.append({"images": images, "labels": labels,
                     "dataset": r.dataset, "models": [(r, maps)]})
  # The set most models share goes first, into salience.png.
  groups.sort(key=lambda g: -len(g["models"]))
  return groups, notes


def _class_names(dataset):
  return (datasets.get(dataset).class_names if dataset in datasets.NAMES
          else None)


def salience(results, output_dir):
  """Draws salience.png (and one more PNG per extra image set)."""
  groups, notes = _salience_groups(results)
  if not groups:
    return notes + ["Skipped: no results file has salience maps (their "
                    "'salience' entry is null)."]
  lines = []
  if len(groups) > 1:
    lines.append(f"**The salience maps are of {len(groups)} different image "
                 "sets** (their image arrays differ), so each set has its "
                 "own figure; only models within one figure share images.")
    lines.append("")
  for index, group in enumerate(groups, start=1):
    name = "salience.png" if index == 1 else f"salience_{index}.png"
    shown = {r.dataset for r, _ in group["models"]}
    maps_by_model = {}
    for r, maps in group["models"]:
      title = r.label if len(shown) == 1 else (
          f"{dataset_name(r.dataset)} {r.label}")
      maps_by_model[title] = maps
    figures.salience_grid(group["images"], maps_by_model,
                          os.path.join(output_dir, name),
                          class_names=_class_names(group["dataset"]),
                          labels=group["labels"])
    settings = "; ".join(
        f"{title}: noise {r.data['salience'].get('noise_level', '?')}, "
        f"{r.data['salience'].get('samples', '?')} samples"
        for title, (r, _) in zip(maps_by_model, group["models"]))
    lines.append(f"SmoothGrad maps of {len(group['images'])} "
                 f"{dataset_name(group['dataset'])} images ({settings}).")
    lines.append("")
    lines.append(f"![salience]({name})")
    lines.append("")
  return notes + lines[:-1]


def sample_images(name, data_dir, count):
  """Test images of distinct classes, first ones first, for rbs.png."""
  images, labels = datasets.load_split(name, "test", data_dir)
  picked, classes = [], set()
  for index, label in enumerate(labels):
    if label not in classes:
      classes.add(int(label))
      picked.append(index)
    if len(picked) == count:
      break
  return datasets.in_memory(images[picked])


def runs_table(results):
  """Lines of the table of runs: model, checkpoint, data, time, hardware."""
  rows = []
  for r in ordered(results):
    run, ev = r.data["run"], r.data["eval"]
    hardware = r.data.get("hardware") or {}
    seconds = r.data.get("time_seconds")
    rows.append([
        dataset_name(r.dataset), r.label, str(run["architecture"]),
        f"{run.get('which', '?')}: `{run.get('checkpoint', '?')}`",
        f"{ev['num_examples']} {ev.get('split', 'test')}",
        MISSING if seconds is None else f"{seconds:.0f} s",
        ", ".join(f"{prefix}{hardware[k]}"
                  for k, prefix in (("platform", ""),
                                    ("cpu_count", "CPUs: "),
                                    ("tensorflow", "TensorFlow "))
                  if k in hardware) or MISSING,
        f"`{r.path}`"])
  return markdown_table(["Dataset", "Model", "Architecture", "Checkpoint",
                         "Examples", "Time", "Hardware", "Results file"],
                        rows)


def run(values):
  """Writes the report; returns (report path, failed-check lines)."""
  output_dir = values["output_dir"]
  files.check_writable(output_dir, "--output_dir")
  results = load_results(values["results"])
  blocks = tuple(int(b) for b in values["rbs_blocks"])
  # The sample images are read before anything is written, so a bad
  # --sample_images_from leaves the output folder untouched.
  images = sample_images(values["sample_images_from"], values["data_dir"],
                         values["rbs_images"])
  tf.io.gfile.makedirs(output_dir)
  integrity_lines, failures = integrity(results)
  lines = ["# Robustness report", ""]
  if failures:
    lines += [f"> **WARNING: {len(failures)} INTEGRITY CHECK(S) FAILED.** "
              "See [Integrity checks](#integrity-checks).", ""]
  lines += ["## Table 1: accuracy under white-box and black-box attacks", ""]
  lines += table1(results) + [""]
  lines += ["## Table 2: loss sensitivity", ""] + table2(results) + [""]
  lines += ["## Integrity checks", ""] + integrity_lines + [""]
  lines += ["## Figure 1: Random Block Shuffle", ""]
  figures.rbs_illustration(images, os.path.join(output_dir, "rbs.png"),
                           blocks=blocks, seed=values["seed"])
  lines += [f"{len(images)} {dataset_name(values['sample_images_from'])} "
            f"test images and their Random Block Shuffles with k = "
            f"{', '.join(str(k) for k in blocks)} blocks per axis (seed "
            f"{values['seed']}).", "", "![rbs](rbs.png)", ""]
  lines += ["## Figure 2: ablation", ""] + ablation(results, output_dir)
  lines += ["", "## Figure 3: salience maps", ""]
  lines += salience(results, output_dir)
  lines += ["", "## Runs", ""] + runs_table(results) + [""]
  path = os.path.join(output_dir, "report.md")
  files.write_text(path, "\n".join(lines))
  return path, failures


def define_flags():
  """Defines the command's flags.

  Called only when the module runs as a program: importing it (tests, other
  entry points) then defines no flag that could collide with theirs.
  """
  flags.DEFINE_list("results", None, "Comma-separated results.json files "
                    "written by rlfat_tf.evaluate.")
  flags.DEFINE_string("output_dir", None, "Folder for report.md and the PNG "
                      "figures (created if needed).")
  flags.DEFINE_string("sample_images_from", "cifar10_sample",
                      f"Test images of this dataset illustrate RBS in "
                      f"rbs.png: {datasets.NAME_HELP}.")
  flags.DEFINE_string("data_dir", None, "Folder holding the official binary "
                      "release of --sample_images_from, or the folder of "
                      "--sample_images_from=folder (refused for the embedded "
                      "cifar10_sample).")
  classifier.register_dataset_validator(flags.FLAGS, "sample_images_from")
  flags.DEFINE_integer("rbs_images", 4, "Images shown in rbs.png, one per "
                       "class (at most the number of classes).",
                       lower_bound=1)
  flags.DEFINE_list("rbs_blocks", ["2", "3", "4"], "Blocks per axis shown in "
                    "rbs.png, one column each.")
  flags.DEFINE_integer("seed", 0, "Seed of the shuffles in rbs.png.",
                       lower_bound=0)

  flags.mark_flags_as_required(["results", "output_dir"])
  flags.register_validator(
      "results", lambda v: bool(v) and all(v),
      message="--results must list at least one results.json file, e.g. "
      "--results=a/results.json,b/results.json")
  flags.register_validator(
      "rbs_blocks", lambda v: bool(v) and all(s.isdigit() and int(s) >= 1
                                              for s in v),
      message="--rbs_blocks must be positive integers, e.g. 2,3,4")


def main():
  """Writes the report the parsed flags describe.

  Returns:
    ``cli.CHECK_FAILED`` when some results file has a failed integrity check,
    else None.
  """
  values = {name: FLAGS[name].value
            for name in ("results", "output_dir", "sample_images_from",
                         "data_dir", "rbs_images", "rbs_blocks", "seed")}
  path, failures = run(values)
  print(f"wrote {path}")
  for line in failures:
    print(f"INTEGRITY CHECK FAILED: {line}", file=sys.stderr)
  return cli.CHECK_FAILED if failures else None


if __name__ == "__main__":
  cli.run_absl(main, define_flags)
