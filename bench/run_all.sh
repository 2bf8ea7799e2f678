#!/usr/bin/env bash
# Runs the five benchmarks one after the other; each prints its own figures (no timed assertion
# anywhere). PYTHON picks the interpreter (default: the project's .venv from scripts/setup-env.sh);
# the certbot beside it is the one measured. Takes about 6 minutes on a 2-core machine
# (lineages.py at its default N = 30 only; N = 100 and 300 take minutes more each).
#   bench/run_all.sh                    PYTHON=/path/to/venv/bin/python bench/run_all.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
if [[ ! -x $PYTHON ]]; then
  echo "no $PYTHON: run scripts/setup-env.sh first, or set PYTHON" >&2
  exit 1
fi
status=0
for script in startup api_economy fleet memory lineages; do
  echo
  echo "======== bench/$script.py ($(date -u +%H:%M:%S) UTC)"
  start=$SECONDS
  "$PYTHON" "bench/$script.py" || { echo "bench/$script.py failed" >&2; status=1; }
  echo "(bench/$script.py took $((SECONDS - start)) s)"
done
exit $status
