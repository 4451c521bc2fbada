# Sourced by scripts/test and scripts/demo: make (or reuse) a venv and install the project.
# usage: make_venv DIR EXTRAS
make_venv() {
  local dir=$1 extras=$2 py=${PYTHON:-}
  if [ -z "$py" ]; then
    for cand in python3.11 python3.12 python3.13 python3; do
      if command -v "$cand" >/dev/null 2>&1 && "$cand" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
        py=$cand; break
      fi
    done
  fi
  [ -n "$py" ] || { echo "error: Python 3.11 or newer is needed" >&2; return 1; }
  if [ ! -x "$dir/bin/python" ]; then
    echo "==> creating $dir with $py"
    "$py" -m venv "$dir"
    "$dir/bin/python" -m pip install -q --upgrade pip
  fi
  echo "==> installing jupyter_ds_jobs[$extras] into $dir"
  "$dir/bin/python" -m pip install -q --disable-pip-version-check -e ".[$extras]" 2>&1 | grep -v "^WARNING: Location" || true
  "$dir/bin/python" -c 'import jupyter_ds_jobs' || { echo "error: install into $dir failed" >&2; return 1; }
}
