"""Edge: what issue 12's checks cost on a fleet, against the Imperva API and edge doubles.

N sites (site i serves sI.fleet.test), one certificate for all N names, an edge double whose
uploads propagate after --delay seconds. Timed, in the core (no certbot start-up):

  pre-flight     one probe per name through the edge to an origin serving the webroot
  deploy         N uploads and read-backs (the API double's pace: 10 calls a second), first with
                 the edge check off, then with another certificate and the check on (waits until
                 each site's edge serves the upload, up to --wait s): the sites are waited for
                 at once, so the difference should be about one delay, not N x delay
  status         one handshake per site, no wait

Needs root (the edge binds ports 80 and 443 on 127.77.x.y).

    .venv/bin/python bench/edge.py [--sites 30] [--delay 2] [--wait 30]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import benchlib
from benchlib import ImpervaServer
from certmaker import make_chain, write_lineage
from imperva_edge import ImpervaEdge, Origin, need_root

from certbot_incapsula.context import Context
from certbot_incapsula.core import Deployment
from certbot_incapsula.outcomes import LineageFiles
from certbot_incapsula.settings import Settings


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sites", type=int, default=30)
    parser.add_argument("--delay", type=float, default=2.0, help="propagation delay, seconds")
    parser.add_argument("--wait", type=int, default=30, help="--incapsula-edge-wait")
    args = parser.parse_args()
    reason = need_root()
    if reason:
        sys.exit(f"bench/edge.py: {reason}")
    benchlib.banner(f"edge: {args.sites} sites, propagation delay {args.delay} s, edge wait "
                    f"{args.wait} s")
    names = [benchlib.fleet_name(i) for i in range(1, args.sites + 1)]
    with tempfile.TemporaryDirectory(prefix="bench-edge-") as tmp, ImpervaServer() as server:
        benchlib.add_fleet(server, args.sites)
        base = Path(tmp)
        webroot = base / "webroot"
        webroot.mkdir()
        first = write_lineage(base / "first", make_chain(names))
        paths = write_lineage(base / "live" / "fleet", make_chain(names))
        files = LineageFiles("fleet", paths["fullchain"], paths["privkey"])
        settings = Settings(str(benchlib.credentials_for(server, base)), api_url=server.url,
                            allow_staging=True, edge_wait=args.wait)
        off = Settings(settings.credentials, api_url=server.url, allow_staging=True, edge_wait=0)
        with ImpervaEdge(server) as edge, Origin(webroot) as origin:
            edge.origin = origin.url
            edge.set_propagation_delay(args.delay)
            rows = []
            core = Deployment(settings, str(base / "config"), context=Context())
            with benchlib.Stopwatch() as clock:
                result = core.preflight(names, dict.fromkeys(names, str(webroot)))
            rows.append(("pre-flight", f"{len(result.passed)} names passed, "
                         f"{len(result.failures)} failed", f"{clock.seconds:.2f}"))
            with benchlib.Stopwatch() as clock:
                Deployment(off, str(base / "config"), context=Context()).deploy(
                    LineageFiles("fleet", first["fullchain"], first["privkey"]))
            rows.append(("deploy, edge check off", f"{args.sites} uploads", f"{clock.seconds:.2f}"))
            with benchlib.Stopwatch() as clock:
                rep = core.deploy(files)
            served = sum("serves it" in line for line in rep.edge)
            rows.append(("deploy + edge check", f"{served} of {args.sites} edges serve it, "
                         f"{len(rep.warnings)} warnings", f"{clock.seconds:.2f}"))
            status = Deployment(settings, str(base / "config"), context=Context())
            with benchlib.Stopwatch() as clock:
                found = status.status(files)
            in_sync = sum(row.detail.endswith("the edge serves it") for row in found)
            rows.append(("status", f"{in_sync} of {args.sites} in sync at the edge",
                         f"{clock.seconds:.2f}"))
            benchlib.print_table(("step", "outcome", "seconds"), rows)
            print(f"\none site at a time, the edge check alone would take about {args.sites} x "
                  f"{args.delay:g} s = {args.sites * args.delay:g} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
