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

# shellcheck source=scripts/side_venv.sh
source "$(dirname "$0")/side_venv.sh"
side_venv_install "$VENV" "$PYTHON" "adversarial-robustness-toolbox==$ART_VERSION"
main_versions="$(side_venv_check_shared "$VENV" "$PYTHON")"
echo "ART $ART_VERSION installed in $VENV (shares $main_versions)"
echo "added: $("$venv_python" -m pip list --local --format=freeze \
    --disable-pip-version-check 2>/dev/null | grep -v -E '^(pip|setuptools)==' | tr '\n' ' ')"
