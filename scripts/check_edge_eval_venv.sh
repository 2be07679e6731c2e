#!/usr/bin/env bash
# Checks that rlfat_tf.edge_eval runs where only numpy and ai-edge-litert are
# installed, as on an edge device: no TensorFlow, no absl.
#
# Usage:
#   scripts/check_edge_eval_venv.sh               # trains and exports a smoke model first
#   scripts/check_edge_eval_venv.sh EXPORT_DIR    # an export version folder, e.g. exports/cifar10_rlfat_p/1
#
# The virtual environment gets the numpy and ai-edge-litert versions installed
# in the current environment (${PYTHON:-python}), from the package index.
# Exits non-zero if TensorFlow is importable there, if edge_eval fails on any
# .tflite in EXPORT_DIR/edge/, or if the float32 model's logits differ from
# the Keras model's by more than 1e-4.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python}"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
start=$SECONDS

export_dir="${1:-}"
if [[ -z "$export_dir" ]]; then
  echo "== training and exporting a smoke model (main environment)"
  (cd "$ROOT" && "$PYTHON" -m rlfat_tf.train --flagfile=flags/smoke.cfg \
      --model_dir="$WORK/run" --noprogress >"$WORK/train.log" 2>&1) ||
      { cat "$WORK/train.log"; exit 1; }
  (cd "$ROOT" && "$PYTHON" -m rlfat_tf.export --model_dir="$WORK/run" \
      --export_dir="$WORK/exports" --model_name=smoke --eval_examples=200 \
      --pgd_steps=5 --noprogress >"$WORK/export.log" 2>&1) ||
      { cat "$WORK/export.log"; exit 1; }
  export_dir="$WORK/exports/smoke/1"
fi
edge="$export_dir/edge"
if [[ ! -f "$edge/eval_set.npz" ]]; then
  echo "error: $edge/eval_set.npz is missing: pass an export version folder" \
       "written by rlfat_tf.export" >&2
  exit 2
fi
echo "== artifacts ready after $((SECONDS - start)) s"

numpy_version="$("$PYTHON" -c 'import importlib.metadata as m; print(m.version("numpy"))')"
litert_version="$("$PYTHON" -c 'import importlib.metadata as m; print(m.version("ai-edge-litert"))')"
echo "== creating a virtual environment with numpy==$numpy_version ai-edge-litert==$litert_version"
"$PYTHON" -m venv "$WORK/venv"
venv_python="$WORK/venv/bin/python"
"$venv_python" -m pip install --quiet --disable-pip-version-check \
    "numpy==$numpy_version" "ai-edge-litert==$litert_version"
for module in tensorflow keras absl; do
  if "$venv_python" -c "import $module" 2>/dev/null; then
    echo "error: $module is importable in the edge environment" >&2
    exit 1
  fi
done
echo "== environment ready after $((SECONDS - start)) s (no tensorflow, keras or absl)"

shopt -s nullglob
models=("$edge"/*.tflite)
if (( ${#models[@]} == 0 )); then
  echo "error: no .tflite in $edge: export with --tflite other than none" >&2
  exit 2
fi
for model in "${models[@]}"; do
  name="$(basename "$model" .tflite)"
  echo "== edge_eval $name"
  # Only the package folder is put on the path; rlfat_tf/__init__.py imports
  # nothing, so edge_eval brings in numpy, LiteRT and rlfat_tf.errors alone.
  (cd "$WORK" && PYTHONPATH="$ROOT" "$venv_python" -m rlfat_tf.edge_eval \
      --tflite="$model" --data="$edge/eval_set.npz" --latency_runs=50 \
      --json="$WORK/$name.json")
done
if [[ -f "$WORK/float32.json" ]]; then
  "$venv_python" - "$WORK/float32.json" <<'EOF'
import json
import sys

report = json.load(open(sys.argv[1]))
if report["max_abs_logit_diff"] > 1e-4 or report["clean_agreement"] != 1.0:
  sys.exit(f"error: float32 differs from Keras: max |logit diff| "
           f"{report['max_abs_logit_diff']:.3g}, agreement "
           f"{report['clean_agreement']}")
EOF
fi
echo "== edge_eval ran without TensorFlow on ${#models[@]} model(s) in $((SECONDS - start)) s"
