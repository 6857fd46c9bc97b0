# Sourced by scripts/demo.sh and scripts/test.sh: make ./.venv with Python >= 3.11.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-}
if [ -z "$PYTHON" ]; then
  for candidate in python3.11 python3.12 python3.13 python3; do
    if command -v "$candidate" >/dev/null 2>&1; then PYTHON=$candidate; break; fi
  done
fi
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
  echo "metrogate needs Python >= 3.11 (found $("$PYTHON" --version 2>&1))" >&2; exit 1; }
if [ ! -x .venv/bin/python ]; then
  if ! "$PYTHON" -m venv .venv; then
    # Debian and Ubuntu ship venv's pip bootstrap (ensurepip) in a package of its own.
    rm -rf .venv
    venv_pkg="python3.$("$PYTHON" -c 'import sys; print(sys.version_info.minor)')-venv"
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
      export DEBIAN_FRONTEND=noninteractive
      apt-get update -qq && apt-get install -y -qq "$venv_pkg" >/dev/null
      "$PYTHON" -m venv .venv
    else
      echo "cannot create .venv: install $venv_pkg (e.g. sudo apt-get install $venv_pkg)" >&2
      exit 1
    fi
  fi
fi
.venv/bin/python -m pip install --quiet --upgrade pip
