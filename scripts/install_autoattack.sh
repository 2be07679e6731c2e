#!/usr/bin/env bash
# Creates the environment in which rlfat_tf.aabench runs the reference
# AutoAttack: a virtual environment that sees the main environment's packages
# (--system-site-packages, so TensorFlow and Keras are shared, not copied)
# and adds pyautoattack 0.2.0 (fra31/auto-attack packaged for PyPI) and a CPU
# build of PyTorch 2.13.0 on top. Neither is a project requirement; only the
# AutoAttack benchmark uses them.
#
# Usage:
#   scripts/install_autoattack.sh [VENV]      # default /tmp/autoattack-venv
#
# Idempotent: an existing VENV with both versions is left alone. Every
# package of the main environment (${PYTHON:-python}) is a pip constraint, so
# the install can add packages but never shadow one with another version.
# pyautoattack declares no dependencies; torch brings sympy, networkx and the
# like. "torch==2.13.0" takes the CPU build where pip finds one (this
# project's machines keep its wheel on disk); elsewhere set
# PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu, or pip takes the
# CUDA build of several GB from PyPI. Afterwards numpy, scipy, tensorflow and
# keras are checked to resolve to the same versions in both environments.
set -euo pipefail

VENV="${1:-/tmp/autoattack-venv}"
PYTHON="${PYTHON:-python}"
AUTOATTACK_VERSION="0.2.0"
TORCH_VERSION="2.13.0"
venv_python="$VENV/bin/python"

installed='import importlib.metadata as m, sys
sys.exit(m.version("pyautoattack") != sys.argv[1]
         or m.version("torch").split("+")[0] != sys.argv[2])'
if [[ -x "$venv_python" ]] && "$venv_python" -c "$installed" \
    "$AUTOATTACK_VERSION" "$TORCH_VERSION" 2>/dev/null; then
  echo "pyautoattack $AUTOATTACK_VERSION and torch $TORCH_VERSION are" \
       "already installed in $VENV"
  exit 0
fi

# shellcheck source=scripts/side_venv.sh
source "$(dirname "$0")/side_venv.sh"
side_venv_install "$VENV" "$PYTHON" "torch==$TORCH_VERSION" \
    "pyautoattack==$AUTOATTACK_VERSION"
main_versions="$(side_venv_check_shared "$VENV" "$PYTHON")"
# The reference imports both, and the benchmark runs it on the CPU.
TF_CPP_MIN_LOG_LEVEL=2 "$venv_python" -c 'import pyautoattack, torch
from pyautoattack import utils_tf2
print("torch", torch.__version__, "cuda" if torch.cuda.is_available() else "cpu")'
echo "pyautoattack $AUTOATTACK_VERSION installed in $VENV (shares $main_versions)"
echo "added: $("$venv_python" -m pip list --local --format=freeze \
    --disable-pip-version-check 2>/dev/null | grep -v -E '^(pip|setuptools)==' | tr '\n' ' ')"
