"""Tests of flags/: every flagfile parses and holds the official settings.

Each file goes through the trainer's own parser (``train.values_from_argv``),
which also fills the defaults the file leaves out, so what is checked is what
a training run would use. Parsing only: no model, no graph.
"""

import itertools
import dataclasses
import pathlib
import shutil

from absl import flags
import pytest

from rlfat_tf import train

from helpers import ROOT

pytestmark = pytest.mark.bazel_ci

FLAGS_DIR = ROOT / "flags"

# The official recipe, from /work/shared/notes/rlfat-facts.md (sections 1 and
# 4: JHL-HUST/RLFAT */config.json, */model_bn.py, train_*.py and
# utils.rbs_transformation). Written out here rather than read from the code,
# so a changed default or a changed file fails instead of agreeing with itself.
DATASETS = {
    "cifar10": {"depth": 34, "width": 10, "attack_steps": 10,
                "train_steps": 79_800},
    "cifar100": {"depth": 34, "width": 10, "attack_steps": 7,
                 "train_steps": 79_800},
    "stl10": {"depth": 40, "width": 2, "attack_steps": 7,
              "train_steps": 29_700},
}
RBS = {"rbs_blocks": 2, "rbs_granularity": "batch"}
# A method without "eta" has no transfer term, and its eta must resolve empty.
METHODS = {
    "pgdat": {},
    "trades": {"trades_beta": 6.0},
    "rlfat_p": {"eta": 0.5, **RBS},
    "rlfat_t": {"trades_beta": 6.0, "eta": 1.0, **RBS},
    "rbsat_p": dict(RBS),
    "rbsat_t": {"trades_beta": 6.0, **RBS},
}
COMMON = {
    "optimizer": "adam", "learning_rate": 1e-3, "weight_decay": 0.0,
    "lr_boundaries": (), "batch_size": 32, "epsilon": 0.03,
    "step_size": 0.0075, "attack_bn_mode": "train", "flip": True,
    "pad_crop": 0, "val_size": 0, "checkpoint_every": 300,
    "keep_checkpoints": 3,
}
# What docs/getting-started.md promises of the smoke run: a WRN-10-1 for 6 steps on the
# embedded sample.
SMOKE = {
    "dataset": "cifar10_sample", "depth": 10, "width": 1, "attack_steps": 2,
    "batch_size": 32, "train_steps": 6, "steps_per_loop": 3,
    "checkpoint_every": 3, "val_size": 100,
}
# The CPU robust-generalization study (docs/reproducing.md, "Robust generalization:
# rlfat_tf.study"): the official recipe on 250 images of real CIFAR-10 with a
# WRN-10-1, PGD-5 and 1,250 steps, scored every 125 steps; and its first
# pilot, on 1,000 images.
STUDY_CPU_TRAIN = {
    **COMMON, "dataset": "cifar10", "data_dir": "../shared/data",
    "depth": 10, "width": 1, "attack_steps": 5, "val_size": 400,
    "train_size": 250, "monitor_examples": 250, "train_steps": 1250,
    "steps_per_loop": 125, "eval_every": 125, "checkpoint_every": 125,
    "keep_checkpoints": 2,
}
STUDY_CPU_PILOT_N1000 = dict(STUDY_CPU_TRAIN, train_size=1000,
                             monitor_examples=400)
PAIRS = list(itertools.product(DATASETS, METHODS))


def _expected():
  """Every file flags/ should hold, relative to the root, with its values."""
  out = {"flags/smoke.cfg": SMOKE, "flags/common.cfg": COMMON,
         "flags/study/cifar10_cpu_train.cfg": STUDY_CPU_TRAIN,
         "flags/study/cifar10_cpu_pilot_n1000.cfg": STUDY_CPU_PILOT_N1000}
  for d, settings in DATASETS.items():
    out[f"flags/datasets/{d}.cfg"] = {"dataset": d, **settings}
  for m, settings in METHODS.items():
    out[f"flags/methods/{m}.cfg"] = {"method": m, **settings}
  for d, m in PAIRS:
    out[f"flags/{d}_{m}.cfg"] = {"dataset": d, "method": m, **COMMON,
                                 **DATASETS[d], **METHODS[m]}
  return out


EXPECTED = _expected()
ON_DISK = sorted(p.relative_to(ROOT).as_posix()
                 for p in FLAGS_DIR.rglob("*") if p.is_file())


@pytest.fixture(autouse=True)
def _at_root(monkeypatch):
  # absl opens a nested --flagfile relative to the current directory, and the
  # files are written for commands run from the repository root.
  monkeypatch.chdir(ROOT)


def _parse(path):
  """The resolved settings of a flagfile, by flag name (the run record)."""
  _, record = train.values_from_argv(
      ["train", f"--flagfile={path}", "--model_dir=/tmp/x"])
  return dataclasses.asdict(record)


def _mismatches(path, expected):
  """{flag: (resolved, expected)} for every value ``path`` gets wrong."""
  values = _parse(path)
  out = {k: (values[k], v) for k, v in expected.items() if values[k] != v}
  if "method" in expected and "eta" not in expected and values["eta"]:
    out["eta"] = (values["eta"], "none: the method has no transfer term")
  return out


def _lines(path):
  """The lines absl reads as flags or nested files (not comments, blanks)."""
  return [line.strip() for line in pathlib.Path(path).read_text().splitlines()
          if line.strip() and not line.startswith(("#", "//"))]


def _nested(path):
  return [line.split("=", 1)[1] for line in _lines(path)
          if line.startswith("--flagfile=")]


def _names_set(path):
  """Names of the flags a file sets itself (not through nested files)."""
  known = flags.FlagValues()
  train.define_flags(known)
  names = set()
  for line in _lines(path):
    name = line.lstrip("-").split("=", 1)[0]
    if name != "flagfile":
      names.add(name[2:] if name not in known and name.startswith("no")
                else name)
  return names


@pytest.mark.parametrize("path", ON_DISK)
def test_flagfile_resolves_to_official_settings(path):
  assert path in EXPECTED, (
      f"{path} is not a known flagfile: add its settings to this test")
  assert _mismatches(path, EXPECTED[path]) == {}


def test_every_dataset_method_pair_has_an_experiment():
  missing = [p for p in EXPECTED if p not in ON_DISK]
  assert missing == []


@pytest.mark.parametrize("path", ON_DISK)
def test_nested_flagfiles_exist(path):
  absent = [f for f in _nested(path) if not pathlib.Path(f).is_file()]
  assert absent == []


@pytest.mark.parametrize("dataset,method", PAIRS)
def test_experiment_only_nests_common_dataset_and_method(dataset, method):
  path = f"flags/{dataset}_{method}.cfg"
  assert _lines(path) == [
      "--flagfile=flags/common.cfg",
      f"--flagfile=flags/datasets/{dataset}.cfg",
      f"--flagfile=flags/methods/{method}.cfg"]
  header = pathlib.Path(path).read_text()
  assert "Runtime estimate" in header
  assert "Run from the repository root" in header


@pytest.mark.parametrize("dataset,method", PAIRS)
def test_nested_layers_set_disjoint_flags(dataset, method):
  # Disjoint layers: no nested file silently overrides another.
  layers = [_names_set(p) for p in _nested(f"flags/{dataset}_{method}.cfg")]
  overlaps = {n for a, b in itertools.combinations(layers, 2) for n in a & b}
  assert overlaps == set()


def test_nested_paths_are_relative_to_current_directory(tmp_path,
                                                        monkeypatch):
  # Why every experiment header says to run from the repository root.
  monkeypatch.chdir(tmp_path)
  with pytest.raises(flags.CantOpenFlagFileError, match="flags/common.cfg"):
    _parse(ROOT / "flags" / "cifar10_rlfat_p.cfg")


def test_drifted_value_in_a_nested_file_is_reported(tmp_path, monkeypatch):
  shutil.copytree(FLAGS_DIR, tmp_path / "flags")
  dataset_file = tmp_path / "flags" / "datasets" / "cifar10.cfg"
  dataset_file.write_text(dataset_file.read_text().replace(
      "--attack_steps=10", "--attack_steps=7"))
  monkeypatch.chdir(tmp_path)
  path = "flags/cifar10_rlfat_p.cfg"
  assert _mismatches(path, EXPECTED[path]) == {"attack_steps": (7, 10)}


def test_eta_on_a_method_without_transfer_is_reported(tmp_path, monkeypatch):
  (tmp_path / "x.cfg").write_text("--method=rlfat_p\n")
  monkeypatch.chdir(tmp_path)
  # Expecting no "eta" claims the method has no transfer term.
  assert _mismatches("x.cfg", {"method": "rlfat_p"}) == {
      "eta": (0.5, "none: the method has no transfer term")}


def test_overlapping_layers_are_found(tmp_path, monkeypatch):
  (tmp_path / "a.cfg").write_text("# comment\n--attack_steps=7\n--noflip\n")
  (tmp_path / "b.cfg").write_text("--flip\n--method=pgdat\n")
  monkeypatch.chdir(tmp_path)
  assert _names_set("a.cfg") & _names_set("b.cfg") == {"flip"}
