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
  # the install builds the JupyterLab extension (labextension/, hatch-jupyter-builder: jlpm, then
  # jlpm build) unless it is built already: that needs Node.js
  if [ ! -f jupyter_ds_jobs/labextension/package.json ] && ! command -v node >/dev/null 2>&1; then
    echo "error: Node.js 20 or newer is needed to build the JupyterLab extension (labextension/)" >&2
    return 1
  fi
  echo "==> installing jupyter_ds_jobs[$extras] into $dir"
  "$dir/bin/python" -m pip install -q --disable-pip-version-check -e ".[$extras]" 2>&1 | grep -v "^WARNING: Location" || true
  "$dir/bin/python" -c 'import jupyter_ds_jobs' || { echo "error: install into $dir failed" >&2; return 1; }
}

# The browser tests (tests/test_lab_*.py) drive Debian's Chromium; playwright never downloads one.
# As root (CI) a missing /usr/bin/chromium is installed with apt; otherwise a note says what to do
# and those tests fail, unless DS_JOBS_SKIP_BROWSER_TESTS=1 says to skip them (then nothing is
# installed).
ensure_chromium() {
  local chromium=${DS_JOBS_CHROMIUM:-/usr/bin/chromium}
  [ -x "$chromium" ] && return 0
  [ "${DS_JOBS_SKIP_BROWSER_TESTS:-}" = 1 ] && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "==> installing chromium for the browser tests"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "note: $chromium is missing and this is not root: the browser tests will fail;" \
      "install chromium (apt-get install -y chromium) or set DS_JOBS_SKIP_BROWSER_TESTS=1" >&2
  fi
}

# The official DataSphere CLI's wheel, for the test that compares its channel and sign-in
# metadata with ours (tests/test_official_cli.py). Fetched at set-up; the tests run offline.
# It is not installed: its dependencies would pin packages below ours.
OFFICIAL_CLI_WHEEL_DIR=.cache/official-cli
ensure_official_cli() {
  local dir=$OFFICIAL_CLI_WHEEL_DIR
  ls "$dir"/datasphere-0.10.0-*.whl >/dev/null 2>&1 && return 0
  echo "==> fetching the official datasphere CLI wheel (0.10.0) for the comparison test"
  "$1" -m pip download -q --disable-pip-version-check --no-deps -d "$dir" "datasphere==0.10.0" 2>&1 \
    | grep -v "^WARNING: Location" || true
}
