#!/usr/bin/env bash
# The project's test command: sets everything up, then lint, types and the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
scripts/setup-env.sh
echo "== ruff"
"$VENV/bin/ruff" check .
echo "== mypy"
"$VENV/bin/mypy" certbot_incapsula
echo "== pytest"
# The venv's pytest (not python -m pytest): the tests import the installed wheel, not the tree.
exec "$VENV/bin/pytest" -q "$@"
