"""The local demo: real certbot, real pebble and the project's Imperva test server, on loopback.

Obtains a certificate for three names served by two Imperva sites, uploads it, renews it, and shows
what the test server received. Nothing leaves the machine.
"""
from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from acme_env import Certbot, Pebble
from imperva_server import ImpervaServer, Site


def show(title: str, proc) -> None:  # type: ignore[no-untyped-def]
    print(f"\n$ {title}\n" + (proc.stdout + proc.stderr).rstrip())


def main() -> int:
    base = Path(tempfile.mkdtemp(prefix="incapsula-demo-"))
    with Pebble(base / "pebble") as pebble, ImpervaServer() as imperva:
        imperva.add_site(Site(101, "www.example.test", ["example.test"]))
        imperva.add_site(Site(102, "shop.example.test"))
        credentials = base / "incapsula.ini"
        credentials.write_text(f"incapsula_api_id = {imperva.api_id}\n"
                               f"incapsula_api_key = {imperva._api_key}\n")
        os.chmod(credentials, 0o600)
        certbot = Certbot(pebble, base / "certbot")
        common = ["-i", "incapsula", "--incapsula-credentials", str(credentials),
                  "--incapsula-api-url", imperva.url, "--incapsula-allow-staging"]
        print(f"Imperva test server: {imperva.url} (sites 101 www.example.test + example.test, "
              f"102 shop.example.test); ACME server: pebble at {pebble.directory_url}")

        show("certbot run -a webroot -i incapsula -d www.example.test -d example.test "
             "-d shop.example.test",
             certbot.run("run", "-a", "webroot", "-w", pebble.webroot, *common,
                         "-d", "www.example.test", "-d", "example.test", "-d", "shop.example.test"))
        show("certbot renew --force-renewal",
             certbot.run("renew", "--force-renewal", "--no-random-sleep-on-renew"))
        show("certbot renew (nothing due: the self-check finds every site in sync)",
             certbot.run("renew", "--no-random-sleep-on-renew"))
        show("certbot-incapsula-status", certbot.status())

        print("\nWhat the Imperva test server received:")
        for call in imperva.requests:
            form = {k: (v if k in ("site_id", "auth_type", "page_num", "page_size") else "...")
                    for k, v in call.form.items()}
            print(f"  {call.path} {form} -> res {call.res}")
        for site_id in (101, 102):
            held = imperva.held(site_id) or {}
            print(f"  site {site_id} now holds serial {held.get('serialNumber')} "
                  f"({held.get('authType')})")
        print(f"\nRenewal config ({certbot.config_dir}/renewal/www.example.test.conf):")
        print(certbot.renewal_conf("www.example.test"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
