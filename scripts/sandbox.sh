#!/usr/bin/env bash
# Try the plugin by hand: sets up pebble and the virtualenv, then runs demo/sandbox.py, which
# serves pebble and the Imperva test double on loopback until Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-env.sh
exec "${VENV:-.venv}/bin/python" demo/sandbox.py "$@"
