#!/usr/bin/env bash
# The fault-injection suite (tests/faults) against the real daemon, mosquitto and the
# simulators, then its counts rendered into README.md ("Fault injection"). Extra arguments
# go to pytest; --soak runs the long soak scenarios instead of the CI ones. The counts go to
# $METROGATE_FAULT_RESULTS (default: a fresh tests/faults/results/).
# Needs mosquitto (scripts/test.sh installs it) and root for the network-namespace scenario.
source "$(dirname "$0")/_venv.sh"
.venv/bin/python -m pip install --quiet -e ".[test]"
export PATH="$PWD/.venv/bin:/usr/sbin:$PATH"
export METROGATE_FAULT_RESULTS="${METROGATE_FAULT_RESULTS:-$PWD/tests/faults/results}"
args=()
for arg in "$@"; do
  if [ "$arg" = "--soak" ]; then args+=(-m soak); else args+=("$arg"); fi
done
rm -rf "$METROGATE_FAULT_RESULTS"
status=0
pytest tests/faults -s -p no:cacheprovider "${args[@]}" || status=$?
python -m tests.faults.report "$METROGATE_FAULT_RESULTS" --readme README.md || status=$?
exit "$status"
