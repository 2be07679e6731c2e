#!/usr/bin/env bash
# Creates the environment in which rlfat_tf.evalbench runs IBM ART's APGD:
# a virtual environment that sees the main environment's packages
# (--system-site-packages, so TensorFlow and Keras are shared, not copied)
# and adds adversarial-robustness-toolbox 1.20.1 and what it needs on top.
# ART is not a project requirement; only the evaluation benchmark uses it.
#
# Usage:
#   scripts/install_art.sh [VENV]      # default /tmp/art-venv
#
# Idempotent: an existing VENV with ART 1.20.1 is left alone. Every package
# of the main environment (${PYTHON:-python}) is a pip constraint, so the
# install can add packages but never shadow one with another version; with
# TensorFlow 2.21 / NumPy 2.4 this adds scikit-learn, joblib, narwhals and
# threadpoolctl. Afterwards numpy, scipy, tensorflow and keras are checked to
# resolve to the same versions in both environments.
set -euo pipefail

VENV="${1:-/tmp/art-venv}"
PYTHON="${PYTHON:-python}"
ART_VERSION="1.20.1"
venv_python="$VENV/bin/python"

if [[ -x "$venv_python" ]] && "$venv_python" -c \
    "import art, sys; sys.exit(art.__version__ != '$ART_VERSION')" 2>/dev/null; then
  echo "ART $ART_VERSION is already installed in $VENV"
  exit 0
fi

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
# Pinned lines only: editable or URL installs cannot be constraints.
"$PYTHON" -m pip freeze --disable-pip-version-check |
    grep -E '^[A-Za-z0-9_.-]+==' >"$WORK/constraints.txt"

"$PYTHON" -m venv --system-site-packages "$VENV"
"$venv_python" -m pip install --quiet --disable-pip-version-check \
    -c "$WORK/constraints.txt" "adversarial-robustness-toolbox==$ART_VERSION"

versions='import importlib.metadata as m
print(" ".join(f"{p}=={m.version(p)}" for p in ("numpy", "scipy", "tensorflow", "keras")))'
main_versions="$("$PYTHON" -c "$versions")"
venv_versions="$("$venv_python" -c "$versions")"
if [[ "$main_versions" != "$venv_versions" ]]; then
  echo "error: $VENV resolves $venv_versions, the main environment" \
       "$main_versions: delete $VENV and run this script again" >&2
  exit 1
fi
echo "ART $ART_VERSION installed in $VENV (shares $main_versions)"
echo "added: $("$venv_python" -m pip list --local --format=freeze \
    --disable-pip-version-check 2>/dev/null | grep -v -E '^(pip|setuptools)==' | tr '\n' ' ')"
