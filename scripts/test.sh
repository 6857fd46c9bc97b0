#!/usr/bin/env bash
# Install metrogate with its test extras into ./.venv, make sure the services the tests run
# for real are installed (Debian's mosquitto, PostgreSQL, libfaketime and iproute2; the tests
# start their own private instances on free loopback ports), then run the checks in STYLE.md's order:
# ruff format, ruff check, mypy, lint-imports, pytest. Extra arguments go to pytest.
source "$(dirname "$0")/_venv.sh"
need=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || need+=(postgresql)
compgen -G "/usr/lib/*/faketime/libfaketime.so.1" >/dev/null || need+=(faketime)
# `ip` (network namespaces) for the fault scenario that cuts the broker's network.
command -v ip >/dev/null 2>&1 || [ -x /usr/sbin/ip ] || [ -x /sbin/ip ] || need+=(iproute2)
if [ "${#need[@]}" -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  else
    echo "the tests need Debian packages: ${need[*]} (sudo apt-get install ${need[*]})" >&2
    exit 1
  fi
fi
.venv/bin/python -m pip install --quiet -e ".[test]"
export PATH="$PWD/.venv/bin:/usr/sbin:$PATH"
echo "== ruff format --check"; ruff format --check .
echo "== ruff check";          ruff check .
echo "== mypy";                mypy .
echo "== lint-imports";        lint-imports
echo "== pytest";              exec pytest "$@"
