#!/usr/bin/env bash
# The local demo: sets up pebble and the virtualenv, then runs demo/demo.py.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-env.sh
exec "${VENV:-.venv}/bin/python" demo/demo.py
