#!/usr/bin/env bash
# Runs the paper's experiments at full scale: trains every selected
# flags/<dataset>_<method>.cfg (WRN-34-10 or WRN-40-2 for 79,800 or 29,700
# steps; meant for a machine with a GPU), evaluates each run on the full test
# set, and writes one report over all results. See --help.
#
# Rerunning the same command continues where it stopped: training resumes from
# the run's last checkpoint, and an evaluation whose results file exists is
# skipped. A training or evaluation that fails stops the script with its exit
# status (evaluate exits 3 after writing a results file with a failed
# integrity check, so a rerun then goes on and the report shows the failure).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python}"
# Paper order, the ablations last, so that an interrupted sweep has the main
# table first. Names are validated against flags/datasets/ and flags/methods/.
DEFAULT_DATASETS="cifar10,cifar100,stl10"
DEFAULT_METHODS="pgdat,trades,rlfat_p,rlfat_t,rbsat_p,rbsat_t"

usage() {
  cat <<EOF
Usage: scripts/reproduce_paper.sh [--name=value ...]

Trains every selected paper experiment (flags/<dataset>_<method>.cfg), then
evaluates each run (python -m rlfat_tf.evaluate, full test set) and writes one
report (python -m rlfat_tf.report). Runs from any directory; default folders
are relative to the repository root, folders given on the command line to the
current directory. Rerun the same command to continue after an interruption.

Options:
  --data_dir=PATH       official binary releases, passed to training (default:
                        none, tensorflow-datasets downloads the data)
  --runs_dir=PATH       training runs, one folder per experiment (runs/paper)
  --results_dir=PATH    results files, <dataset>_<method>.json (results/paper)
  --report_dir=PATH     the report (report/paper)
  --datasets=A,B        subset of: $(choices datasets)
                        (default: $DEFAULT_DATASETS)
  --methods=A,B         subset of: $(choices methods)
                        (default: $DEFAULT_METHODS)
  --dry_run             print every command in order and the GPU-hours
                        estimate, and run nothing
  --help                this message

Environment: PYTHON (default: python) runs the rlfat_tf commands.
EOF
}

die() {
  echo "error: $1" >&2
  exit "${2:-2}"
}

# The names that have a layer file in flags/<kind>/, comma-separated.
choices() {
  local names=() f
  for f in "$ROOT/flags/$1"/*.cfg; do
    names+=("$(basename "$f" .cfg)")
  done
  local IFS=,
  echo "${names[*]}" | sed 's/,/, /g'
}

# Checks the comma list $3 of option $1: every name has a file in
# flags/<kind>/ ($2), and none repeats.
check_list() {
  local option="$1" kind="$2" name seen=","
  local -a items
  IFS=, read -r -a items <<<"$3"
  (( ${#items[@]} > 0 )) || die "--$option is empty; choose from $(choices "$kind")"
  for name in "${items[@]}"; do
    [[ -n "$name" && -f "$ROOT/flags/$kind/$name.cfg" ]] ||
        die "unknown ${kind%s} '$name' in --$option; choose from $(choices "$kind")"
    [[ "$seen" != *",$name,"* ]] || die "--$option lists '$name' twice"
    seen+="$name,"
  done
}

# A path given on the command line, made absolute against the caller's
# directory before the script moves to the repository root.
from_caller() {
  case "$1" in
    /*) echo "$1" ;;
    *) echo "$PWD/$1" ;;
  esac
}

# The "= N h." runtime estimate stated in an experiment file's header.
hours_of() {
  local found
  found="$(grep -E '^#.*= [0-9]+(\.[0-9]+)? h\.' "$1" |
           grep -oE '= [0-9]+(\.[0-9]+)? h\.' | sed -E 's/^= //; s/ h\.$//')"
  [[ -n "$found" && "$found" != *$'\n'* ]] ||
      die "$1: the header must state exactly one runtime estimate '= N h.' (cost model: flags/common.cfg)" 1
  echo "$found"
}

# Prints a command one can paste into a shell: an argument with characters
# outside a safe set goes in single quotes (printf %q would also escape
# the commas of --results).
show() {
  local arg line="" quote="'\\''"
  for arg in "$@"; do
    if [[ "$arg" =~ ^[A-Za-z0-9_./=,:@%+-]+$ ]]; then
      line+=" $arg"
    else
      line+=" '${arg//\'/$quote}'"
    fi
  done
  echo "${line# }"
}

data_dir=""
runs_dir="runs/paper"
results_dir="results/paper"
report_dir="report/paper"
datasets_arg="$DEFAULT_DATASETS"
methods_arg="$DEFAULT_METHODS"
dry_run=0
for arg in "$@"; do
  case "$arg" in
    --data_dir=*) data_dir="$(from_caller "${arg#*=}")" ;;
    --runs_dir=*) runs_dir="$(from_caller "${arg#*=}")" ;;
    --results_dir=*) results_dir="$(from_caller "${arg#*=}")" ;;
    --report_dir=*) report_dir="$(from_caller "${arg#*=}")" ;;
    --datasets=*) datasets_arg="${arg#*=}" ;;
    --methods=*) methods_arg="${arg#*=}" ;;
    --dry_run) dry_run=1 ;;
    --help | -h) usage; exit 0 ;;
    *) die "unknown option '$arg'; options are --name=value, see --help" ;;
  esac
done
# The report takes the results files as one comma list.
[[ "$results_dir" != *,* ]] ||
    die "--results_dir=$results_dir has a comma, which the report's --results list cannot hold"
check_list datasets datasets "$datasets_arg"
check_list methods methods "$methods_arg"
IFS=, read -r -a datasets <<<"$datasets_arg"
IFS=, read -r -a methods <<<"$methods_arg"
cd "$ROOT"

names=()
hours=()
for dataset in "${datasets[@]}"; do
  for method in "${methods[@]}"; do
    flagfile="flags/${dataset}_${method}.cfg"
    [[ -f "$flagfile" ]] || die "$flagfile does not exist: no experiment for $dataset $method"
    names+=("${dataset}_${method}")
    hours+=("$(hours_of "$flagfile")")
  done
done
total_hours="$(printf '%s\n' "${hours[@]}" | awk '{s += $1} END {printf "%.1f", s}')"

# Runs one command, or prints it in a dry run; $1 names what it does for the
# line that reports its failure.
step() {
  local what="$1" status=0
  shift
  if (( dry_run )); then
    show "$@"
    return
  fi
  echo "== $what: $(show "$@")"
  "$@" || status=$?
  (( status == 0 )) || die "$what failed with exit status $status" "$status"
}

if (( dry_run )); then
  show cd "$ROOT"
else
  echo "== ${#names[@]} training runs, about $total_hours GPU-hours of training (flagfile estimates)"
fi
for name in "${names[@]}"; do
  train=("$PYTHON" -m rlfat_tf.train "--flagfile=flags/$name.cfg"
         "--model_dir=$runs_dir/$name")
  [[ -z "$data_dir" ]] || train+=("--data_dir=$data_dir")
  step "training $name" "${train[@]}"
done
results=()
skipped=0
for name in "${names[@]}"; do
  output="$results_dir/$name.json"
  results+=("$output")
  if [[ -e "$output" ]]; then
    echo "skip: exists: $output (evaluation of $name)"
    skipped=$((skipped + 1))
    continue
  fi
  step "evaluation of $name" "$PYTHON" -m rlfat_tf.evaluate \
      "--model_dir=$runs_dir/$name" "--output=$output"
done
joined="$(IFS=,; echo "${results[*]}")"
step report "$PYTHON" -m rlfat_tf.report "--results=$joined" \
    "--output_dir=$report_dir"
if (( dry_run )); then
  echo "summary: ${#names[@]} training runs, $total_hours GPU-hours of training" \
       "(sum of the flagfile estimates); evaluations: $((${#names[@]} - skipped))" \
       "to run, $skipped skipped; 1 report"
else
  echo "== done: $report_dir/report.md"
fi
