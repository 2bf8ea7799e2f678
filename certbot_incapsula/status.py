"""certbot-incapsula-status: what each Imperva site holds against what is on disk. Read-only.

For a person or a monitor: one line per lineage and site, and an exit status:
0 every site in sync, 1 some site drifted or flagged, 2 some site unreachable or a lineage unreadable.
certbot has no subcommands for plugins, hence a console script of its own.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Dict, List, Optional

from certbot_incapsula import DEFAULT_API_URL

EXIT_SYNC, EXIT_DRIFT, EXIT_UNREACHABLE = 0, 1, 2


def _lineages(config_dir: str, only: Optional[str]) -> List[Dict[str, Any]]:
    import configobj

    renewal_dir = os.path.join(config_dir, "renewal")
    found = []
    for filename in sorted(os.listdir(renewal_dir)) if os.path.isdir(renewal_dir) else []:
        if not filename.endswith(".conf"):
            continue
        name = filename[:-5]
        if only and name != only:
            continue
        try:
            conf = configobj.ConfigObj(os.path.join(renewal_dir, filename))
        except configobj.ConfigObjError:
            found.append({"name": name, "error": "its renewal config is not readable"})
            continue
        params = conf.get("renewalparams", {})
        if params.get("installer") != "incapsula":
            continue
        found.append({
            "name": name,
            "fullchain": conf.get("fullchain") or os.path.join(config_dir, "live", name, "fullchain.pem"),
            "privkey": conf.get("privkey") or os.path.join(config_dir, "live", name, "privkey.pem"),
            "credentials": params.get("incapsula_credentials"),
            "site_ids": params.get("incapsula_site_id"),
            "api_url": params.get("incapsula_api_url") or DEFAULT_API_URL,
        })
    return found


def check_lineage(entry: Dict[str, Any], config_dir: str) -> List[Dict[str, Any]]:
    """One row per site: state is in sync, drifted, flagged or unreachable (or error)."""
    from certbot_incapsula import certificate, credentials, deploy, report, sites
    from certbot_incapsula.api import ImpervaClient, ImpervaError
    from certbot_incapsula.records import Records

    name = entry["name"]
    try:
        if entry.get("error"):
            raise ValueError(entry["error"])
        if not entry["credentials"]:
            raise ValueError("its renewal config names no incapsula_credentials")
        api_id, api_key = credentials.read(entry["credentials"])
        cert = certificate.load(os.path.realpath(entry["fullchain"]),
                                os.path.realpath(entry["privkey"]))
        client = ImpervaClient(api_id, api_key, entry["api_url"])
        records = Records(config_dir)
        # Read-only: a discovery made here is not written back.
        deployer = deploy.Deployer(client, records)
        targets = deployer.resolve(name, cert.names, sites.parse_site_ids(entry["site_ids"])).targets
        outcomes = deployer.check(targets)
    except (ValueError, ImpervaError) as exc:
        return [{"lineage": name, "site": None, "state": "error", "detail": str(exc)}]
    rows = []
    for outcome in outcomes:
        row: Dict[str, Any] = {"lineage": name, "site": outcome.target.site_id,
                               "domain": outcome.target.domain}
        if outcome.error:
            row.update(state="unreachable", detail=outcome.error)
        else:
            why = deploy.difference(cert, outcome.details)
            fatal, warning = report.flags(outcome.details)
            if why:
                row.update(state="drifted", detail=why)
            elif fatal:
                row.update(state="flagged", detail="; ".join(fatal))
            else:
                row.update(state="in sync", detail="; ".join(warning) or
                           f"serial {cert.serial_hex}, expires {report.expiry(outcome.details)}")
        rows.append(row)
    return rows


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="certbot-incapsula-status",
        description="Compare what each Imperva site holds with the certbot lineage on disk "
                    "(read-only). Exit 0: all in sync; 1: drifted or flagged; 2: unreachable "
                    "or unreadable.")
    parser.add_argument("--config-dir", default="/etc/letsencrypt",
                        help="certbot's configuration directory (default: %(default)s)")
    parser.add_argument("--cert-name", help="only this lineage")
    parser.add_argument("--json", action="store_true", help="one JSON document on stdout")
    args = parser.parse_args(argv)

    lineages = _lineages(args.config_dir, args.cert_name)
    if not lineages:
        print(f"No certbot lineage in {args.config_dir} uses the incapsula installer.",
              file=sys.stderr)
        return EXIT_UNREACHABLE
    rows = [row for entry in lineages for row in check_lineage(entry, args.config_dir)]
    if args.json:
        print(json.dumps(rows, indent=1))
    else:
        for row in rows:
            site = f"site {row['site']}" + (f" ({row['domain']})" if row.get("domain") else "") \
                if row["site"] else "-"
            print(f"{row['lineage']}  {site}  {row['state'].upper()}  {row['detail']}")
    states = {row["state"] for row in rows}
    if states & {"unreachable", "error"}:
        return EXIT_UNREACHABLE
    if states & {"drifted", "flagged"}:
        return EXIT_DRIFT
    return EXIT_SYNC


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
