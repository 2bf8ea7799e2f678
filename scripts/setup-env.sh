#!/usr/bin/env bash
# Makes everything the tests and the demo need: Debian's pebble and lego, a virtualenv with certbot and the
# dev tools, and the plugin installed from a freshly built wheel (so tests exercise what users get).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}

# pebble is the ACME server of the end-to-end tests; lego, a second ACME client, runs the
# deploy command as its hook in one of them (skipped without lego, a failure under CI).
missing=()
command -v pebble >/dev/null && command -v pebble-challtestsrv >/dev/null || missing+=(pebble)
command -v lego >/dev/null || missing+=(lego)
# systemd-analyze (verify, and the security rating of the sync unit) comes with systemd; the
# monitoring docs' snippets are checked with a real node_exporter and promtool (prometheus).
command -v systemd-analyze >/dev/null || missing+=(systemd)
command -v prometheus-node-exporter >/dev/null || missing+=(prometheus-node-exporter)
command -v promtool >/dev/null || missing+=(prometheus)
if [[ ${#missing[@]} -gt 0 ]]; then
  if [[ $(id -u) -eq 0 ]]; then
    echo "== installing Debian's ${missing[*]}"
    apt-get update -qq
    # Only the programs are wanted: no service (prometheus, node_exporter) is started by the
    # install where systemd runs (policy-rc.d 101 = "not allowed", Debian's convention).
    policy=/usr/sbin/policy-rc.d
    [[ -e $policy ]] || { printf '#!/bin/sh\nexit 101\n' >"$policy"; chmod 755 "$policy"; made_policy=1; }
    installed=0
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" \
      >/dev/null || installed=$?
    [[ -z ${made_policy:-} ]] || rm -f "$policy"  # removed whatever the install did
    [[ $installed -eq 0 ]] || { echo "apt-get install ${missing[*]} failed" >&2; exit 1; }
  elif [[ ${missing[0]} == pebble ]]; then
    echo "pebble is missing: run 'sudo apt-get install ${missing[*]}' (Debian/Ubuntu) first." >&2
    exit 1
  else
    echo "${missing[*]} missing ('sudo apt-get install ${missing[*]}'): the tests needing them will be" \
      "skipped." >&2
  fi
fi

if [[ ! -x $VENV/bin/python ]]; then
  echo "== creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
echo "== installing certbot and the dev tools"
"$VENV/bin/python" -m pip install -q -r requirements-dev.txt 2>&1 | grep -v '^WARNING: Location' || true
echo "== building the sdist and wheel, installing the wheel"
rm -rf dist
# The build tool's progress goes to a log, shown only if the build fails.
build_log=$VENV/build.log
"$VENV/bin/python" -m build -q --outdir dist . >"$build_log" 2>&1 \
  || { cat "$build_log" >&2; echo "building the wheel failed (log: $build_log)" >&2; exit 1; }
"$VENV/bin/python" -m pip install -q --force-reinstall --no-deps dist/certbot_incapsula-*.whl 2>&1 \
  | grep -v '^WARNING: Location' || true
# One scratch dir for the checks below, removed however the script ends.
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
# The sdist must build the same wheel (a packager building from it gets what the tests tested).
sdist_wheel=$scratch/sdist-wheel
"$VENV/bin/python" -m pip wheel -q --no-deps -w "$sdist_wheel" dist/certbot_incapsula-*.tar.gz \
  >>"$build_log" 2>&1 \
  || { cat "$build_log" >&2; echo "building a wheel from the sdist failed (log: $build_log)" >&2; exit 1; }
list_wheel() { "$VENV/bin/python" -c 'import sys, zipfile; print("\n".join(sorted(zipfile.ZipFile(sys.argv[1]).namelist())))' "$1"; }
diff <(list_wheel dist/certbot_incapsula-*.whl) <(list_wheel "$sdist_wheel"/certbot_incapsula-*.whl) \
  || { echo "the wheel built from the sdist differs from dist/'s wheel" >&2; exit 1; }
"$VENV/bin/certbot" plugins --config-dir "$scratch/config" --work-dir "$scratch/work" \
  --logs-dir "$scratch/logs" 2>/dev/null | grep -q '^\* incapsula' \
  || { echo "certbot does not list the incapsula plugin after install" >&2; exit 1; }
