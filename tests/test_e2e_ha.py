"""End to end, issue 17: two certbot hosts on one site (an HA pair: the newest certificate wins),
and several processes of the plugin on one host at once (the records' own lock)."""
from __future__ import annotations

import collections
import json
import subprocess
import threading
import time
from pathlib import Path
from typing import Dict, List

from acme_env import Certbot
from certmaker import make_chain, write_lineage
from conftest import assert_no_secret_leaked, write_credentials
from cryptography import x509
from imperva_server import Site

WWW = "www.example.test"
NAMES = ["-d", WWW, "-d", "example.test"]
RENEW = ["renew", "--no-random-sleep-on-renew"]


def serial_of(host: Certbot) -> str:
    pem = (host.live(WWW) / "cert.pem").read_bytes()
    return format(x509.load_pem_x509_certificate(pem).serial_number, "X")


def expiry_of(host: Certbot) -> float:
    pem = (host.live(WWW) / "cert.pem").read_bytes()
    return x509.load_pem_x509_certificate(pem).not_valid_after_utc.timestamp()


def rows(host: Certbot) -> Dict[str, str]:
    view = host.status("--json")
    assert view.returncode == 0, view.stdout + view.stderr  # a newer certificate is no fault
    return {f"{row['lineage']} {row['site']}": row for row in json.loads(view.stdout)}


def test_two_hosts_on_one_site_the_newest_certificate_wins(certbot_runner, pebble, imperva,
                                                           plugin_args, tmp_path):
    host_a, host_b = certbot_runner, Certbot(pebble, tmp_path / "host-b")
    try:
        for host in (host_a, host_b):  # each host its own lineage of the same names
            host.run("run", "-a", "webroot", "-w", pebble.webroot, *plugin_args, *NAMES)
        assert expiry_of(host_b) > expiry_of(host_a), "B's certificate is the newer one"
        newest = serial_of(host_b)
        assert imperva.held(101)["serialNumber"] == newest

        # Plain renews on both hosts, over and over: nothing uploaded, the site keeps B's.
        imperva.clear()
        for _ in range(3):
            older = host_a.run(*RENEW)
            host_b.run(*RENEW)
        assert imperva.uploads() == [] and imperva.held(101)["serialNumber"] == newest
        said = " ".join(older.stdout.split())
        assert (f"Imperva site 101 ({WWW}): left alone: the site holds a newer certificate "
                f"(ECDSA key, serial {newest}, expires ") in said
        assert (f"to take the site back, deploy explicitly: certbot install --cert-name {WWW} "
                f"-i incapsula (or certbot-incapsula deploy --cert-name {WWW})") in said
        # The command's sync says the same, and nothing under --quiet (cron mails any output).
        config_a = ["--config-dir", str(host_a.config_dir)]
        synced = host_a.incapsula("sync", *config_a)
        assert synced.returncode == 0 and "left alone: the site holds a newer" in synced.stdout
        assert f"{WWW}: in sync" not in synced.stdout
        quiet = host_a.incapsula("sync", "--quiet", *config_a)
        assert quiet.returncode == 0 and quiet.stdout == quiet.stderr == ""
        assert imperva.uploads() == []

        # The status view: its own state on the older host, exit status 0 on both.
        row = rows(host_a)[f"{WWW} 101"]
        assert row["state"] == "newer on site" and f"serial {newest}" in row["detail"]
        assert "certbot install --cert-name" in row["detail"]
        assert rows(host_b)[f"{WWW} 101"]["state"] == "in sync"
        plain = host_a.status()
        assert plain.returncode == 0 and "NEWER ON SITE" in plain.stdout

        # A forced renewal on A: one upload (an explicit deployment), then B uploads nothing.
        imperva.clear()
        host_a.run("renew", "--force-renewal", "--no-random-sleep-on-renew")
        newest = serial_of(host_a)
        assert len(imperva.uploads()) == 1 and imperva.held(101)["serialNumber"] == newest
        for _ in range(2):
            host_b.run(*RENEW)
            host_a.run(*RENEW)
        assert len(imperva.uploads()) == 1 and imperva.held(101)["serialNumber"] == newest
        assert rows(host_b)[f"{WWW} 101"]["state"] == "newer on site"
        assert rows(host_a)[f"{WWW} 101"]["state"] == "in sync"

        # An older certificate put back by hand: repaired, ending on the newest, in at most two
        # uploads, whichever host looks first (here the one with the older certificate).
        old = make_chain([WWW, "example.test"])  # 90 days: older than pebble's certificates
        imperva.console_upload(101, old.fullchain_pem, old.key_pem)
        imperva.clear()
        for _ in range(2):
            host_b.run(*RENEW)
            host_a.run(*RENEW)
        assert 1 <= len(imperva.uploads()) <= 2
        assert imperva.held(101)["serialNumber"] == newest
        for host in (host_a, host_b):
            assert rows(host)[f"{WWW} 101"]["state"] in ("in sync", "newer on site")
    finally:
        assert_no_secret_leaked(host_b)


# ----- several processes on one config dir at once ----------------------------------------------

RACERS = 6


def test_processes_racing_on_one_config_dir_lose_no_record(certbot_runner, imperva, tmp_path):
    config = certbot_runner.config_dir
    config.mkdir(parents=True)
    write_credentials(config / "incapsula.ini", imperva.api_id, imperva._api_key)
    lineages: List[Dict[str, str]] = []
    for i in range(RACERS):
        name = f"n{i}.race.test"
        imperva.add_site(Site(201 + i, name))
        lineages.append(write_lineage(tmp_path / "files" / name, make_chain([name])))
    options = ["--config-dir", str(config), "--api-url", imperva.url, "--edge-wait", "0"]
    command = certbot_runner.executable("certbot-incapsula")

    def deploy(i: int) -> List[str]:
        return [command, "deploy", "--cert-name", f"n{i}.race.test", "--fullchain",
                lineages[i]["fullchain"], "--key", lineages[i]["privkey"], *options]

    # Every lineage deployed once, so that `sync` knows them all.
    for i in range(RACERS):
        first = certbot_runner.program(deploy(i))
        assert first.returncode == 0, first.stdout + first.stderr

    state = config / "incapsula" / "state.json"
    samples = {"read": 0}
    damaged: List[str] = []
    stop = threading.Event()

    def sample() -> None:  # the file, read as any reader would, at every moment
        while not stop.is_set():
            time.sleep(0.002)  # the processes need the CPU more than every microsecond's sample
            try:
                text = state.read_text()
            except FileNotFoundError:
                continue
            try:
                json.loads(text)
            except ValueError as exc:
                damaged.append(f"{exc}: {text[-80:]!r}")
            samples["read"] += 1

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        for round_ in range(3):
            # Some sites drift (an older certificate by hand), so the syncs have repairs to make.
            for i in (round_ % RACERS, (round_ + 3) % RACERS):
                old = make_chain([f"n{i}.race.test"], days=30)
                imperva.console_upload(201 + i, old.fullchain_pem, old.key_pem)
            argvs = [deploy(i) for i in range(RACERS)]
            argvs += [[command, "sync", "--config-dir", str(config)]] * 2
            procs = [subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True,
                                      env=certbot_runner.environment()) for argv in argvs]
            for argv, proc in zip(argvs, procs):
                out, err = proc.communicate(timeout=300)
                certbot_runner.outputs.append(out + err)  # the secrets scan reads them too
                assert proc.returncode == 0, f"{argv[1]}: {out}{err}"
                assert "Traceback" not in err and "not recorded" not in err, err
    finally:
        stop.set()
        sampler.join()
    assert damaged == [] and samples["read"] > 0

    # Every upload the double took from the plugin is in the records, once.
    document = json.loads(state.read_text())
    recorded = collections.Counter(
        (entry["site_id"], entry["input_hash"])
        for lineage in document["lineages"].values() for entry in lineage["history"]
        if entry["outcome"] == "ok")
    uploaded = collections.Counter(
        (int(call.form["site_id"]), call.form["input_hash"])
        for call in imperva.uploads() if "input_hash" in call.form)  # not the console's
    assert recorded == uploaded
    assert sum(uploaded.values()) >= RACERS * 4  # the first deploys, then 3 rounds of 6
    for i in range(RACERS):
        entries = document["lineages"][f"n{i}.race.test"]["history"]
        assert len(entries) >= 4, f"n{i}.race.test kept {len(entries)} of its uploads"
    assert Path(str(state) + ".lock").exists()
