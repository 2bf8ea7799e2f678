#!/usr/bin/env bash
# Compatibility check (issue 5): the plugin against the certbots that users have.
#
# For each target: makes its environment, installs the plugin from a freshly built wheel the way a
# user would (without changing certbot), checks `certbot plugins` lists incapsula, then runs
# tests/test_e2e_compat.py with the main venv's pytest against that certbot (INCAPSULA_CERTBOT).
#
#   scripts/compat.sh                      every target
#   scripts/compat.sh certbot1.12 py313    some targets
#
# Targets:
#   py310, py312, py313   certbot 5.8.0 (PyPI) under Python 3.10, 3.12 and 3.13 (pyenv or pythonX.Y on PATH)
#   certbot1.21    certbot 1.21.0 (Ubuntu 22.04's release), PyPI, Python 3.11
#   certbot1.12    certbot 1.12.0 (Debian 11's release, zope.interface only), PyPI, Python 3.11
#   certbot1.21-py310, certbot1.12-py39
#                  the same two under the Python their distro runs them with (Ubuntu 22.04: 3.10,
#                  Debian 11: 3.9)
#   debian-apt     Debian's own certbot (apt, /usr/bin/certbot) + pip --break-system-packages.
#                  It changes the machine: only as root with CI set or COMPAT_APT=1, else skipped.
#
# Venvs live in .venv-compat/NAME and are reused while their pins and Python are unchanged.
# Environment: COMPAT_JOBS (targets run at once, default all), COMPAT_APT=1, VENV (main venv,
# default .venv, made by scripts/setup-env.sh when missing), PYTEST_ARGS (extra pytest args).
# Exit status: 0 when no target failed (skipped ones do not fail unless named or under CI).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VENV=${VENV:-.venv}
COMPAT=$ROOT/.venv-compat
ALL_TARGETS=(py310 py312 py313 certbot1.21 certbot1.12 certbot1.21-py310 certbot1.12-py39 debian-apt)

# Pins per target: exactly what gets installed before the plugin. Old certbots need old
# libraries: josepy 2 dropped what acme 1.x uses, pyOpenSSL/cryptography moved on, and
# setuptools 81 removes pkg_resources, which certbot 1.x (and Debian's 2.1) imports.
pins() {
  case $1 in
    py310|py312|py313) echo "certbot==5.8.0 acme==5.8.0" ;;
    certbot1.21|certbot1.21-py310) echo "certbot==1.21.0 acme==1.21.0 josepy<2 pyOpenSSL<23.2 cryptography<41 setuptools>=75.9,<81" ;;
    certbot1.12|certbot1.12-py39) echo "certbot==1.12.0 acme==1.12.0 josepy<1.14 pyOpenSSL<23 cryptography<39 urllib3<2 requests<2.32 setuptools>=70,<81" ;;
  esac
}
python_version_for() {
  case $1 in py310|*-py310) echo 3.10 ;; py312) echo 3.12 ;; py313) echo 3.13 ;; *-py39) echo 3.9 ;; *) echo 3.11 ;; esac
}

usage() { sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//'; }

targets=()
for arg in "$@"; do
  case $arg in
    -h|--help) usage; exit 0 ;;
    py310|py312|py313|certbot1.21|certbot1.12|certbot1.21-py310|certbot1.12-py39|debian-apt) targets+=("$arg") ;;
    *) echo "unknown target '$arg' (known: ${ALL_TARGETS[*]})" >&2; exit 2 ;;
  esac
done
explicit=$(( ${#targets[@]} > 0 ))
(( explicit )) || targets=("${ALL_TARGETS[@]}")
# All at once by default: a target spends most of its time in certbot's fixed poll sleeps, so
# seven of them on two cores take little longer than the slowest one alone.
JOBS=${COMPAT_JOBS:-${#targets[@]}}

# A target that cannot run here is a skip when it was not asked for by name, a failure otherwise
# (and always under CI, which must not pass by skipping).
strict() { (( explicit )) || [[ -n ${CI:-} ]]; }

# -- shared preparation ------------------------------------------------------------------------

if [[ ! -x $VENV/bin/pytest ]]; then
  echo "== $VENV/bin/pytest missing: running scripts/setup-env.sh"
  scripts/setup-env.sh || echo "(scripts/setup-env.sh exited non-zero; going on if pytest is there)"
  [[ -x $VENV/bin/pytest ]] || { echo "no $VENV/bin/pytest after scripts/setup-env.sh" >&2; exit 1; }
fi
command -v pebble >/dev/null || [[ -x /usr/bin/pebble ]] \
  || { echo "pebble is missing: run scripts/setup-env.sh (apt-get install pebble)" >&2; exit 1; }

mkdir -p "$COMPAT/wheel" "$COMPAT/logs"
echo "== building the wheel"
rm -f "$COMPAT"/wheel/*.whl
"$VENV/bin/python" -m pip wheel -q --no-deps --disable-pip-version-check . -w "$COMPAT/wheel" \
  >"$COMPAT/logs/wheel.log" 2>&1 || { cat "$COMPAT/logs/wheel.log" >&2; exit 1; }
WHEEL=$(ls "$COMPAT"/wheel/certbot_incapsula-*.whl)

# pip.conf here may name extra index locations that do not exist: their warnings are noise.
quiet_pip() { grep -v -e "^WARNING: Location '" -e '^$' || true; }

find_python() {  # find_python 3.10 -> an interpreter's real path, or nothing
  local want=$1 candidate real
  local -a candidates
  mapfile -t candidates < <(printf '%s\n' "${PYENV_ROOT:-$HOME/.pyenv}"/versions/"$want".*/bin/python | sort -V -r)
  for candidate in "${candidates[@]}" "python$want"; do
    real=$("$candidate" -c 'import sys, venv; print(sys.executable)' 2>/dev/null) || continue
    [[ $("$real" -c 'import sys; print("%d.%d" % sys.version_info[:2])') == "$want" ]] && { echo "$real"; return; }
  done
}

# -- one target --------------------------------------------------------------------------------
# Each writes $COMPAT/results/NAME: "STATUS|certbot version|python version|setup s|tests s|note"
# and its full output in $COMPAT/logs/NAME.log.

record() { echo "$2|$3|$4|$5|$6|$7" >"$COMPAT/results/$1"; }

check_plugins_listed() {  # check_plugins_listed CERTBOT
  local tmp; tmp=$(mktemp -d)
  "$1" plugins --config-dir "$tmp/c" --work-dir "$tmp/w" --logs-dir "$tmp/l" >"$tmp/out" 2>&1 || true
  if grep -q '^\* incapsula' "$tmp/out"; then rm -rf "$tmp"; return 0; fi
  echo "certbot plugins does not list incapsula:"; cat "$tmp/out"; rm -rf "$tmp"; return 1
}

run_tests() {  # run_tests CERTBOT VERSION [PYTHON]
  local -a extra
  read -r -a extra <<<"${PYTEST_ARGS:-}"
  INCAPSULA_CERTBOT=$1 INCAPSULA_CERTBOT_VERSION=$2 INCAPSULA_PYTHON=${3:-} \
    "$VENV/bin/pytest" -q -rs "${extra[@]}" tests/test_e2e_compat.py
}

venv_target() {
  local name=$1 dir=$COMPAT/$1 want py pyver stamp note=reused t0 t1 t2 version status
  t0=$SECONDS
  want=$(python_version_for "$name")
  py=$(find_python "$want")
  if [[ -z $py ]]; then
    echo "no Python $want found (pyenv or python$want on PATH)"
    record "$name" "$(strict && echo FAIL || echo SKIP)" "-" "$want" 0 0 "no python$want"
    return
  fi
  pyver=$("$py" -c 'import platform; print(platform.python_version())')
  stamp="python=$py $pyver; pins=$(pins "$name")"
  if [[ ! -x $dir/bin/certbot || $(cat "$dir/.compat-stamp" 2>/dev/null) != "$stamp" ]]; then
    note=built
    echo "== $name: venv with Python $pyver: $(pins "$name")"
    rm -rf "$dir"
    # shellcheck disable=SC2046  # the pins are words on purpose
    if ! { "$py" -m venv "$dir" && "$dir/bin/python" -m pip install -q --disable-pip-version-check \
             $(pins "$name") 2>&1 | quiet_pip; } || [[ ! -x $dir/bin/certbot ]]; then
      record "$name" FAIL - "$pyver" $((SECONDS - t0)) 0 "the pins do not install"; return
    fi
    echo "$stamp" >"$dir/.compat-stamp"
  fi
  version=$("$dir/bin/python" -c 'from importlib.metadata import version; print(version("certbot"))')
  # The plain install a user would do: the plugin's requirements are low bounds that the pinned
  # certbot already meets, so pip must not touch certbot. Checked just after.
  echo "== $name: pip install $(basename "$WHEEL") (certbot $version)"
  "$dir/bin/python" -m pip uninstall -q -y certbot-incapsula 2>&1 | quiet_pip
  if ! "$dir/bin/python" -m pip install -q --disable-pip-version-check "$WHEEL" 2>&1 | quiet_pip; then
    record "$name" FAIL "$version" "$pyver" $((SECONDS - t0)) 0 "pip install of the wheel failed"; return
  fi
  local after
  after=$("$dir/bin/python" -c 'from importlib.metadata import version; print(version("certbot"))')
  if [[ $after != "$version" ]]; then
    echo "installing the plugin changed certbot $version -> $after"
    record "$name" FAIL "$after" "$pyver" $((SECONDS - t0)) 0 "pip changed certbot $version -> $after"
    rm -f "$dir/.compat-stamp"
    return
  fi
  "$dir/bin/python" -m pip freeze --all 2>/dev/null >"$dir/compat-freeze.txt" || true
  echo "== $name: resolved: $(grep -iE '^(certbot|acme|josepy|cryptography|pyopenssl|requests|urllib3|setuptools|zope)' "$dir/compat-freeze.txt" | tr '\n' ' ')"
  if ! check_plugins_listed "$dir/bin/certbot"; then
    record "$name" FAIL "$version" "$pyver" $((SECONDS - t0)) 0 "not in certbot plugins"; return
  fi
  t1=$SECONDS
  if run_tests "$dir/bin/certbot" "$version"; then status=PASS; else status=FAIL; fi
  t2=$SECONDS
  record "$name" "$status" "$version" "$pyver" $((t1 - t0)) $((t2 - t1)) "venv $note"
}

apt_target() {
  local name=debian-apt t0=$SECONDS t1 t2 status
  if [[ $(id -u) -ne 0 || ( -z ${CI:-} && ${COMPAT_APT:-} != 1 ) ]]; then
    echo "debian-apt changes this machine (apt-get install certbot, pip into the system Python):"
    echo "it runs only as root with CI set or COMPAT_APT=1."
    record "$name" "$( (( explicit )) && echo FAIL || echo SKIP)" - - 0 0 "needs root and CI or COMPAT_APT=1"
    return
  fi
  if ! command -v apt-get >/dev/null; then
    record "$name" "$(strict && echo FAIL || echo SKIP)" - - 0 0 "no apt-get"; return
  fi
  local pkg missing=()
  for pkg in certbot python3-pip; do
    dpkg-query -W -f '${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
  done
  if (( ${#missing[@]} )); then
    echo "== $name: apt-get install ${missing[*]}"
    if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null; }; then
      record "$name" FAIL - - $((SECONDS - t0)) 0 "apt-get install ${missing[*]} failed"; return
    fi
  fi
  local py=/usr/bin/python3 certbot=/usr/bin/certbot pyver version debver
  pyver=$("$py" -c 'import platform; print(platform.python_version())')
  debver=$(dpkg-query -W -f '${Version}' python3-certbot)
  version=${debver%%-*}
  local -a watched=(python3-certbot python3-acme python3-josepy python3-cryptography python3-requests
                    python3-urllib3 python3-openssl python3-configobj)
  # What pip must leave alone: the Debian packages' versions, their files and dist-packages.
  local before_pkgs before_dist after_pkgs after_dist
  before_pkgs=$(dpkg-query -W "${watched[@]}" 2>/dev/null || true)
  before_dist=$(ls /usr/lib/python3/dist-packages)

  echo "== $name: Debian certbot $debver, Python $pyver"
  # The plain install would resolve to nothing else either (dependencies met by apt's packages):
  "$py" -m pip install --dry-run --break-system-packages "$WHEEL" 2>&1 | quiet_pip | grep -i 'would install' || true
  "$py" -m pip uninstall -q -y --break-system-packages certbot-incapsula 2>&1 | quiet_pip
  echo "== $name: pip install --break-system-packages --no-deps $(basename "$WHEEL")"
  if ! "$py" -m pip install -q --break-system-packages --no-deps "$WHEEL" 2>&1 | quiet_pip; then
    record "$name" FAIL "$version" "$pyver" $((SECONDS - t0)) 0 "pip install of the wheel failed"; return
  fi
  "$py" -m pip show certbot-incapsula 2>/dev/null | grep -i "^Location" || true

  after_pkgs=$(dpkg-query -W "${watched[@]}" 2>/dev/null || true)
  after_dist=$(ls /usr/lib/python3/dist-packages)
  local problem=""
  [[ $before_pkgs == "$after_pkgs" ]] || problem="apt package versions changed"
  [[ $before_dist == "$after_dist" ]] || problem="/usr/lib/python3/dist-packages changed"
  dpkg --verify "${watched[@]}" >/dev/null 2>&1 || { dpkg --verify "${watched[@]}"; problem="apt files modified"; }
  if [[ -n $problem ]]; then
    echo "$problem"; record "$name" FAIL "$version" "$pyver" $((SECONDS - t0)) 0 "$problem"; return
  fi
  echo "== $name: dpkg versions, files and dist-packages unchanged"
  if ! check_plugins_listed "$certbot"; then
    record "$name" FAIL "$version" "$pyver" $((SECONDS - t0)) 0 "not in certbot plugins"; return
  fi
  t1=$SECONDS
  if run_tests "$certbot" "$version" "$py"; then status=PASS; else status=FAIL; fi
  t2=$SECONDS
  record "$name" "$status" "$version" "$pyver" $((t1 - t0)) $((t2 - t1)) "apt $debver"
}

run_target() {
  # Every step that matters is checked in the target functions (set -e does not apply inside a
  # function called from a condition); no result at all means the function itself broke.
  local name=$1
  if [[ $name == debian-apt ]]; then apt_target; else venv_target "$name"; fi >"$COMPAT/logs/$name.log" 2>&1
  [[ -f $COMPAT/results/$name ]] || record "$name" FAIL - - 0 0 "script error (see log)"
}

print_line() {
  local name=$1 status certbot python setup tests note
  IFS='|' read -r status certbot python setup tests note <"$COMPAT/results/$name"
  printf '%-17s certbot %-7s python %-8s %-4s %4ss  (setup %ss, tests %ss; %s)\n' \
    "$name" "$certbot" "$python" "$status" "$((setup + tests))" "$setup" "$tests" "$note"
}

# -- run: up to $JOBS targets at once (each has its own pebble and Imperva double on free ports)

rm -rf "$COMPAT/results"; mkdir -p "$COMPAT/results"
started=$SECONDS
for name in "${targets[@]}"; do
  while (( $(jobs -rp | wc -l) >= JOBS )); do wait -n || true; done
  echo "== $name: started (log: .venv-compat/logs/$name.log)"
  run_target "$name" &
done
wait || true

echo
echo "== compatibility results (wall time $((SECONDS - started)) s)"
failed=0 passes=0 skips=0
for name in "${targets[@]}"; do
  [[ -f $COMPAT/results/$name ]] || record "$name" FAIL - - 0 0 "no result"
  print_line "$name"
  case $(cut -d'|' -f1 "$COMPAT/results/$name") in
    PASS) passes=$((passes + 1)) ;;
    SKIP) skips=$((skips + 1)) ;;
    *)
      failed=$((failed + 1))
      echo "---- $name: last lines of .venv-compat/logs/$name.log"
      tail -n 60 "$COMPAT/logs/$name.log" | sed 's/^/  /'
      ;;
  esac
done
# One line in the plain "N passed, N failed" form, counting targets, for CI's reader.
echo "compat: $passes passed, $failed failed, $skips skipped"
exit $(( failed > 0 ))
