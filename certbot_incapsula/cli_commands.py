"""What each `certbot-incapsula` subcommand does: deploy, sync, status and check, as core
calls; reports -> lines on stdout, warnings and the one-line reason on stderr, an exit status.
Part of door 2 (cli.py); the deployment itself is in core/.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from certbot_incapsula.cli_args import (
    DEFAULT_CONFIG_DIR,
    EXIT_DRIFT,
    EXIT_FAILED,
    EXIT_NOT_CHECKED,
    EXIT_OK,
    EXIT_UNREACHABLE,
    SOURCE,
    webroots_of,
)


class _Usage(Exception):
    """A command line or hook environment that names no usable certificate."""


def _own_flags(text: str) -> str:
    """The core and the API client name the installer's flags (--incapsula-site-id); `deploy`
    takes the same options without the prefix."""
    return text.replace("--incapsula-", "--")


def _print_report(rep: Any, words: Callable[[str], str] = str, quiet: bool = False) -> None:
    for note in [] if quiet else rep.notes:  # no fault in a note (a site left to a newer one)
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
    from certbot_incapsula.outcomes import LineageFiles

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
    from certbot_incapsula.core import Deployment
    from certbot_incapsula.outcomes import Refusal

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
    if not _edge_wait_ok(args) or not _prometheus_ok(args):
        return EXIT_UNREACHABLE
    config_dir = args.config_dir or DEFAULT_CONFIG_DIR
    worst = _sync(args, config_dir)
    if args.prometheus_file:  # what the sites hold after the repairs; the listing is reused
        worst = _metrics(args, status_rows(config_dir, args.cert_name, args.edge_wait), worst)
    return worst


def _prometheus_ok(args: argparse.Namespace) -> bool:
    from certbot_incapsula import monitoring

    why = args.prometheus_file and monitoring.missing("--prometheus-file", "prometheus_client")
    if why:
        _error(why)
    return not why


def _metrics(args: argparse.Namespace, rows: List[Dict[str, Any]], code: int) -> int:
    """Writes the metrics file (last_run_success 0 after exit status 2); one that cannot be
    written makes the exit status 2."""
    from certbot_incapsula import monitoring

    why = monitoring.write_prometheus(args.prometheus_file, rows, code < EXIT_UNREACHABLE)
    if why:
        _error(why)
        return EXIT_UNREACHABLE
    return code


def _sync(args: argparse.Namespace, config_dir: str) -> int:
    from certbot_incapsula import lineages
    from certbot_incapsula.core import Deployment
    from certbot_incapsula.outcomes import Refusal

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
        _print_report(rep, quiet=args.quiet)
        error = rep.error()
        if error:
            _error(f"{entry.name}: {error}")
            worst = max(worst, EXIT_DRIFT)
        elif not rep.outcomes and not rep.notes and not args.quiet:
            print(f"{entry.name}: in sync")
    return worst


def status_rows(config_dir: str, only: Optional[str], edge_wait: Optional[str] = None,
                site_ids: Sequence[int] = ()) -> List[Dict[str, Any]]:
    """One row per lineage and site (of `site_ids` only, if given); a lineage that cannot be
    read is one error row. `edge_wait` ("0": no edge check) replaces each lineage's stored value."""
    from certbot_incapsula import lineages
    from certbot_incapsula.core import Deployment
    from certbot_incapsula.outcomes import StatusRow

    rows: List[Dict[str, Any]] = []
    for entry in lineages.all_lineages(config_dir, only):
        if entry.settings is None or entry.files is None:
            rows.append(vars(StatusRow(entry.name, None, None, "error", str(entry.error))))
            continue
        try:
            chosen = entry.settings.with_overrides({"edge-wait": edge_wait}, SOURCE)
            found = Deployment(chosen, config_dir).status(entry.files)
        except Exception as exc:  # one lineage's surprise is its own row, never the whole view
            found = [StatusRow(entry.name, None, None, "error", (
                f"cannot be read: unexpected {type(exc).__name__} with the settings in "
                f"{entry.source}"))]
        rows += [vars(row) for row in found if not site_ids or row.site in (None, *site_ids)]
    return rows


def status(args: argparse.Namespace) -> int:
    from certbot_incapsula import settings

    config_dir = args.config_dir or DEFAULT_CONFIG_DIR
    if args.nagios:
        return _nagios(args, config_dir)
    if (args.warning, args.critical) != (None, None):
        _error("--warning and --critical go with --nagios.")
        return EXIT_UNREACHABLE
    if not _edge_wait_ok(args) or not _prometheus_ok(args):
        return EXIT_UNREACHABLE
    try:
        site_ids = settings.parse_site_ids(args.site_id, "site-id", SOURCE)
    except ValueError as exc:
        _error(str(exc))
        return EXIT_UNREACHABLE
    rows = status_rows(config_dir, args.cert_name, args.edge_wait, site_ids)
    code = _status(args, config_dir + (f" to site(s) {args.site_id}" if site_ids else ""), rows)
    return _metrics(args, rows, code) if args.prometheus_file else code


def _nagios(args: argparse.Namespace, config_dir: str) -> int:
    """The monitoring-plugin mode: every outcome is a status line and 0-3."""
    from certbot_incapsula import monitoring, settings

    site_ids: Tuple[int, ...] = ()
    try:
        why = monitoring.not_ready(args.prometheus_file)
        if args.edge_wait is not None:
            settings.parse_edge_wait(args.edge_wait, "edge-wait", SOURCE)
        site_ids = settings.parse_site_ids(args.site_id, "site-id", SOURCE)
    except ValueError as exc:
        why = str(exc)
    rows = [] if why else status_rows(config_dir, args.cert_name, args.edge_wait, site_ids)
    code, text = monitoring.plugin(rows, args.warning, args.critical, args.prometheus_file, why or (
        f"no lineage in {config_dir} is deployed through certbot-incapsula"
        + (f" under the name {args.cert_name}" if args.cert_name else "")
        + (f" to site(s) {', '.join(map(str, site_ids))}" if site_ids else "")))
    sys.stdout.write(text)
    return code


def _status(args: argparse.Namespace, config_dir: str, rows: List[Dict[str, Any]]) -> int:
    from certbot_incapsula import monitoring

    if not rows:
        _error(f"no lineage in {config_dir} is deployed through certbot-incapsula.")
        return EXIT_UNREACHABLE
    if args.json:
        print(json.dumps(monitoring.json_rows(rows), indent=1))
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
    from certbot_incapsula.core import Deployment

    names, webroots = webroots_of(args.order)
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
