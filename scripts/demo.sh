#!/usr/bin/env bash
# Install metrogate into ./.venv and run the demo: the real daemon against simulated
# instruments (an MT-SICS balance on a pty pair, an SDM630 meter over Modbus TCP) and an
# embedded MQTT broker. Extra arguments go to `metrogate demo` (default: --duration 30).
source "$(dirname "$0")/_venv.sh"
.venv/bin/python -m pip install --quiet -e .
if [ "$#" -eq 0 ]; then set -- --duration 30; fi
exec .venv/bin/metrogate demo "$@"
