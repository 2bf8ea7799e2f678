"""API economy: Imperva API calls per certbot operation, as the API double counts them.

Real certbot against pebble on loopback, with the plugin talking to tests/imperva_server.py.
For S sites (S = 1 and 5 by default; site i serves sI.econ.test, and the account holds a few
other sites too) it runs, in order, on one lineage whose certificate covers the S names:

  first deployment   certbot run -a webroot -i incapsula -d s1... (site discovery included)
  install again      certbot install --cert-name ... (the sites are known from the first run)
  forced renewal     certbot renew --force-renewal --no-random-sleep-on-renew
  renew, in sync     certbot renew (nothing due; every site holds the lineage's certificate)
  renew, 1 drifted   the same after another certificate was uploaded to site 1 behind
                     certbot's back (straight to the API double, as someone in the console would)

and prints the calls by endpoint beside the minimum the API allows: one upload per site that
needs it, one sites/status before each upload (what the site holds, to put it back should
Imperva flag the new certificate; a self-check reuses the read it made) and one read-back after
it, ceil((sites on the account + 1) / 100) sites/list pages only when no site id is known yet,
and one sites/status per site to find out that a site is in sync.

    .venv/bin/python bench/api_economy.py [--sites 1,5] [--other-sites 3] [--certbot PATH]
"""
from __future__ import annotations

import argparse
import base64
import math
import sys
import tempfile
from pathlib import Path
from typing import List, Sequence

import benchlib
import requests
from benchlib import Certbot, ImpervaServer, Pebble, Site
from certmaker import make_chain
from cryptography import x509

ENDPOINTS = ("list", "upload", "status", "verify", "redirect")


def lineage_serial(certbot: Certbot, name: str) -> str:
    cert = x509.load_pem_x509_certificate((certbot.live(name) / "cert.pem").read_bytes())
    return format(cert.serial_number, "X")


def drift(server: ImpervaServer, site: Site) -> None:
    """Another valid certificate for the site's own name, uploaded past the plugin."""
    chain = make_chain([site.domain], "ecdsa")
    answer = requests.post(
        server.url + "/api/prov/v1/sites/customCertificate/upload",
        headers={"x-API-Id": server.api_id, "x-API-Key": server._api_key},
        data={"site_id": site.site_id, "auth_type": "ECC",
              "certificate": base64.b64encode(chain.fullchain_pem).decode(),
              "private_key": base64.b64encode(chain.key_pem).decode()},
        timeout=10,
    ).json()
    if answer.get("res") != 0:
        sys.exit(f"could not make site {site.site_id} drift: {answer}")


def in_sync(server: ImpervaServer, sites: Sequence[Site], serial: str) -> str:
    wrong = [s.site_id for s in sites if (server.held(s.site_id) or {}).get("serialNumber") != serial]
    return "all sites hold it" if not wrong else f"NOT on {wrong}"


def scenario(pebble: Pebble, count: int, others: int, workdir: Path, certbot_exe: str) -> List[list]:
    server = ImpervaServer().start()
    try:
        targets = [server.add_site(Site(1000 + i, f"s{i}.econ.test")) for i in range(1, count + 1)]
        for j in range(1, others + 1):
            server.add_site(Site(5000 + j, f"other{j}.elsewhere.test"))
        account = len(server.sites)
        base = workdir / f"sites-{count}"
        base.mkdir(parents=True, exist_ok=True)
        args = benchlib.plugin_args(server, benchlib.credentials_for(server, base))
        certbot = Certbot(pebble, base / "certbot", certbot_exe=certbot_exe)
        names = [s.domain for s in targets]
        lineage = names[0]
        domains = [arg for name in names for arg in ("-d", name)]
        pages = math.ceil((account + 1) / 100)

        steps = [
            ("first deployment", ["run", "-a", "webroot", "-w", pebble.webroot, *args, *domains],
             pages + 3 * count, f"{pages} list + {count} upload + {2 * count} status"),
            ("install again (sites known)", ["install", "--cert-name", lineage, *args],
             3 * count, f"{count} upload + {2 * count} status"),
            ("forced renewal", ["renew", "--force-renewal", "--no-random-sleep-on-renew"],
             3 * count, f"{count} upload + {2 * count} status"),
            ("renew, nothing due, in sync", ["renew", "--no-random-sleep-on-renew"],
             count, f"{count} status"),
            ("renew, nothing due, 1 site drifted", ["renew", "--no-random-sleep-on-renew"],
             count + 2, f"{count} status + 1 upload + 1 status"),
        ]
        rows = []
        for label, cargs, minimum, how in steps:
            if "drifted" in label:
                drift(server, targets[0])
            server.clear()
            with benchlib.Stopwatch() as watch:
                certbot.run(*cargs)
            counts = benchlib.by_endpoint(server.requests)
            total = sum(counts.values())
            extra = {k: v for k, v in counts.items() if k not in ENDPOINTS}
            rows.append([
                f"S={count}", label, *(counts.get(k, 0) for k in ENDPOINTS),
                (", ".join(f"{k} {v}" for k, v in extra.items()) or "-"), total,
                f"{minimum} ({how})", "yes" if total <= minimum else f"NO (+{total - minimum})",
                f"{watch.seconds:.1f}", in_sync(server, targets, lineage_serial(certbot, lineage)),
            ])
        return rows
    finally:
        server.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    benchlib.add_certbot_option(parser)
    parser.add_argument("--sites", default="1,5", help="comma-separated site counts S")
    parser.add_argument("--other-sites", type=int, default=3,
                        help="sites on the account that the certificate does not cover")
    args = parser.parse_args()
    certbot_exe = args.certbot or benchlib.default_certbot()
    benchlib.require_pebble()
    benchlib.banner("api_economy: Imperva API calls per certbot operation (counted by the API double)",
                    certbot_exe)

    rows: List[list] = []
    with tempfile.TemporaryDirectory(prefix="bench-economy-") as tmp, Pebble() as pebble:
        for count in (int(x) for x in args.sites.split(",") if x.strip()):
            rows += scenario(pebble, count, args.other_sites, Path(tmp), certbot_exe)
    benchlib.print_table(
        ["S", "operation", *ENDPOINTS, "other", "total", "minimum the API allows", "at minimum?",
         "certbot s", "afterwards"], rows)
    over = [r for r in rows if not str(r[-3]).startswith("yes")]
    print()
    print(f"account: S covered sites + {args.other_sites} other(s); list pages = "
          "ceil((sites on the account + 1) / 100) (the last page must come back short)")
    print("goal (every operation at the minimum): " + ("met" if not over else
          "NOT met for " + "; ".join(f"{r[0]} {r[1]}" for r in over)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
