"""The local demo: real certbot, real pebble and the project's Imperva test server, on loopback.

Shows, step by step and only the lines that matter: the uploads and the per-site report, a
coverage warning, a certificate changed behind the plugin's back (the status view says DRIFTED)
and repaired by a plain `certbot renew`, a renewal, and a self-check that costs one read per site.
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
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from acme_env import Certbot, Pebble  # noqa: E402
from certmaker import make_chain  # noqa: E402
from imperva_server import ImpervaServer  # noqa: E402
from sandbox import describe_sites, seed, write_credentials  # noqa: E402

KEEP_DIR = HERE.parent / "demo-out"
# The lines worth reading in certbot's and the plugin's output; the rest is certbot's boilerplate.
INTERESTING = re.compile(
    r"Imperva|WARNING|ERROR|FAILED|repaired|cover|self-healing|Successfully received|"
    r"Renewing an existing|not yet due|all renewals succeeded|[Ff]ailed|IN SYNC|DRIFTED|FLAGGED"
)
RENEW = ("renew", "--no-random-sleep-on-renew")


class Demo:
    def __init__(self, base: Path, pebble: Pebble, imperva: ImpervaServer) -> None:
        self.base = base
        self.pebble = pebble
        self.imperva = imperva
        self.credentials = write_credentials(base / "incapsula.ini", imperva)
        self.certbot = Certbot(pebble, base / "certbot")
        self.plugin_args = ["-i", "incapsula", "--incapsula-credentials", str(self.credentials),
                            "--incapsula-api-url", imperva.url, "--incapsula-allow-staging"]
        self.step_number = 0

    def step(self, title: str) -> None:
        self.step_number += 1
        self.imperva.clear()
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

    def certbot_run(self, *names: str, extra: tuple[str, ...] = ()) -> None:
        args = [*extra, *(arg for name in names for arg in ("-d", name))]
        result = self.execute(self.certbot.command("run", "-a", "webroot", "-w", self.pebble.webroot,
                                                   *self.plugin_args, *args))
        self.show(f"certbot run -a webroot -w $WEBROOT -i incapsula ... {' '.join(args)}", result)
        self.api_calls()

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

    def run(self) -> None:
        print("Imperva API test server: " + self.imperva.url)
        for line in describe_sites()[:2]:
            print("  " + line)
        print(f"ACME server: pebble at {self.pebble.directory_url}; webroot $WEBROOT")
        print(f"Files: $DEMO = {self.base}; '...' below stands for "
              "--incapsula-credentials $DEMO/incapsula.ini --incapsula-api-url "
              f"{self.imperva.url} --incapsula-allow-staging")

        self.step("A certificate for www.example.test alone: site 101 also serves example.test, "
                  "so Imperva flags it")
        self.certbot_run("www.example.test")

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
        with Pebble(base / "pebble") as pebble, ImpervaServer() as imperva:
            seed(imperva)
            Demo(base, pebble, imperva).run()
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
