"""Lineages (issue 10): `certbot renew` of N lineages of one site each, nothing due, all in sync.

Users with many sites keep one lineage per site; certbot's timer runs `certbot renew` twice a day
and certbot calls the plugin's generic_updates on every lineage, due or not. This measures what
the plugin's self-check adds to such a renew on a slow API (the double answers every call after
--latency seconds, 0.3 by default):

  in sync    certbot renew --no-random-sleep-on-renew
  baseline   certbot renew --no-random-sleep-on-renew --disable-renew-updates (certbot alone:
             the same lineages, no generic_updates call)

timed in --rounds rounds, interleaved (the order alternates from one round to the next). Printed:
API calls by kind, median wall time, the extra over the baseline, calls per second as the API
saw them (the most arrivals in any 1 s window, from the double's recorded arrival times), and
the peak RSS of the certbot process (ru_maxrss from os.wait4, as bench/memory.py).

Set-up, not timed. Lineage i is lNNNN.lineages.test (site 20000 + i serves it; the account holds
--other-sites more). Pebble runs with PEBBLE_VA_ALWAYS_VALID=1. The first lineage comes from a
real `certbot certonly -a webroot -i incapsula ...`, so its renewal config is certbot's own and
names the installer with its options. Every other lineage gets its own certificate from the same
pebble (issued here with certbot's `acme` library: a key, a CSR for its one name, an order) and
is written the way certbot lays out a lineage: archive/NAME/{cert,chain,fullchain,privkey}1.pem,
live/NAME/ relative symlinks, and renewal/NAME.conf copied from the first with the name changed.
Then one untimed `certbot renew` with the API answering at once lets the plugin's self-healing
upload every lineage to its site (and record the sites it found), so the timed runs start with
every site in sync. Nothing is due: pebble's certificates are valid for years.

    .venv/bin/python bench/lineages.py [--lineages 30] [--latency 0.3] [--rounds 3]
                                       [--other-sites 5] [--certbot PATH]
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import benchlib
import josepy as jose
from acme import challenges, messages
from acme import client as acme_client
from acme import crypto_util as acme_crypto
from benchlib import Certbot, ImpervaServer, Pebble, Site
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

DOMAIN = "lineages.test"
SITE_BASE = 20000
# Parallel ACME clients (each its own pebble account) for the set-up: each order spends most of
# its ~1 s in the acme library's authorization poll, which sleeps 1 s between polls.
ISSUERS = 8
RENEW = ["renew", "--no-random-sleep-on-renew"]
KINDS = ("list", "status", "upload")


def lineage_name(i: int) -> str:
    return f"l{i:04d}.{DOMAIN}"  # fixed width: no name is a prefix of another


# --- set-up: N real lineages ------------------------------------------------------------------


class Issuer:
    """One pebble account issuing one-name certificates (PEBBLE_VA_ALWAYS_VALID: no fetches)."""

    def __init__(self, pebble: Pebble) -> None:
        self.account_key = jose.JWKRSA(key=rsa.generate_private_key(65537, 2048))
        net = acme_client.ClientNetwork(self.account_key, verify_ssl=pebble.ca_bundle,
                                        user_agent="certbot-incapsula-bench")
        self.client = acme_client.ClientV2(
            acme_client.ClientV2.get_directory(pebble.directory_url, net), net)
        net.account = self.client.new_account(
            messages.NewRegistration.from_data(terms_of_service_agreed=True))

    def issue(self, name: str) -> Tuple[bytes, bytes]:
        """(fullchain PEM, PKCS#8 key PEM) for `name`, ECDSA P-256 like certbot's default."""
        key_pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption())
        order = self.client.new_order(acme_crypto.make_csr(key_pem, [name]))
        for authz in order.authorizations:
            challenge = next(c for c in authz.body.challenges
                             if isinstance(c.chall, challenges.HTTP01))
            self.client.answer_challenge(challenge, challenge.response(self.account_key))
        deadline = dt.datetime.now() + dt.timedelta(seconds=60)
        return self.client.poll_and_finalize(order, deadline).fullchain_pem.encode(), key_pem


def write_lineage(config_dir: Path, template: str, name: str, fullchain: bytes,
                  key_pem: bytes) -> None:
    """A lineage laid out as certbot's storage writes one, renewal config from the template's."""
    certs = x509.load_pem_x509_certificates(fullchain)
    pem = [c.public_bytes(serialization.Encoding.PEM) for c in certs]
    archive, live = config_dir / "archive" / name, config_dir / "live" / name
    archive.mkdir(mode=0o755, parents=True)  # as certbot 5 makes it
    live.mkdir(parents=True)
    files = {"cert": pem[0], "chain": b"".join(pem[1:]), "fullchain": b"".join(pem),
             "privkey": key_pem}
    for kind, data in files.items():
        path = archive / f"{kind}1.pem"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if kind == "privkey" else 0o644)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        (live / f"{kind}.pem").symlink_to(os.path.relpath(path, live))
    shutil.copy(config_dir / "live" / template / "README", live / "README")
    conf = (config_dir / "renewal" / f"{template}.conf").read_text()
    (config_dir / "renewal" / f"{name}.conf").write_text(conf.replace(template, name))


def build_lineages(certbot: Certbot, pebble: Pebble, plugin: Sequence[str], count: int) -> None:
    first = lineage_name(1)
    certbot.run("certonly", "-a", "webroot", "-w", pebble.webroot, "--cert-name", first,
                "-d", first, *plugin)
    conf = certbot.renewal_conf(first)
    for needed in ("installer = incapsula", "incapsula_credentials", "incapsula_api_url",
                   "incapsula_allow_staging"):
        if needed not in conf:
            sys.exit(f"certbot's renewal config of {first} lacks {needed!r}:\n{conf}")
    names = [lineage_name(i) for i in range(2, count + 1)]
    if not names:
        return
    with ThreadPoolExecutor(max_workers=ISSUERS) as pool:
        issuers = list(pool.map(lambda _: Issuer(pebble), range(ISSUERS)))
        issued = list(pool.map(lambda job: issuers[job[0] % ISSUERS].issue(job[1]),
                               enumerate(names)))
    for name, (fullchain, key_pem) in zip(names, issued):
        write_lineage(certbot.config_dir, first, name, fullchain, key_pem)


# --- checks -----------------------------------------------------------------------------------


def lineage_serial(certbot: Certbot, name: str) -> str:
    cert = x509.load_pem_x509_certificate((certbot.live(name) / "cert.pem").read_bytes())
    return format(cert.serial_number, "X")


def in_sync(server: ImpervaServer, serials: Dict[int, str]) -> int:
    """How many sites hold their lineage's certificate."""
    return sum(1 for site_id, serial in serials.items()
               if (server.held(site_id) or {}).get("serialNumber") == serial)


# --- the benchmark ----------------------------------------------------------------------------


def _rate(value: float) -> str:
    return "-" if value != value else f"{value:.1f}"  # NaN: fewer than 2 calls, no rate


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    benchlib.add_certbot_option(parser)
    parser.add_argument("--lineages", type=int, default=30, help="N: lineages, one site each")
    parser.add_argument("--latency", type=float, default=0.3, help="seconds per API call")
    parser.add_argument("--rounds", type=int, default=3,
                        help="timed rounds, each one in-sync renew and one baseline renew")
    parser.add_argument("--other-sites", type=int, default=5,
                        help="sites on the account that no lineage covers")
    args = parser.parse_args()
    if args.lineages < 1 or args.rounds < 1 or args.other_sites < 0 or args.latency < 0:
        parser.error("--lineages and --rounds must be >= 1, --other-sites and --latency >= 0")
    certbot_exe = args.certbot or benchlib.default_certbot()
    benchlib.require_pebble()
    total_sites = args.lineages + args.other_sites
    benchlib.banner(f"lineages: certbot renew of {args.lineages} lineages of one site each "
                    f"(account: {total_sites} sites), nothing due, API latency {args.latency} s",
                    certbot_exe)

    with tempfile.TemporaryDirectory(prefix="bench-lineages-") as tmp, \
            Pebble(extra_env={"PEBBLE_VA_ALWAYS_VALID": "1"}) as pebble, \
            ImpervaServer() as server:
        for i in range(1, args.lineages + 1):
            server.add_site(Site(SITE_BASE + i, lineage_name(i)))
        for j in range(1, args.other_sites + 1):
            server.add_site(Site(30000 + j, f"other{j}.elsewhere.test"))
        base = Path(tmp)
        plugin = benchlib.plugin_args(server, benchlib.credentials_for(server, base))
        certbot = Certbot(pebble, base / "certbot", certbot_exe=certbot_exe)

        with benchlib.Stopwatch() as build:
            build_lineages(certbot, pebble, plugin, args.lineages)
        print(f"set-up: {args.lineages} lineages in {build.seconds:.1f} s (1 certbot certonly, "
              f"{args.lineages - 1} issued with the acme library and written as certbot does)")

        # Self-healing uploads every lineage; the API answers at once (only the rate limit paces it).
        server.clear()
        with benchlib.Stopwatch() as prime:
            certbot.run(*RENEW, timeout=3600)
        serials = {SITE_BASE + i: lineage_serial(certbot, lineage_name(i))
                   for i in range(1, args.lineages + 1)}
        held = in_sync(server, serials)
        print(f"set-up: first `certbot renew` (latency 0) uploaded them in {prime.seconds:.1f} s: "
              f"{benchlib.by_endpoint(server.requests)}; {held}/{args.lineages} sites in sync")
        if held != args.lineages:
            sys.exit("not every site holds its lineage's certificate after the first renew")
        print()

        server.latency = args.latency
        commands = {"in sync": RENEW, "baseline": [*RENEW, "--disable-renew-updates"]}
        walls: Dict[str, List[float]] = {k: [] for k in commands}
        peaks: Dict[str, List[float]] = {k: [] for k in commands}
        calls: Dict[str, List[Dict[str, int]]] = {k: [] for k in commands}
        windows: Dict[str, List[int]] = {k: [] for k in commands}
        rates: Dict[str, List[float]] = {k: [] for k in commands}
        held_after: Dict[str, List[int]] = {k: [] for k in commands}
        run_rows: List[list] = []
        for round_no in range(args.rounds):
            order = list(commands) if round_no % 2 == 0 else list(reversed(commands))
            for label in order:
                server.clear()
                started = time.strftime("%H:%M:%S")
                peak, wall = benchlib.measured(certbot, commands[label], base)
                records = list(server.requests)
                counts = benchlib.by_endpoint(records)
                times = [r.time for r in records]
                window = benchlib.max_in_window(times, 1.0)[0] if times else 0
                span = max(times) - min(times) if len(times) > 1 else 0.0
                rate = (len(times) - 1) / span if span else float("nan")  # < 2 calls: none
                walls[label].append(wall)
                peaks[label].append(peak)
                calls[label].append(counts)
                windows[label].append(window)
                rates[label].append(rate)
                held_after[label].append(in_sync(server, serials))
                warned = "Traceback" in (base / "stderr").read_text(errors="replace")
                run_rows.append([round_no + 1, label, started, f"{wall:.2f}", len(records),
                                 window, f"{peak:.1f}", held_after[label][-1],
                                 "TRACEBACK" if warned else "-"])
                print(f"  round {round_no + 1} {label}: {wall:.2f} s, {len(records)} calls",
                      flush=True)

    print()
    benchlib.print_table(["round", "run", "started", "wall s", "API calls", "max in 1 s",
                          "peak RSS MiB", "sites in sync after", "traceback"], run_rows)
    print()
    base_wall = benchlib.median(walls["baseline"])
    rows = []
    for label in commands:
        kinds: Dict[str, int] = {}
        for counts in calls[label]:  # the same in every round when nothing goes wrong
            for kind, value in counts.items():
                kinds[kind] = max(kinds.get(kind, 0), value)
        spread = {sum(c.values()) for c in calls[label]}
        wall = benchlib.median(walls[label])
        rows.append([
            f"`{' '.join(commands[label])}`", args.lineages, total_sites,
            *(kinds.pop(k, 0) for k in KINDS),
            ", ".join(f"{k} {v}" for k, v in sorted(kinds.items())) or "-",
            "/".join(str(s) for s in sorted(spread)),
            f"{wall:.2f}", f"{min(walls[label]):.2f}-{max(walls[label]):.2f}",
            "-" if label == "baseline" else f"**{wall - base_wall:+.2f}**",
            max(windows[label]), _rate(benchlib.median(rates[label])),
            f"{benchlib.median(peaks[label]):.1f}",
            f"{min(held_after[label])}/{args.lineages}",
        ])
    benchlib.print_table(
        ["command", "N", "sites on account", *KINDS, "other calls", "calls", "median wall s",
         "min-max s", "extra over baseline s", "max calls in any 1 s", "mean calls/s",
         "median peak RSS MiB", "sites in sync"], rows)
    print()
    print(f"{args.rounds} round(s), interleaved; API latency {args.latency} s; calls counted by "
          "the API double (max per kind over the rounds); 'max calls in any 1 s' from its arrival "
          "times; mean calls/s = (calls - 1) / (last arrival - first arrival), '-' under 2 calls; peak RSS = "
          "ru_maxrss of the certbot process (os.wait4).")
    print(f"issue 10 goal: calls = ceil(S / 100) = {-(-total_sites // 100)} list call(s), extra "
          "over baseline <= 1 s at 0.3 s latency for N <= 300")
    return 0


if __name__ == "__main__":
    sys.exit(main())
