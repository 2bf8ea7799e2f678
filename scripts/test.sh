#!/usr/bin/env bash
# The project's test command: sets everything up, then lint, types and the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
# The tests mostly wait (certbot's sleeps, pebble, the doubles' delays), so more workers than
# cores pay; each worker starts its own pebble. INCAPSULA_TEST_WORKERS=0 runs them in this process.
WORKERS=${INCAPSULA_TEST_WORKERS:-4}
if ! [[ $WORKERS =~ ^[0-9]+$ ]]; then
  echo "INCAPSULA_TEST_WORKERS=$WORKERS is not a number of workers (0 runs the tests without xdist)" >&2
  exit 2
fi
scripts/setup-env.sh
echo "== ruff"
"$VENV/bin/ruff" check .
echo "== mypy"
"$VENV/bin/mypy" certbot_incapsula
echo "== pytest ($WORKERS workers)"
# The venv's pytest (not python -m pytest): the tests import the installed wheel, not the tree.
# --dist load: any test to any free worker (conftest.py keeps the demo's tests on one).
exec "$VENV/bin/pytest" -q -n "$WORKERS" --dist load "$@"
