"""Start-up tax: what installing the plugin adds to every certbot command.

certbot imports every installed plugin's module on every command (even `certbot --version`), so
the plugin's import cost is paid by every certbot run on the machine. This script builds three
virtualenvs from the same requirements: A with the plugin installed from a freshly built wheel
(non-editable), B without it, and C, a second venv without it, as a control: C/B shows how far
two identical environments differ on this machine (the noise floor of A/B). It checks that A and
B differ by the plugin alone, and times `certbot --version` and `certbot plugins` in all three,
interleaved (every round runs A, B, C in another order). Then, in a fresh interpreter each time,
it times certbot's own main() (after certbot's imports, i.e. plugin discovery + argument parsing
+ the command) in A and B, which is far less noisy than whole processes; and it shows with
`python -X importtime` which modules the plugin adds.

    .venv/bin/python bench/startup.py [--runs 40] [--workdir DIR] [--fresh]

The venvs are kept in --workdir and reused while their requirements are the same (--fresh
rebuilds them); the plugin wheel is rebuilt and reinstalled on every run. Takes 1.5-2 minutes
(the first run also builds the venvs: about a minute more).
Goal: median(with) / median(without) <= 1.02 for both commands.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Tuple

import benchlib

REQUIREMENTS = ["certbot==5.8.0", "acme==5.8.0"]
GOAL = 1.02
PLUGIN_DIST = "certbot-incapsula"

# Run inside each venv: certbot's plugin discovery, after everything certbot has imported before
# it (certbot._internal.main.main calls find_all() before it parses the arguments).
PROBE_FIND_ALL = r"""
import json, sys, time
from certbot._internal import main, cli
from certbot._internal.plugins import disco
before = set(sys.modules)
t0 = time.perf_counter()
plugins = disco.PluginsRegistry.find_all()
t1 = time.perf_counter()
print(json.dumps({"find_all": t1 - t0, "plugins": sorted(plugins),
                  "new": sorted(set(sys.modules) - before)}))
"""
# certbot's main() after its imports: plugin discovery, the parser with every plugin's options,
# then the command itself. argv: the certbot arguments.
PROBE_MAIN = r"""
import contextlib, io, sys, time
from certbot._internal import main
sink = io.StringIO()
t0 = time.perf_counter()
with contextlib.redirect_stdout(sink):
    try:
        main.main(sys.argv[1:])
    except SystemExit:
        pass
t1 = time.perf_counter()
print(t1 - t0)
"""
# find_all() loads entry points with importlib.import_module, which -X importtime does not see:
# this one imports the plugin's module with an import statement, after the modules certbot has
# loaded by the time it looks for plugins.
PROBE_IMPORT = r"""
import sys, time
from certbot._internal import main, cli
from certbot._internal.plugins import disco
before = set(sys.modules)
sys.stderr.write("@@mark\n"); sys.stderr.flush()
t0 = time.perf_counter()
import certbot_incapsula.installer
t1 = time.perf_counter()
sys.stderr.write("@@end\n"); sys.stderr.flush()
print(t1 - t0, " ".join(sorted(set(sys.modules) - before)))
"""




# Every command runs from a neutral directory: `python -c` puts the working directory on sys.path,
# and the work tree's certbot_incapsula.egg-info would make the plugin visible in venv B too.
NEUTRAL_CWD = tempfile.gettempdir()


def run(cmd: List[str], **kwargs: object) -> subprocess.CompletedProcess:
    kwargs.setdefault("cwd", NEUTRAL_CWD)
    return subprocess.run(cmd, capture_output=True, text=True, check=False, **kwargs)  # type: ignore


def checked(cmd: List[str], what: str, **kwargs: object) -> str:
    out = run(cmd, **kwargs)
    if out.returncode != 0:
        sys.exit(f"{what} failed ({out.returncode}):\n{' '.join(cmd)}\n{out.stdout}\n{out.stderr}")
    return str(out.stdout)


def build_wheel(workdir: Path) -> Path:
    """A wheel of the current tree, built in a copy (the work tree gets no build/ dir)."""
    src = Path(tempfile.mkdtemp(prefix="src-", dir=workdir))
    for name in ("certbot_incapsula", "setup.py", "pyproject.toml", "README.md", "MANIFEST.in",
                 "setup.cfg", "LICENSE"):
        path = benchlib.ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        elif path.exists():
            shutil.copy2(path, src / name)
    out = workdir / "wheel"
    shutil.rmtree(out, ignore_errors=True)
    checked([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(src)],
            "building the plugin wheel")
    shutil.rmtree(src, ignore_errors=True)
    wheels = sorted(out.glob("certbot_incapsula-*.whl"))
    if not wheels:
        sys.exit(f"no wheel was built in {out}")
    return wheels[-1]


def make_venv(path: Path, requirements: List[str], fresh: bool) -> Path:
    marker = path / "bench-requirements.json"
    python = path / "bin" / "python"
    spec = {"requirements": requirements, "python": sys.version}
    if not fresh and python.exists() and marker.exists() and json.loads(marker.read_text()) == spec:
        return python
    shutil.rmtree(path, ignore_errors=True)
    base = getattr(sys, "_base_executable", None) or sys.executable
    checked([base, "-m", "venv", str(path)], f"creating {path}")
    checked([str(python), "-m", "pip", "install", "-q", *requirements], f"installing into {path}")
    marker.write_text(json.dumps(spec))
    return python


def freeze(python: Path) -> List[str]:
    lines = checked([str(python), "-m", "pip", "freeze", "--all"], "pip freeze").splitlines()
    mine = ("certbot-incapsula", "certbot_incapsula")
    return sorted(line for line in lines if not line.lower().startswith(mine))


def certbot_cmd(venv_python: Path, dirs: Path, *args: str) -> List[str]:
    certbot = str(venv_python.parent / "certbot")
    return [certbot, *args, "--config-dir", str(dirs / "config"), "--work-dir", str(dirs / "work"),
            "--logs-dir", str(dirs / "logs"), "--max-log-backups", "0"]


def timed(cmd: List[str], env: Dict[str, str]) -> Tuple[float, float]:
    """(wall, user+sys CPU) seconds of one run of cmd; the CPU time is the child's own (wait4),
    which other load on the machine disturbs less than the wall time."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=env, cwd=NEUTRAL_CWD)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.WEXITSTATUS(status) if os.WIFEXITED(status) else -os.WTERMSIG(status)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({proc.returncode})")
    return wall, usage.ru_utime + usage.ru_stime


def probe_find_all(python: Path, env: Dict[str, str]) -> dict:
    out = run([str(python), "-c", PROBE_FIND_ALL], env=env)
    if out.returncode != 0:
        sys.exit(f"find_all probe failed in {python}:\n{out.stderr}")
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def probe_main(python: Path, cargs: List[str], env: Dict[str, str]) -> float:
    out = run([str(python), "-c", PROBE_MAIN, *cargs], env=env)
    if out.returncode != 0:
        sys.exit(f"main() probe failed in {python}:\n{out.stderr}")
    return float(out.stdout.strip().splitlines()[-1])


def probe_import(python: Path, env: Dict[str, str]) -> Tuple[float, List[str], List[str]]:
    """(seconds, modules added, -X importtime lines) of importing the plugin after certbot."""
    out = run([str(python), "-X", "importtime", "-c", PROBE_IMPORT], env=env)
    if out.returncode != 0:
        sys.exit(f"import probe failed in {python}:\n{out.stderr}")
    seconds, _, modules = out.stdout.strip().splitlines()[-1].partition(" ")
    lines, inside = [], False
    for line in out.stderr.splitlines():
        if line.startswith("@@mark"):
            inside = True
        elif line.startswith("@@end"):
            inside = False
        elif inside and line.startswith("import time:"):
            lines.append(line)
    return float(seconds), modules.split(), lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=40, help="timed runs per command and venv")
    parser.add_argument("--warmup", type=int, default=3, help="untimed runs first, per venv")
    parser.add_argument("--probes", type=int, default=15, help="in-process timings per venv")
    parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "certbot-incapsula-bench"))
    parser.add_argument("--fresh", action="store_true", help="rebuild the venvs")
    args = parser.parse_args()

    workdir = Path(args.workdir).resolve() / "startup"
    workdir.mkdir(parents=True, exist_ok=True)
    global NEUTRAL_CWD
    NEUTRAL_CWD = str(workdir)
    print("# startup: certbot with the plugin installed (A) vs without (B; C = a second B, control)")
    for text in benchlib.machine_lines():
        print(f"#   {text}")

    t0 = time.monotonic()
    wheel = build_wheel(workdir)
    venvs = {"A": make_venv(workdir / "venv-with", REQUIREMENTS, args.fresh),
             "B": make_venv(workdir / "venv-without", REQUIREMENTS, args.fresh),
             "C": make_venv(workdir / "venv-control", REQUIREMENTS, args.fresh)}
    checked([str(venvs["A"]), "-m", "pip", "install", "-q", "--force-reinstall", "--no-deps", str(wheel)],
            "installing the plugin wheel")
    for key in "BC":
        run([str(venvs[key]), "-m", "pip", "uninstall", "-q", "-y", PLUGIN_DIST])
    print(f"#   setup: {wheel.name} built and installed in {time.monotonic() - t0:.0f} s; "
          f"venvs in {workdir}")
    frozen = {key: freeze(python) for key, python in venvs.items()}
    if not frozen["A"] == frozen["B"] == frozen["C"]:
        print("WARNING: the venvs differ by more than the plugin:")
        for key in "ABC":
            print(f"   {key}: {' '.join(frozen[key])}")
    else:
        pins = ", ".join(r for r in frozen["A"] if r.lower().startswith(("certbot==", "acme==")))
        print(f"#   all three venvs: the same {len(frozen['A'])} distributions ({pins}); "
              "A adds certbot-incapsula")

    env = dict(os.environ)
    env["XDG_CONFIG_HOME"] = str(workdir / "xdg")  # no developer's cli.ini
    env.pop("CERTBOT_PLUGIN_PATH", None)
    dirs = {key: workdir / f"dirs-{key.lower()}" for key in venvs}
    listing = {k: checked(certbot_cmd(venvs[k], dirs[k], "plugins"), "certbot plugins", env=env)
               for k in venvs}
    if "* incapsula" not in listing["A"] or any("* incapsula" in listing[k] for k in "BC"):
        sys.exit("the plugin is not listed in A, or is listed in B or C: the comparison would be void")
    print()

    commands = {"certbot --version": ("--version",), "certbot plugins": ("plugins",)}
    orders = list(itertools.permutations("ABC"))
    results: Dict[Tuple[str, str], List[Tuple[float, float]]] = {}
    inproc: Dict[Tuple[str, str], List[float]] = {}
    for label, cargs in commands.items():
        for _ in range(args.warmup):
            for key in "ABC":
                timed(certbot_cmd(venvs[key], dirs[key], *cargs), env)
        for i in range(args.runs):
            for key in orders[i % len(orders)]:
                results.setdefault((label, key), []).append(
                    timed(certbot_cmd(venvs[key], dirs[key], *cargs), env))
        for i in range(args.probes):
            for key in ("AB" if i % 2 == 0 else "BA"):
                inproc.setdefault((label, key), []).append(
                    probe_main(venvs[key], certbot_cmd(venvs[key], dirs[key], *cargs)[1:], env))

    rows = []
    verdicts = []
    for label in commands:
        wall = {k: statistics.median(w for w, _ in results[(label, k)]) for k in "ABC"}
        cpu = {k: statistics.median(c for _, c in results[(label, k)]) for k in "ABC"}
        paired = statistics.median(
            x[0] / y[0] for x, y in zip(results[(label, "A")], results[(label, "B")]))
        main_a = statistics.median(inproc[(label, "A")])
        main_b = statistics.median(inproc[(label, "B")])
        ratio = wall["A"] / wall["B"]
        estimate = (wall["B"] + main_a - main_b) / wall["B"]
        verdicts.append((label, ratio, wall["C"] / wall["B"], estimate))
        rows.append([
            label, args.runs, f"{wall['A'] * 1000:.1f}", f"{wall['B'] * 1000:.1f}",
            f"{wall['C'] * 1000:.1f}", f"**{ratio:.3f}**", f"{wall['C'] / wall['B']:.3f}",
            f"{paired:.3f}", f"{cpu['A'] / cpu['B']:.3f}",
            f"{main_a * 1000:.1f} / {main_b * 1000:.1f} ({(main_a - main_b) * 1000:+.1f})",
            f"{estimate:.3f}", "yes" if ratio <= GOAL else "NO"])
    benchlib.print_table(
        ["command", "runs", "median wall A ms", "B ms", "C ms", "ratio A/B", "C/B (noise)",
         "median paired A/B", "CPU A/B", f"main() A / B ms, median of {args.probes}",
         "A/B from main()", f"A/B <= {GOAL}?"], rows)
    print("\nratio A/B = median wall with / median wall without (the goal figure); C/B = the same "
          "between two identical venvs; A/B from main() = (wall B + main() A - main() B) / wall B, "
          "i.e. the whole-process ratio with the process noise taken out.")

    # What the plugin adds when certbot loads its plugins: in-process, fresh interpreter each time.
    print()
    finds: Dict[str, List[float]] = {"A": [], "B": []}
    found: Dict[str, dict] = {}
    for i in range(args.probes):
        for key in ("AB" if i % 2 == 0 else "BA"):
            found[key] = probe_find_all(venvs[key], env)
            finds[key].append(found[key]["find_all"])
    fa, fb = statistics.median(finds["A"]), statistics.median(finds["B"])
    print(f"certbot's plugin discovery, find_all(), in-process, median of {args.probes}: "
          f"A {fa * 1000:.1f} ms, B {fb * 1000:.1f} ms, difference {(fa - fb) * 1000:+.1f} ms")
    print(f"   plugins found: A {', '.join(found['A']['plugins'])}; B {', '.join(found['B']['plugins'])}")
    added = sorted(set(found["A"]["new"]) - set(found["B"]["new"]))
    print(f"   modules that only A imports during discovery: {', '.join(added) or 'none'}")

    imports = [probe_import(venvs["A"], env) for _ in range(args.probes)]
    _, modules, lines = imports[-1]
    print(f"\npython -X importtime: import certbot_incapsula.installer after certbot's own modules "
          f"(median {statistics.median(i[0] for i in imports) * 1000:.2f} ms of {args.probes}); "
          f"new modules: {', '.join(modules)}")
    for line in lines:
        print("   " + line)
    foreign = [m for m in modules if not m.startswith("certbot_incapsula")]
    print("   modules beyond the plugin's own that it pulls in at import: " + (", ".join(foreign) or "none"))

    # The same import in a bare interpreter (certbot's modules included), for scale.
    out = run([str(venvs["A"]), "-X", "importtime", "-c", "import certbot_incapsula.installer"], env=env)
    bare = [line for line in out.stderr.splitlines() if line.startswith("import time:")]
    total = bare[-1].split("|")[1].strip() if bare and "|" in bare[-1] else "?"
    print(f"   for scale, in a bare interpreter (certbot's modules included): {total} us cumulative, "
          f"{len(bare)} modules")

    print()
    for label, ratio, noise, estimate in verdicts:
        print(f"goal {label}: ratio {ratio:.3f} {'<=' if ratio <= GOAL else '>'} {GOAL}: "
              f"{'met' if ratio <= GOAL else 'NOT met'} (noise floor C/B {noise:.3f}; "
              f"from main(): {estimate:.3f}, {'met' if estimate <= GOAL else 'NOT met'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
