"""Fleet: one certificate whose 100 names span 100 Imperva sites, on a slow API.

Site i (1..100) serves sI.fleet.test on the API double, which answers every call after
--latency seconds (0.3 by default, a plausible figure for my.imperva.com). Real certbot and
pebble; the timed commands are pure plugin work on an existing lineage:

  first deployment   certbot install --cert-name fleet -i incapsula ... (discovery included;
                     the lineage comes from a `certbot certonly -i incapsula`, timed apart, which
                     issues and records the installer but uploads nothing)
  renew, in sync     certbot renew (nothing due: the plugin checks that every site holds it)

Imperva allows an account 10 calls a second, so `calls / 10` seconds is the floor of any client;
ratio = wall / floor (goal <= 1.2, certbot's own start-up included in the wall time). The serial
estimate calls x latency is what one call at a time would take. From the arrival times the API
double recorded, the most requests any 1-second window saw (goal: never above 10).

    .venv/bin/python bench/fleet.py [--sites 100] [--latency 0.3] [--always-valid] [--certbot PATH]

--always-valid starts pebble with PEBBLE_VA_ALWAYS_VALID=1 (no http-01 fetches): only the
certonly step gets faster; nothing timed against the goal depends on it.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import List

import benchlib
from benchlib import RATE, Certbot, ImpervaServer, Pebble

RATIO_GOAL = 1.2


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    benchlib.add_certbot_option(parser)
    parser.add_argument("--sites", type=int, default=100, help="sites = names (pebble allows 100)")
    parser.add_argument("--latency", type=float, default=0.3, help="seconds per API call")
    parser.add_argument("--always-valid", action="store_true",
                        help="pebble skips http-01 validation (faster certonly)")
    args = parser.parse_args()
    certbot_exe = args.certbot or benchlib.default_certbot()
    benchlib.require_pebble()
    benchlib.banner(f"fleet: one certificate, {args.sites} names on {args.sites} sites, "
                    f"API latency {args.latency} s", certbot_exe)

    extra_env = {"PEBBLE_VA_ALWAYS_VALID": "1"} if args.always_valid else None
    with tempfile.TemporaryDirectory(prefix="bench-fleet-") as tmp, \
            Pebble(extra_env=extra_env) as pebble, ImpervaServer(latency=args.latency) as server:
        benchlib.add_fleet(server, args.sites)
        base = Path(tmp)
        plugin = benchlib.plugin_args(server, benchlib.credentials_for(server, base))
        certbot = Certbot(pebble, base / "certbot", certbot_exe=certbot_exe)

        with benchlib.Stopwatch() as acme:
            certbot.run("certonly", "-a", "webroot", "-w", pebble.webroot, "--cert-name", "fleet",
                        *plugin, *benchlib.fleet_domains(args.sites), timeout=600)
        print(f"certonly of {args.sites} names (ACME only, not timed against the goal): "
              f"{acme.seconds:.1f} s, {len(server.requests)} API calls"
              f"{' (PEBBLE_VA_ALWAYS_VALID=1)' if args.always_valid else ' (http-01 validated)'}\n")

        rows: List[list] = []
        results = []
        for label, cargs in (
            ("first deployment (install --cert-name)", ["install", "--cert-name", "fleet", *plugin]),
            ("renew, nothing due, in sync", ["renew", "--no-random-sleep-on-renew"]),
        ):
            server.clear()
            with benchlib.Stopwatch() as watch:
                result = certbot.run(*cargs, timeout=900)
            calls = list(server.requests)
            counts = benchlib.by_endpoint(calls)
            floor = len(calls) / RATE
            ratio = watch.seconds / floor if floor else float("nan")
            times = [c.time for c in calls]
            span = (max(times) - min(times) + args.latency) if times else 0.0
            window, where = benchlib.max_in_window(times, 1.0)
            tightest = benchlib.shortest_span(times, int(RATE) + 1)
            held = sum(1 for i in range(1, args.sites + 1) if server.held(benchlib.fleet_site_id(i)))
            results.append((label, ratio, window))
            rows.append([
                label, ", ".join(f"{k} {v}" for k, v in sorted(counts.items())), len(calls),
                f"{watch.seconds:.1f}", f"{floor:.1f}", f"**{ratio:.2f}**",
                "yes" if ratio <= RATIO_GOAL else "NO", f"{span:.1f}", f"{watch.seconds - span:.1f}",
                f"{len(calls) * args.latency:.0f}", f"{window} (at +{where:.1f} s)",
                f"{tightest:.3f}",
                f"{held}/{args.sites}",
            ])
            if "Traceback" in result.stdout + result.stderr:
                print(f"WARNING: a traceback in certbot's output for {label}")

    benchlib.print_table(
        ["operation", "calls by endpoint", "calls", "wall s", "floor s (calls/10)", "ratio",
         f"<= {RATIO_GOAL}?", "API span s", "outside the API s", "serial estimate s",
         "max requests in 1 s", f"shortest span of {int(RATE) + 1} requests s",
         "sites holding a cert"], rows)
    print()
    print("API span: first request's arrival to last request's arrival + latency; outside the API: "
          "wall - span (certbot start-up, certificate parsing, state file, output). Shortest span of "
          f"{int(RATE) + 1} requests: under 1 s means some 1-second window saw more than {RATE:.0f}.")
    for label, ratio, window in results:
        print(f"goal {label}: ratio {ratio:.2f} {'<=' if ratio <= RATIO_GOAL else '>'} {RATIO_GOAL}: "
              f"{'met' if ratio <= RATIO_GOAL else 'NOT met'}; max {window} requests in a 1 s window: "
              f"{'met' if window <= RATE else 'NOT met'} (<= {RATE:.0f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
