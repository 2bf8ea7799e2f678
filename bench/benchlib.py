"""Shared plumbing of the benchmark scripts (not a benchmark itself).

The scripts run as `python bench/NAME.py`, so this module is importable as `benchlib`; it also
puts tests/ on sys.path for the harness (acme_env: pebble + certbot, imperva_server: the API
double). Nothing here asserts on a time: the scripts print figures, people judge them.
"""
from __future__ import annotations

import argparse
import bisect
import collections
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

ROOT = Path(__file__).resolve().parent.parent
TESTS = ROOT / "tests"
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

from acme_env import Certbot, Pebble, pebble_available  # noqa: E402
from imperva_server import ImpervaServer, Site  # noqa: E402

__all__ = [
    "ROOT", "Certbot", "ImpervaServer", "Pebble", "Site", "add_certbot_option", "by_endpoint",
    "certbot_version", "credentials_for", "default_certbot", "machine_lines", "max_in_window",
    "measured", "plugin_args", "print_table", "require_pebble",
]

API_PREFIX = "/api/prov/v1/"
RATE = 10.0  # calls a second that Imperva allows an account (the plugin's RateLimiter rate)


def default_certbot() -> str:
    """The certbot beside this interpreter (the venv's), else the one on PATH."""
    beside = Path(sys.executable).parent / "certbot"
    if os.access(beside, os.X_OK):
        return str(beside)
    import shutil

    found = shutil.which("certbot")
    if not found:
        sys.exit(f"no certbot beside {sys.executable} nor on PATH: pass --certbot PATH")
    return found


def add_certbot_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--certbot", default=None, metavar="PATH",
                        help="certbot executable with the plugin installed "
                             "(default: the one beside this python)")


def certbot_version(certbot: str) -> str:
    out = subprocess.run([certbot, "--version"], capture_output=True, text=True, check=False)
    return (out.stdout + out.stderr).strip().splitlines()[-1] if (out.stdout + out.stderr).strip() else "?"


def require_pebble() -> None:
    if not pebble_available():
        sys.exit("pebble and pebble-challtestsrv are needed (apt-get install pebble, or "
                 "scripts/setup-env.sh)")


def credentials_for(server: ImpervaServer, directory: Path) -> Path:
    path = directory / "incapsula.ini"
    path.write_text(f"incapsula_api_id = {server.api_id}\nincapsula_api_key = {server._api_key}\n")
    os.chmod(path, 0o600)
    return path


def plugin_args(server: ImpervaServer, credentials: Path) -> List[str]:
    """The installer options of a run against the API double (pebble is a test CA). No edge
    double runs here: the pre-flight and the edge check are off, so they cost nothing."""
    return ["-i", "incapsula", "--incapsula-credentials", str(credentials),
            "--incapsula-api-url", server.url, "--incapsula-allow-staging",
            "--incapsula-preflight", "off", "--incapsula-edge-wait", "0"]


def endpoint(path: str) -> str:
    return path[len(API_PREFIX):] if path.startswith(API_PREFIX) else path


def by_endpoint(requests: Iterable[object]) -> Dict[str, int]:
    """Calls per endpoint (short names: upload, status, list, verify, ...)."""
    short = {"sites/customCertificate/upload": "upload", "sites/status": "status",
             "sites/list": "list", "account/verify": "verify",
             "sites/performance/advanced": "redirect", "sites/customCertificate/remove": "remove"}
    counts: Dict[str, int] = collections.Counter()
    for record in requests:
        name = endpoint(record.path)  # type: ignore[attr-defined]
        counts[short.get(name, name)] += 1
    return dict(counts)


def max_in_window(times: Sequence[float], window: float = 1.0) -> Tuple[int, float]:
    """The most arrivals in any half-open window [t, t + window), and where it starts
    (relative to the first arrival). Every window that could hold the most starts at an arrival."""
    ordered = sorted(times)
    best, where = 0, 0.0
    for i, start in enumerate(ordered):
        count = bisect.bisect_left(ordered, start + window, lo=i) - i
        if count > best:
            best, where = count, start - ordered[0]
    return best, where


def shortest_span(times: Sequence[float], count: int) -> float:
    """The shortest time in which `count` consecutive arrivals came (inf if fewer arrived)."""
    ordered = sorted(times)
    spans = [ordered[i + count - 1] - ordered[i] for i in range(len(ordered) - count + 1)]
    return min(spans) if spans else float("inf")


def measured(certbot: Certbot, args: Sequence[str], logs: Path) -> Tuple[float, float]:
    """(peak RSS MiB, wall s) of one certbot run, which must succeed. The peak is the child's own
    ru_maxrss, from os.wait4() on that child alone (what /usr/bin/time -v reports); its output
    goes to logs/stdout and logs/stderr."""
    cmd = certbot.command(*args)
    with open(logs / "stdout", "wb") as out, open(logs / "stderr", "wb") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                env=certbot.environment())
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
    proc.returncode = os.WEXITSTATUS(status) if os.WIFEXITED(status) else -os.WTERMSIG(status)
    if proc.returncode != 0:
        sys.exit(f"certbot {' '.join(args)} failed ({proc.returncode}):\n"
                 + (logs / "stderr").read_text(errors="replace")[-3000:])
    return usage.ru_maxrss / 1024.0, wall  # Linux: ru_maxrss is in KiB


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


class Stopwatch:
    def __enter__(self) -> Stopwatch:
        self.start = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.start


def print_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """A GitHub-flavoured markdown table (readable in a terminal, pastable in the README)."""
    cells = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    def line(row: Sequence[str]) -> str:
        return "| " + " | ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)) + " |"
    print(line(cells[0]))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in cells[1:]:
        print(line(row))


def cpu_model() -> str:
    try:
        for text in Path("/proc/cpuinfo").read_text().splitlines():
            if text.startswith("model name"):
                return text.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def machine_lines(certbot: Optional[str] = None) -> List[str]:
    lines = [f"machine: {os.cpu_count()} CPU(s), {cpu_model()}, {platform.system()} {platform.release()}",
             f"python: {platform.python_version()} ({sys.executable})"]
    if certbot:
        lines.append(f"certbot: {certbot_version(certbot)} ({certbot})")
    return lines


def banner(title: str, certbot: Optional[str] = None) -> None:
    print(f"# {title}")
    for text in machine_lines(certbot):
        print(f"#   {text}")
    print()


# --- the fleet: site i serves s{i}.fleet.test (fleet.py, memory.py) ---------------------------


def fleet_site_id(i: int) -> int:
    return 10000 + i


def fleet_name(i: int) -> str:
    return f"s{i}.fleet.test"


def add_fleet(server: ImpervaServer, count: int) -> None:
    for i in range(1, count + 1):
        server.add_site(Site(fleet_site_id(i), fleet_name(i)))


def fleet_domains(count: int) -> List[str]:
    return [arg for i in range(1, count + 1) for arg in ("-d", fleet_name(i))]
