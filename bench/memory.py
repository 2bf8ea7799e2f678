"""Memory: peak RSS of certbot deploying one 100-name certificate to 100 sites, against the
peak RSS of a bare `certbot --version` (certbot and every plugin imported, nothing done).

Real certbot and pebble; the API double answers at once (latency does not change what is held in
memory, and the plugin's rate limit still spaces the 202 calls over ~20 s). The peak is the
child's own ru_maxrss, from os.wait4() on that child alone (what /usr/bin/time -v reports).

    .venv/bin/python bench/memory.py [--sites 100] [--runs 3] [--certbot PATH]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Dict, List

import benchlib
from benchlib import Certbot, ImpervaServer, Pebble


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    benchlib.add_certbot_option(parser)
    parser.add_argument("--sites", type=int, default=100)
    parser.add_argument("--runs", type=int, default=3, help="runs of each measured command")
    args = parser.parse_args()
    certbot_exe = args.certbot or benchlib.default_certbot()
    benchlib.require_pebble()
    benchlib.banner(f"memory: peak RSS of certbot install to {args.sites} sites vs certbot --version",
                    certbot_exe)

    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp, \
            Pebble() as pebble, ImpervaServer() as server:
        benchlib.add_fleet(server, args.sites)
        base = Path(tmp)
        plugin = benchlib.plugin_args(server, benchlib.credentials_for(server, base))
        certbot = Certbot(pebble, base / "certbot", certbot_exe=certbot_exe)
        certbot.run("certonly", "-a", "webroot", "-w", pebble.webroot, "--cert-name", "fleet",
                    *plugin, *benchlib.fleet_domains(args.sites), timeout=600)

        commands = [
            ("certbot --version", ["--version"]),
            (f"certbot install --cert-name (first deployment, {args.sites} sites)",
             ["install", "--cert-name", "fleet", *plugin]),
            (f"certbot renew (nothing due, {args.sites} sites in sync)",
             ["renew", "--no-random-sleep-on-renew"]),
        ]
        peaks: Dict[str, List[float]] = {}
        walls: Dict[str, List[float]] = {}
        calls: Dict[str, int] = {}
        # Interleaved, so that a change in the machine's state does not favour one command.
        for _ in range(args.runs):
            for label, cargs in commands:
                if cargs[0] == "install":
                    # Forget the sites found before: every install is a first deployment.
                    (certbot.config_dir / "incapsula" / "state.json").unlink(missing_ok=True)
                server.clear()
                peak, wall = benchlib.measured(certbot, cargs, base)
                peaks.setdefault(label, []).append(peak)
                walls.setdefault(label, []).append(wall)
                calls[label] = len(server.requests)

    base_peak = statistics.median(peaks[commands[0][0]])
    rows = []
    for label, _ in commands:
        peak = statistics.median(peaks[label])
        rows.append([label, calls[label], f"{statistics.median(walls[label]):.1f}",
                     f"{peak:.1f}", f"{max(peaks[label]):.1f}", f"{peak - base_peak:+.1f}",
                     f"{peak / base_peak:.2f}"])
    benchlib.print_table(["command", "API calls", "median wall s", "median peak RSS MiB",
                          "max peak RSS MiB", "vs --version MiB", "ratio"], rows)
    print(f"\n{args.runs} run(s) each, interleaved; peak RSS = ru_maxrss of the certbot process "
          "(os.wait4).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
