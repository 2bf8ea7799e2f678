"""The local demo: real certbot, real pebble and the project's Imperva test server, on loopback.

Shows, step by step and only the lines that matter: the uploads and the per-site report, a
coverage warning, a certificate changed behind the plugin's back (the status view says DRIFTED)
and repaired by a plain `certbot renew`, a renewal, and a self-check that costs one read per site.
As root it also runs Imperva's edge double on 127.77.x.y ports 80 and 443: the CA's http-01
requests travel CA -> edge -> origin webroot, a WAF block rule stops a run at the pre-flight before
the CA is asked, and each upload is checked at the edge.
Nothing leaves the machine. Its files (certbot's dirs, the private keys, the test credentials)
live in a temp directory removed at the end; --keep keeps them in ./demo-out to look at.
"""
from __future__ import annotations

import argparse
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from acme_env import Certbot, Pebble  # noqa: E402
from certmaker import make_chain  # noqa: E402
from imperva_edge import ImpervaEdge, need_root  # noqa: E402
from imperva_server import ImpervaServer  # noqa: E402
from sandbox import describe_sites, seed, write_credentials  # noqa: E402

KEEP_DIR = HERE.parent / "demo-out"
# The lines worth reading in certbot's and the plugin's output; the rest is certbot's boilerplate.
INTERESTING = re.compile(
    r"Imperva|WARNING|ERROR|FAILED|repaired|cover|self-healing|Successfully received|"
    r"Renewing an existing|not yet due|all renewals succeeded|[Ff]ailed|IN SYNC|DRIFTED|FLAGGED|"
    r"preflight"
)
CA_AGENT = "LetsEncrypt-Pebble-VA"  # pebble's validation requests, as the edge logs them
RENEW = ("renew", "--no-random-sleep-on-renew")


class Demo:
    def __init__(self, base: Path, pebble: Pebble, imperva: ImpervaServer,
                 edge: ImpervaEdge | None = None) -> None:
        self.base = base
        self.pebble = pebble
        self.imperva = imperva
        self.edge = edge
        self.credentials = write_credentials(base / "incapsula.ini", imperva)
        self.certbot = Certbot(pebble, base / "certbot")
        # Without the edge double the sites' DNS names an address where nothing listens: the
        # pre-flight and the edge check are turned off rather than shown failing.
        self.edge_args = (["--incapsula-edge-wait", "5"] if edge is not None
                          else ["--incapsula-preflight", "off", "--incapsula-edge-wait", "0"])
        self.plugin_args = ["-i", "incapsula", "--incapsula-credentials", str(self.credentials),
                            "--incapsula-api-url", imperva.url, "--incapsula-allow-staging",
                            *self.edge_args]
        self.step_number = 0

    def step(self, title: str) -> None:
        self.step_number += 1
        self.imperva.clear()
        if self.edge is not None:
            self.edge.clear()
        print(f"\n{self.step_number}. {title}")

    def execute(self, argv: list[str], *, ok: tuple[int, ...] = (0,)) -> subprocess.CompletedProcess[str]:
        """Run it with stderr merged into stdout, in the order they were written."""
        env = {**self.certbot.environment(), "PYTHONUNBUFFERED": "1"}
        # argv is certbot or the status tool with the demo's own arguments.
        result = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,  # noqa: S603
                                stderr=subprocess.STDOUT, text=True, env=env, timeout=180,
                                check=False)
        if result.returncode not in ok:
            print(result.stdout, file=sys.stderr)
            raise SystemExit(f"demo: {argv[0]} failed (exit status {result.returncode}); "
                             f"certbot's log: {self.certbot.logs_dir}/letsencrypt.log (--keep keeps it)")
        return result

    def show(self, command: str, result: subprocess.CompletedProcess[str]) -> None:
        print(f"   $ {command}")
        for line in result.stdout.splitlines():
            if INTERESTING.search(line):
                print("   | " + line.replace(str(self.base), "$DEMO"))
        if result.returncode:
            print(f"   (exit status {result.returncode})")

    def api_calls(self) -> None:
        calls = []
        for call in self.imperva.requests:
            endpoint = call.path.rsplit("/v1/", 1)[-1]
            site = call.form.get("site_id")
            calls.append(f"{endpoint} {site}" if site else endpoint)
        print("   Imperva API calls: " + (", ".join(calls) or "none"))

    def certbot_run(self, *names: str, extra: tuple[str, ...] = (), ok: tuple[int, ...] = (0,)) -> None:
        args = [*extra, *(arg for name in names for arg in ("-d", name))]
        result = self.execute(self.certbot.command("run", "-a", "webroot", "-w", self.pebble.webroot,
                                                   *self.plugin_args, *args), ok=ok)
        self.show(f"certbot run -a webroot -w $WEBROOT -i incapsula ... {' '.join(args)}", result)
        self.api_calls()
        self.edge_log()

    def edge_log(self) -> None:
        """What reached Imperva's edge: the CA's requests (proxied to the origin) and the plugin's."""
        if self.edge is None:
            return
        seen = []
        for request in self.edge.requests:
            who = "the CA" if request.user_agent.startswith(CA_AGENT) else "the pre-flight"
            seen.append(f"{who}: {request.host} -> {request.answer} {request.status}")
        handshakes = [f"{h.key_type} {'upload' if h.custom else 'Imperva own'}"
                      for h in self.edge.handshakes]
        print("   Imperva edge: " + ("; ".join(dict.fromkeys(seen)) or "no HTTP request")
              + (f"; TLS handshakes: {', '.join(handshakes)}" if handshakes else ""))

    def renew(self, *extra: str) -> None:
        self.show(" ".join(["certbot", "renew", *extra]),
                  self.execute(self.certbot.command(*RENEW, *extra)))
        self.api_calls()

    def status(self) -> None:
        # Exit status 1 says "drifted or flagged": expected here, shown below the lines.
        exe = Path(self.certbot.certbot_exe).parent / "certbot-incapsula-status"
        result = self.execute([str(exe), "--config-dir", str(self.certbot.config_dir)], ok=(0, 1))
        self.show("certbot-incapsula-status --config-dir $DEMO/certbot/config", result)

    def drift(self, site_id: int, names: list[str]) -> None:
        """Someone uploads another certificate to the site in Imperva's console."""
        chain = make_chain(names, serial=secrets.randbits(63) | 1 << 62)  # short, like certbot's
        self.imperva.console_upload(site_id, chain.fullchain_pem, chain.key_pem)
        print(f"   site {site_id} now holds serial {chain.serial:X}, a certificate certbot never saw")
        if self.edge is not None:  # done a while ago: Imperva's edge serves it by now
            time.sleep(self.edge.propagation_delay + 0.2)

    def run(self) -> None:
        print("Imperva API test server: " + self.imperva.url)
        for line in describe_sites()[:2]:
            print("  " + line)
        print(f"ACME server: pebble at {self.pebble.directory_url}; webroot $WEBROOT")
        if self.edge is not None:
            print(f"Imperva's edge (test double): {self.edge.address} ports 80 and 443, where the "
                  "sites' DNS points; the CA's http-01 requests go CA -> edge -> origin "
                  f"({self.pebble.origin_url}, serving $WEBROOT)")
        else:
            print("Not root: no Imperva edge double (it needs ports 80 and 443), so the CA -> edge "
                  "-> origin path and the blocked run are skipped; pre-flight and edge check off.")
        print(f"Files: $DEMO = {self.base}; '...' below stands for "
              "--incapsula-credentials $DEMO/incapsula.ini --incapsula-api-url "
              f"{self.imperva.url} --incapsula-allow-staging {' '.join(self.edge_args)}")

        self.step("A certificate for www.example.test alone: site 101 also serves example.test, "
                  "so Imperva flags it")
        self.certbot_run("www.example.test")

        if self.edge is not None:
            self.step("A WAF rule on site 102 blocks /.well-known/acme-challenge/: the pre-flight "
                      "stops certbot before the CA is asked (no order, no failed validation)")
            self.edge.set_rule(102, "block")
            self.certbot_run("www.example.test", "example.test", "shop.example.test",
                             extra=("--expand",), ok=(1,))
            self.edge.set_rule(102, None)
            print("   (the rule is lifted for the next step)")

        self.step("Add the missing name, and shop.example.test (site 102): certbot expands the "
                  "certificate, the plugin uploads it to both sites")
        self.certbot_run("www.example.test", "example.test", "shop.example.test", extra=("--expand",))

        self.step("Someone uploads another certificate to site 102 behind certbot's back "
                  "(here: straight to the test server's API)")
        self.drift(102, ["shop.example.test"])
        self.status()

        self.step("A plain certbot renew (nothing is due): the plugin's self-check repairs site 102")
        self.renew()
        self.status()

        self.step("A renewal: the new certificate goes to both sites")
        self.renew("--force-renewal")

        self.step("certbot renew with everything in sync: one read of the account's site list, "
                  "no upload, nothing printed by the plugin")
        self.renew()

        print("\nThe renewal config keeps the plugin and its options, so every 'certbot renew' "
              "does all this:")
        for line in self.certbot.renewal_conf("www.example.test").splitlines():
            if line.startswith(("installer", "incapsula_")):
                print("   " + line.replace(str(self.base), "$DEMO"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", action="store_true",
                        help=f"keep certbot's dirs, logs, private keys and the test credentials in "
                        f"{KEEP_DIR} (replaced at each run) instead of removing them")
    args = parser.parse_args(argv)
    if args.keep:
        shutil.rmtree(KEEP_DIR, ignore_errors=True)
        KEEP_DIR.mkdir()
        base = KEEP_DIR
    else:
        base = Path(tempfile.mkdtemp(prefix="incapsula-demo-"))
    try:
        with ImpervaServer() as imperva:
            seed(imperva)
            if need_root() is not None:
                with Pebble(base / "pebble") as pebble:
                    Demo(base, pebble, imperva).run()
            else:
                with ImpervaEdge(imperva, hold_seconds=5) as edge, \
                        Pebble(base / "pebble", edge_address=edge.address) as pebble:
                    edge.origin = pebble.origin_url
                    edge.set_propagation_delay(1)  # Imperva takes a moment: the check waits for it
                    Demo(base, pebble, imperva, edge).run()
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    if args.keep:
        print(f"\nKept in {base}: certbot's config, work and logs dirs, the private keys and the "
              "test credentials (--keep). The servers are gone; delete it when done.")
    else:
        print(f"\nRemoved {base} (private keys and test credentials included); "
              "--keep keeps them in ./demo-out.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
