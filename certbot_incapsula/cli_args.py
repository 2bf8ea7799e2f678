"""The `certbot-incapsula` command's arguments: the parser, each subcommand's help and exit
statuses, and -w/-d in certbot's order. Part of door 2 (cli.py); nothing here acts.
"""
from __future__ import annotations

import argparse
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

from certbot_incapsula import CREDENTIALS_HELP, DEFAULT_API_URL

EXIT_OK, EXIT_DRIFT, EXIT_UNREACHABLE = 0, 1, 2
EXIT_NOT_CHECKED = 3  # check: this host could not reach an edge; the CA decides
EXIT_FAILED = 1  # deploy: any failure; the ACME client reports the hook's last line
DEFAULT_CONFIG_DIR = "/etc/letsencrypt"
SOURCE = "--{option}"

EPILOG_DEPLOY = """\
which certificate:
  run by certbot as --deploy-hook   RENEWED_LINEAGE (certbot's live/NAME directory)
  run by lego as --run-hook         LEGO_CERT_PATH and LEGO_CERT_KEY_PATH
  by hand, or any other client      --fullchain PATH --key PATH, or --cert-name NAME

The settings are remembered (never the API key) in <config-dir>/incapsula/lineages/NAME.conf,
for `sync` and `status`. Exit status: 0 every site holds the certificate, 1 anything failed
(the reason is the last line on stderr, which the ACME client reports).

examples:
  certbot certonly --webroot -w /var/www -d www.example.com -d example.com \\
      --deploy-hook 'certbot-incapsula deploy'
  certbot-incapsula deploy --cert-name www.example.com          upload a certbot lineage now
  lego --email you@example.com --accept-tos --domains www.example.com \\
      --http --http.webroot /var/www --path /etc/lego run \\
      --run-hook 'certbot-incapsula deploy --config-dir /etc/lego'
  certbot-incapsula deploy --fullchain /etc/ssl/site/fullchain.pem --key /etc/ssl/site/key.pem
"""
EPILOG_SYNC = """\
exit status: 0 every site holds its lineage's certificate (after repairs), 1 a site could not
be repaired or holds a flagged certificate, 2 a lineage or the API could not be read (or the
--prometheus-file could not be written: see docs/monitoring.md).

examples:
  certbot-incapsula sync                         what the shipped systemd timer runs
  certbot-incapsula sync --quiet --config-dir /etc/lego          from cron
"""
EPILOG_CHECK = """\
Writes a probe file under each name's webroot (-w applies to the -d after it, as in certbot),
fetches it three times at once through the Imperva edge of the site serving the name as the CA
would (port 80, Host: NAME, up to 10 redirects, a new host looked up in DNS; 10 s per fetch,
redirects included), and deletes it. Names no Imperva site serves are not probed. Some answers
with the file and others a 404 mean several origin servers, with the webroot on only one.

exit status:
  0  every probed name passed
  1  a name failed: the edge answered and the CA would fail too (one line each: what answered,
     the fix)
  2  the account's sites could not be read, or the command line names no webroot
  3  not checked: this host could not reach a site's edge (no DNS answer, refused, no route,
     no connection in time; one line per site) and nothing failed; the CA, which reaches
     Imperva from the internet, will decide

example (before the first certbot run):
  certbot-incapsula check -w /var/www -d www.example.com -d example.com
"""
EPILOG_STATUS = """\
states: IN SYNC, DRIFTED, FLAGGED, ROLLED BACK, UNREACHABLE, ERROR; for shared sites NOT
VERIFIABLE, HELD BY OTHER LINEAGE, LEFT ALONE, NEWER ON SITE (another host's newer certificate,
e.g. an HA pair; see docs/ha-pair.md).
exit status: 0 all in sync (or newer on site), 1 drifted, flagged or rolled back (or not
verifiable with something known to be wrong), 2 unreachable or unreadable. Changes nothing.
With --nagios: the monitoring-plugin convention (0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN; see
docs/monitoring.md).
Also installed as certbot-incapsula-status.

examples:
  certbot-incapsula status
  certbot-incapsula status --cert-name www.example.com --json
  certbot-incapsula status --nagios --warning 21 --critical 7
  certbot-incapsula status --prometheus-file /var/lib/prometheus/node-exporter/certbot-incapsula.prom
"""
EPILOG_MAIN = """\
examples (each command's --help has more):
  certbot certonly --webroot -w /var/www -d www.example.com \\
      --deploy-hook 'certbot-incapsula deploy'
  certbot-incapsula sync
  certbot-incapsula status
"""


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("certbot-incapsula")
    except Exception:
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="certbot-incapsula",
        description="Upload certificates to Imperva Cloud WAF (Incapsula) sites from any ACME "
                    "client's deploy hook, keep the sites in sync, and show what they hold.",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG_MAIN)
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", metavar="{deploy,sync,status,check}")
    commands.required = True
    fmt = argparse.RawDescriptionHelpFormatter

    def edge_wait(sub: argparse.ArgumentParser, text: str) -> None:
        sub.add_argument("--edge-wait", metavar="SECONDS", default=None, help=text)

    def account(sub: argparse.ArgumentParser, site_help: str) -> None:
        """Which Imperva account and sites: the same four options wherever the API is used."""
        sub.add_argument("--credentials", metavar="PATH",
                         help="the INI file (mode 0600) with " + CREDENTIALS_HELP
                              + " (default: <config-dir>/incapsula.ini)")
        sub.add_argument("--site-id", metavar="ID[,ID...]", help=site_help)
        sub.add_argument("--api-url", metavar="URL", help=f"default {DEFAULT_API_URL}")
        sub.add_argument("--account-id", metavar="ID",
                         help="look for sites in this (sub-)account only")

    def config_dir(sub: argparse.ArgumentParser, hook: str = "") -> None:
        sub.add_argument("--config-dir", metavar="DIR", default=None,
                         help=f"certbot's configuration directory, or any directory for another "
                              f"client's settings and records (default: {DEFAULT_CONFIG_DIR}{hook})")

    def prometheus(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--prometheus-file", metavar="PATH",
                         help="also write metrics there for node_exporter's textfile collector "
                              "(PATH ends in .prom)")

    def stored_lineages(sub: argparse.ArgumentParser) -> None:
        """sync and status act on the lineages a config dir holds, or on one of them."""
        config_dir(sub)
        sub.add_argument("--cert-name", metavar="NAME", help="only this lineage")

    deploy = commands.add_parser(
        "deploy", formatter_class=fmt, epilog=EPILOG_DEPLOY,
        help="upload a certificate to its Imperva sites (a deploy hook)",
        description="Upload a certificate to the Imperva sites that serve its names, read each "
                    "site back and report, exactly as the certbot installer does.")
    account(deploy, "upload to these sites instead of finding them by name")
    deploy.add_argument("--allow-staging", action="store_true", default=None,
                        help="also upload certificates from a staging or test CA")
    edge_wait(deploy, "after the upload, wait up to SECONDS (one wait for all sites) for each "
                      "site's Imperva edge to serve it (default: 60; 0: no edge check)")
    config_dir(deploy, "; as certbot's deploy hook, the one certbot used")
    deploy.add_argument("--fullchain", metavar="PATH", help="the certificate and its chain (PEM)")
    deploy.add_argument("--key", metavar="PATH", help="its private key (PEM)")
    deploy.add_argument("--cert-name", metavar="NAME",
                        help="a certbot lineage (<config-dir>/live/NAME), or the name to record "
                             "a --fullchain/--key certificate under")

    sync = commands.add_parser(
        "sync", formatter_class=fmt, epilog=EPILOG_SYNC,
        help="upload again where Imperva does not hold a lineage's current certificate",
        description="For every lineage deployed through the plugin or this command: upload "
                    "where Imperva does not hold the current certificate, and say what was repaired.")
    stored_lineages(sync)
    sync.add_argument("-q", "--quiet", action="store_true",
                      help="say nothing of lineages in sync, or of sites left to a newer "
                           "certificate (cron mails any output)")
    prometheus(sync)
    edge_wait(sync, "instead of each lineage's stored value: 0 skips the edge check; else the "
                    "wait after a repair (a site in sync gets one handshake)")

    status = commands.add_parser(
        "status", formatter_class=fmt, epilog=EPILOG_STATUS,
        help="what each Imperva site holds against what is on disk (read-only)",
        description="Compare what each Imperva site holds with each lineage on disk (read-only).")
    stored_lineages(status)
    status.add_argument("--site-id", metavar="ID[,ID...]", help="only these sites")
    shape = status.add_mutually_exclusive_group()
    shape.add_argument("--json", action="store_true", help="one JSON document on stdout")
    shape.add_argument("--nagios", action="store_true",
                       help="a monitoring plugin's output and exit status (Nagios, Icinga, ...)")
    for flag, days, when in (("--warning", 21, "WARNING"), ("--critical", 7, "CRITICAL")):
        status.add_argument(flag, metavar="DAYS", type=_days, default=None,
                            help=f"with --nagios: {when} when what a site or its edge serves "
                                 f"expires within DAYS days (default {days})")
    prometheus(status)
    edge_wait(status, "instead of each lineage's stored value: 0 skips the edge check (one "
                      "handshake per site, never a wait)")

    check = commands.add_parser(
        "check", formatter_class=fmt, epilog=EPILOG_CHECK,
        help="the pre-flight: does the challenge path reach the webroot through Imperva?",
        description="Check, before asking a CA, that http-01 can pass through Imperva: what "
                    "certbot's installer does before each issuance.")
    check.add_argument("-w", "--webroot-path", metavar="DIR", dest="order", action=_InOrder,
                       default=[], help="the webroot of the -d names that follow it")
    check.add_argument("-d", "--domain", metavar="NAME", dest="order", action=_InOrder,
                       default=[], help="a name to check (repeat it, or NAME,NAME)")
    account(check, "the sites to probe through instead of finding them by name")
    config_dir(check)
    return parser


def _days(text: str) -> int:
    if not text.strip().isdigit():
        raise argparse.ArgumentTypeError(f"{text[:20]!r} is not a whole number of days (0 or more)")
    return int(text)


class _InOrder(argparse.Action):
    """-w and -d in the order given: a -w applies to the -d after it, as in certbot."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: Optional[str] = None) -> None:
        kind = "w" if option_string in ("-w", "--webroot-path") else "d"
        order = list(getattr(namespace, self.dest, None) or [])
        order.append((kind, str(values)))
        setattr(namespace, self.dest, order)


def webroots_of(order: Sequence[Tuple[str, str]]) -> Tuple[List[str], Dict[str, str]]:
    """(names, name -> webroot): each -d takes the -w before it; names before the first -w
    take the first one."""
    names: List[str] = []
    webroots: Dict[str, str] = {}
    current = next((os.path.abspath(value) for kind, value in order if kind == "w"), "")
    for kind, value in order:
        if kind == "w":
            current = os.path.abspath(value)
            continue
        for name in (part.strip().lower().rstrip(".") for part in value.split(",")):
            if name and name not in names:
                names.append(name)
                webroots[name] = current
    return names, webroots
