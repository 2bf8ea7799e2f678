"""Door 2, the `certbot-incapsula` command: argv and an ACME client's hook environment -> core
calls; reports -> lines on stdout, warnings and the one-line reason on stderr, an exit status.

For the certbot snap (which loads no pip-installed plugin but runs deploy hooks), lego, and any
ACME client that can run a command after issuance; and for a timer (`sync`) and monitors
(`status`). The deployment itself is in deployment.py, shared with the certbot installer.
"""
from __future__ import annotations

import os
import sys


def _isolate() -> None:
    """Old certbot snaps run hooks with PYTHONPATH naming the snap's own packages, and a hook runs
    in whatever directory: neither may lend this command a module of another Python."""
    pythonpath = os.environ.pop("PYTHONPATH", None)
    os.environ.pop("PYTHONHOME", None)  # nor to what this command runs
    # An empty entry ("/snap/...:") is the current directory, as abspath("") says too.
    foreign = {os.path.abspath(p) for p in pythonpath.split(os.pathsep)} if pythonpath else set()
    # This Python's own directories stay, even when PYTHONPATH names them as well.
    site = sys.modules.get("site")
    ours = [os.path.dirname(os.__file__), os.path.dirname(os.path.dirname(__file__))]
    ours += getattr(site, "getsitepackages", list)()
    foreign -= {os.path.abspath(p) for p in ours}
    sys.path[:] = [p for p in sys.path if p not in ("", ".") and os.path.abspath(p) not in foreign]


_isolate()  # before anything but the standard library is imported

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple  # noqa: E402

from certbot_incapsula import CREDENTIALS_HELP, DEFAULT_API_URL  # noqa: E402

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
be repaired or holds a flagged certificate, 2 a lineage or the API could not be read.

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
VERIFIABLE, HELD BY OTHER LINEAGE, LEFT ALONE (see the README).
exit status: 0 all in sync, 1 drifted, flagged or rolled back (or not verifiable with something
known to be wrong), 2 unreachable or unreadable. Changes nothing.
Also installed as certbot-incapsula-status.

examples:
  certbot-incapsula status
  certbot-incapsula status --cert-name www.example.com --json
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


def _parser() -> argparse.ArgumentParser:
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
    edge_wait(deploy, "after the upload, wait up to SECONDS for each site's Imperva edge to "
                      "serve it (default: 60; 0: no edge check)")
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
                      help="say nothing of lineages in sync (cron mails any output)")
    edge_wait(sync, "instead of each lineage's stored value: 0 skips the edge check; else the "
                    "wait after a repair (a site in sync gets one handshake)")

    status = commands.add_parser(
        "status", formatter_class=fmt, epilog=EPILOG_STATUS,
        help="what each Imperva site holds against what is on disk (read-only)",
        description="Compare what each Imperva site holds with each lineage on disk (read-only).")
    stored_lineages(status)
    status.add_argument("--json", action="store_true", help="one JSON document on stdout")
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


class _InOrder(argparse.Action):
    """-w and -d in the order given: a -w applies to the -d after it, as in certbot."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: Optional[str] = None) -> None:
        kind = "w" if option_string in ("-w", "--webroot-path") else "d"
        order = list(getattr(namespace, self.dest, None) or [])
        order.append((kind, str(values)))
        setattr(namespace, self.dest, order)


def _webroots(order: Sequence[Tuple[str, str]]) -> Tuple[List[str], Dict[str, str]]:
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


class _Usage(Exception):
    """A command line or hook environment that names no usable certificate."""


def _own_flags(text: str) -> str:
    """The core and the API client name the installer's flags (--incapsula-site-id); `deploy`
    takes the same options without the prefix."""
    return text.replace("--incapsula-", "--")


def _print_report(rep: Any, words: Callable[[str], str] = str) -> None:
    for note in rep.notes:
        print(words(note))
    for line in rep.lines():
        print(words(line))
    for warning in rep.warnings:
        print(f"WARNING: {words(warning)}", file=sys.stderr)


def _error(text: str) -> None:
    print(f"certbot-incapsula: error: {text}", file=sys.stderr)


def _which_certificate(args: argparse.Namespace) -> Tuple[str, Any]:
    """(config dir, LineageFiles) from the flags, else certbot's or lego's hook environment."""
    from certbot_incapsula import certificate, lineages
    from certbot_incapsula.deployment import LineageFiles

    env = os.environ
    config_dir = args.config_dir
    if args.fullchain or args.key:
        if not (args.fullchain and args.key):
            raise _Usage("--fullchain and --key go together: give both files.")
        name = args.cert_name
        if not name:
            try:
                name = certificate.load(args.fullchain, args.key).names[0]
            except certificate.CertificateError as exc:
                raise _Usage(f"{exc} Nothing was uploaded.") from None
        return config_dir or DEFAULT_CONFIG_DIR, LineageFiles(name, args.fullchain, args.key)
    if args.cert_name:
        config_dir = config_dir or DEFAULT_CONFIG_DIR
        return config_dir, lineages.certbot_files(config_dir, args.cert_name)
    if env.get("RENEWED_LINEAGE"):
        live = os.path.abspath(env["RENEWED_LINEAGE"])
        # certbot's config dir is the parent of live/: the one certbot used for this run.
        config_dir = config_dir or os.path.dirname(os.path.dirname(live))
        name = os.path.basename(live)
        # The CA from the renewal config (a staging URL is refused); the files certbot named.
        server = lineages.certbot_files(config_dir, name).acme_server
        return config_dir, LineageFiles(name, os.path.join(live, "fullchain.pem"),
                                        os.path.join(live, "privkey.pem"), server)
    if env.get("LEGO_CERT_PATH") or env.get("LEGO_CERT_KEY_PATH"):
        if not (env.get("LEGO_CERT_PATH") and env.get("LEGO_CERT_KEY_PATH")):
            raise _Usage("lego set only one of LEGO_CERT_PATH and LEGO_CERT_KEY_PATH.")
        name = env.get("LEGO_CERT_DOMAIN") or os.path.basename(env["LEGO_CERT_PATH"]).rsplit(".crt", 1)[0]
        return config_dir or DEFAULT_CONFIG_DIR, LineageFiles(
            name, env["LEGO_CERT_PATH"], env["LEGO_CERT_KEY_PATH"])
    raise _Usage("which certificate? Give --fullchain PATH --key PATH or --cert-name NAME, or run "
                 "this as certbot's --deploy-hook or lego's --run-hook (see --help).")


def deploy(args: argparse.Namespace) -> int:
    from certbot_incapsula import lineages, settings
    from certbot_incapsula.deployment import Deployment, Refusal

    try:
        config_dir, files = _which_certificate(args)
        # The name records, the remembered settings and `sync` share (lego's _.example.com).
        files = dataclasses.replace(files, name=lineages.safe_name(files.name))
        options = {"credentials": args.credentials or os.path.join(config_dir, "incapsula.ini"),
                   "site-id": args.site_id, "api-url": args.api_url,
                   "account-id": args.account_id, "allow-staging": args.allow_staging,
                   "edge-wait": args.edge_wait}
        chosen = settings.parse(options.get, SOURCE)
        core = Deployment(chosen, config_dir)
        core.load(files)  # refused files are not remembered
        # Remembered before the upload: a failed upload is what `sync` must repair later.
        try:
            lineages.remember(config_dir, files, chosen)
        except OSError as exc:
            raise Refusal(f"cannot write {lineages.hook_file(config_dir, files.name)} "
                          f"({exc.strerror or exc}): run this as the user that owns {config_dir}, "
                          "or give another --config-dir. Nothing was uploaded.") from None
        rep = core.deploy(files)
    except (_Usage, Refusal, ValueError) as exc:
        _error(_own_flags(str(exc)))
        return EXIT_FAILED
    _print_report(rep, _own_flags)
    error = rep.error()
    if error:
        _error(_own_flags(error))
        return EXIT_FAILED
    return EXIT_OK


def _edge_wait_ok(args: argparse.Namespace) -> bool:
    from certbot_incapsula import settings

    if args.edge_wait is None:
        return True
    try:
        settings.parse_edge_wait(args.edge_wait, "edge-wait", SOURCE)
    except ValueError as exc:
        _error(str(exc))
        return False
    return True


def sync(args: argparse.Namespace) -> int:
    from certbot_incapsula import lineages
    from certbot_incapsula.deployment import Deployment, Refusal

    if not _edge_wait_ok(args):
        return EXIT_UNREACHABLE
    config_dir = args.config_dir or DEFAULT_CONFIG_DIR
    found = lineages.all_lineages(config_dir, args.cert_name)
    if not found:
        _error(f"no lineage in {config_dir} is deployed through certbot-incapsula"
               + (f" under the name {args.cert_name}" if args.cert_name else "") + ".")
        return EXIT_UNREACHABLE
    worst = EXIT_OK
    for entry in found:
        if entry.settings is None or entry.files is None:
            _error(f"{entry.name}: {entry.error}")
            worst = max(worst, EXIT_UNREACHABLE)
            continue
        try:
            chosen = entry.settings.with_overrides({"edge-wait": args.edge_wait}, SOURCE)
            rep = Deployment(chosen, config_dir).sync(entry.files)
        except (Refusal, ValueError) as exc:
            _error(f"{entry.name}: {exc}")
            worst = max(worst, EXIT_UNREACHABLE)
            continue
        _print_report(rep)
        error = rep.error()
        if error:
            _error(f"{entry.name}: {error}")
            worst = max(worst, EXIT_DRIFT)
        elif not rep.outcomes and not args.quiet:
            print(f"{entry.name}: in sync")
    return worst


def status_rows(config_dir: str, only: Optional[str],
                edge_wait: Optional[str] = None) -> List[Dict[str, Any]]:
    """One row per lineage and site; a lineage that cannot be read is one error row.
    `edge_wait` ("0": no edge check) replaces each lineage's stored value."""
    from certbot_incapsula import lineages
    from certbot_incapsula.deployment import Deployment

    rows: List[Dict[str, Any]] = []
    for entry in lineages.all_lineages(config_dir, only):
        if entry.settings is None or entry.files is None:
            rows.append({"lineage": entry.name, "site": None, "domain": None, "state": "error",
                         "detail": entry.error})
            continue
        try:
            chosen = entry.settings.with_overrides({"edge-wait": edge_wait}, SOURCE)
            found = Deployment(chosen, config_dir).status(entry.files)
        except Exception as exc:  # one lineage's surprise is its own row, never the whole view
            found = []
            rows.append({"lineage": entry.name, "site": None, "domain": None, "state": "error",
                         "detail": f"cannot be read: unexpected {type(exc).__name__} with the "
                                   f"settings in {entry.source}"})
        rows += [vars(row) for row in found]
    return rows


def status(args: argparse.Namespace) -> int:
    config_dir = args.config_dir or DEFAULT_CONFIG_DIR
    if not _edge_wait_ok(args):
        return EXIT_UNREACHABLE
    rows = status_rows(config_dir, args.cert_name, args.edge_wait)
    if not rows:
        _error(f"no lineage in {config_dir} is deployed through certbot-incapsula.")
        return EXIT_UNREACHABLE
    if args.json:
        print(json.dumps(rows, indent=1))
    else:
        for row in rows:
            site = (f"site {row['site']}" + (f" ({row['domain']})" if row.get("domain") else "")
                    if row["site"] else "-")
            detail = " ".join(str(row["detail"]).split())  # one line, whatever the reason
            print(f"{row['lineage']}  {site}  {row['state'].upper()}  {detail}")
    states = {row["state"] for row in rows}
    if states & {"unreachable", "error"}:
        return EXIT_UNREACHABLE
    # "not verifiable" counts as drift only when something is known to be wrong on the site.
    if states & {"drifted", "flagged", "rolled back"} or any(r.get("known_wrong") for r in rows):
        return EXIT_DRIFT
    return EXIT_OK


def check(args: argparse.Namespace) -> int:
    """The pre-flight on its own: the core's, as certbot's installer runs it before issuance."""
    from certbot_incapsula import settings
    from certbot_incapsula.deployment import Deployment

    names, webroots = _webroots(args.order)
    if not names or not any(kind == "w" for kind, _ in args.order):
        _error("give the names to check with -d NAME and their webroot with -w DIR (see --help).")
        return EXIT_UNREACHABLE
    config_dir = args.config_dir or DEFAULT_CONFIG_DIR
    options = {"credentials": args.credentials or os.path.join(config_dir, "incapsula.ini"),
               "site-id": args.site_id, "api-url": args.api_url, "account-id": args.account_id,
               "preflight": True}
    try:
        result = Deployment(settings.parse(options.get, SOURCE), config_dir).preflight(names, webroots)
    except ValueError as exc:  # the settings or the credentials file
        _error(str(exc))
        return EXIT_UNREACHABLE
    if result.unreadable:
        _error(f"the account's sites could not be read: {result.unreadable}")
        return EXIT_UNREACHABLE
    for note in result.notes:
        print(note)
    for line in result.passed:
        print(f"OK  {line}")
    for line in result.failures:
        print(f"FAILED  {line}")
    for line in result.unchecked:
        print(f"NOT CHECKED  {line}")
    if result.failures:
        # A line may name several names (several origin servers: one line per site).
        failed = sum(len(line.split(": ", 1)[0].split(", ")) for line in result.failures)
        _error(f"{failed} of {failed + len(result.passed)} probed "
               "name(s) would fail http-01 through Imperva; fix them before asking a CA.")
        return EXIT_FAILED
    if result.unchecked:
        _error("this host could not reach Imperva's edge for some names (see NOT CHECKED); the CA "
               "will decide.")
        return EXIT_NOT_CHECKED
    return EXIT_OK


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    # The API client's retries and the core's warnings, on stderr; nothing secret is logged.
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    handler = {"deploy": deploy, "sync": sync, "status": status, "check": check}[args.command]
    try:
        return handler(args)
    except KeyboardInterrupt:
        return 130


def status_main(argv: Optional[Sequence[str]] = None) -> int:
    """`certbot-incapsula-status`, kept as an alias of `certbot-incapsula status`."""
    return main(["status", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
