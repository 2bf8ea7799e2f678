"""Try the plugin by hand: pebble and the Imperva test double on loopback, until Ctrl-C.

Starts the ACME server (Debian's pebble, tests/acme_env.py) and the Imperva API test double
(tests/imperva_server.py) on free 127.0.0.1 ports, writes a credentials file and a certbot cli.ini
pointing at both into a new temp directory, prints the lines to paste into another shell, then
serves until Ctrl-C (SIGINT), SIGTERM or SIGHUP. On the way out it stops every server it started
and removes the directory: the private keys and the credentials do not outlive the run.
"""
from __future__ import annotations

import argparse
import os
import shlex
import shutil
import signal
import sys
import tempfile
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from acme_env import Pebble, pebble_available
from imperva_server import ImpervaServer, Site

# 101 serves two names (a certificate for only one of them is flagged), 103 has no SSL (uploads
# are refused with res 4205).
SITES = (
    Site(101, "www.example.test", ["example.test"]),
    Site(102, "shop.example.test"),
    Site(103, "nossl.example.test", ssl=False),
)


def seed(imperva: ImpervaServer) -> None:
    for site in SITES:
        # A fresh copy: the double changes a site's settings (redirect) in place.
        imperva.add_site(Site(site.site_id, site.domain, list(site.extra_domains), ssl=site.ssl))


def describe_sites() -> list[str]:
    lines = []
    for site in SITES:
        note = "" if site.ssl else "  (SSL not enabled: uploads are refused)"
        lines.append(f"site {site.site_id}  {', '.join(site.all_domains)}{note}")
    return lines


def write_credentials(path: Path, imperva: ImpervaServer) -> Path:
    # Created 0600 from the start: the key is never readable by others, not even briefly.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(f"incapsula_api_id = {imperva.api_id}\nincapsula_api_key = {imperva._api_key}\n")
    return path


def write_cli_ini(path: Path, base: Path, pebble: Pebble, imperva: ImpervaServer,
                  credentials: Path) -> Path:
    certbot_dir = base / "certbot"
    settings = {
        "server": pebble.directory_url,
        "config-dir": certbot_dir / "config",
        "work-dir": certbot_dir / "work",
        "logs-dir": certbot_dir / "logs",
        "non-interactive": "true",
        "agree-tos": "true",
        "register-unsafely-without-email": "true",
        # Without a terminal certbot renew first sleeps up to 8 minutes.
        "no-random-sleep-on-renew": "true",
        "authenticator": "webroot",
        "webroot-path": pebble.webroot,
        "installer": "incapsula",
        "incapsula-credentials": credentials,
        "incapsula-api-url": imperva.url,
        # pebble is a test CA: the plugin refuses its certificates without this.
        "incapsula-allow-staging": "true",
        # No Imperva edge runs in the sandbox (its sites' DNS names an address where nothing
        # listens): the pre-flight and the edge check would only say so.
        "incapsula-preflight": "off",
        "incapsula-edge-wait": "0",
    }
    text = "# certbot-incapsula sandbox: certbot --config THIS_FILE run|renew|install ...\n"
    text += "".join(f"{key} = {value}\n" for key, value in settings.items())
    path.write_text(text)
    return path


def paste_lines(base: Path, pebble: Pebble) -> list[str]:
    """What the user pastes into another shell (the sandbox test runs exactly these)."""
    env = f"export REQUESTS_CA_BUNDLE={shlex.quote(pebble.ca_bundle)}"
    # The venv's certbot even when the venv is not activated: a system certbot lacks the plugin.
    bindir = Path(sys.executable).parent
    if (bindir / "certbot").exists():
        env += f' PATH={shlex.quote(str(bindir))}:"$PATH"'
    cli_ini = shlex.quote(str(base / "cli.ini"))
    config_dir = shlex.quote(str(base / "certbot" / "config"))
    return [
        env,
        f"certbot --config {cli_ini} run -d www.example.test -d example.test",
        f"certbot-incapsula-status --config-dir {config_dir}",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.parse_args(argv)
    if not pebble_available():
        print("pebble is missing: run 'sudo apt-get install pebble' (Debian/Ubuntu) first.",
              file=sys.stderr)
        return 1

    stopping = threading.Event()
    # Handlers first, so a Ctrl-C during start-up still ends in the clean-up below.
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, lambda *_: stopping.set())

    base = Path(tempfile.mkdtemp(prefix="incapsula-sandbox-"))
    try:
        with Pebble(base / "pebble") as pebble, ImpervaServer() as imperva:
            seed(imperva)
            credentials = write_credentials(base / "incapsula.ini", imperva)
            write_cli_ini(base / "cli.ini", base, pebble, imperva, credentials)
            banner = [
                "certbot-incapsula sandbox: everything runs on 127.0.0.1; nothing is real",
                f"  ACME server (pebble):     {pebble.directory_url}",
                f"  Imperva API test double:  {imperva.url}  (API id {imperva.api_id}, "
                f"test key in {credentials})",
                *(f"    {line}" for line in describe_sites()),
                f"  certbot's cli.ini and dirs: {base}",
                "",
                "Paste into another shell:",
                "",
                *paste_lines(base, pebble),
                "",
                "Then try '... renew', '... run -d shop.example.test', '... run -d nossl.example.test'",
                "and more (docs/sandbox.md). Ctrl-C here stops the servers and removes",
                f"{base}.",
                "Imperva API calls, as they arrive:",
            ]
            print("\n".join(banner), flush=True)
            imperva.log_stream = sys.stdout
            while not stopping.wait(0.5):
                pass
            imperva.log_stream = None
    except RuntimeError as error:  # pebble did not start: its own output says why
        print(f"sandbox: {error}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print(f"sandbox stopped: servers down, {base} removed", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
