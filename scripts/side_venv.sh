# Sourced by install_art.sh and install_autoattack.sh: the two steps they
# share in making a virtual environment on top of the main one.
#
#   side_venv_install VENV PYTHON PACKAGE...
#       makes VENV with --system-site-packages (TensorFlow and Keras are
#       shared, not copied) and pip-installs PACKAGE... into it with every
#       pinned package of PYTHON's environment as a constraint, so the
#       install can add packages but never shadow one with another version.
#   side_venv_check_shared VENV PYTHON
#       prints "numpy==... scipy==... tensorflow==... keras==..." when VENV
#       resolves them to PYTHON's versions; otherwise one error line on
#       stderr and exit 1.

side_venv_install() {
  local venv="$1" python="$2"
  shift 2
  SIDE_VENV_WORK="$(mktemp -d)"
  trap 'rm -rf "$SIDE_VENV_WORK"' EXIT
  local work="$SIDE_VENV_WORK"
  # Pinned lines only: editable or URL installs cannot be constraints.
  "$python" -m pip freeze --disable-pip-version-check |
      grep -E '^[A-Za-z0-9_.-]+==' >"$work/constraints.txt"
  "$python" -m venv --system-site-packages "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
      -c "$work/constraints.txt" "$@"
}

side_venv_check_shared() {
  local venv="$1" python="$2"
  local versions='import importlib.metadata as m
print(" ".join(f"{p}=={m.version(p)}" for p in ("numpy", "scipy", "tensorflow", "keras")))'
  local main_versions venv_versions
  main_versions="$("$python" -c "$versions")"
  venv_versions="$("$venv/bin/python" -c "$versions")"
  if [[ "$main_versions" != "$venv_versions" ]]; then
    echo "error: $venv resolves $venv_versions, the main environment" \
         "$main_versions: delete $venv and run this script again" >&2
    exit 1
  fi
  echo "$main_versions"
}
