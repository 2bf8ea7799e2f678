"""Issue 12 end to end: real certbot and pebble validating through the Imperva edge double
(CA -> edge -> origin webroot), the plugin's pre-flight before the CA is asked, its edge check
after each upload, and status/sync looking at the edge. Needs root for the edge's ports 80 and
443 (skipped otherwise, a failure under CI); the unreachable edge needs no root."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import List

import pytest
from acme_env import Certbot, Pebble
from certmaker import make_chain
from imperva_edge import ImpervaEdge
from imperva_server import ImpervaServer

WWW = 101
NAMES = ["-d", "www.example.test", "-d", "example.test"]
CA = "LetsEncrypt-Pebble-VA"  # the User-Agent of pebble's validation requests
PROBE = "certbot-incapsula-preflight"  # the pre-flight's User-Agent (edge.USER_AGENT)
FIX_WAF = "add a WAF/bot-protection exception for /.well-known/acme-challenge/ on site 101"


def edge_args(imperva: ImpervaServer, credentials: Path, wait: int = 3) -> List[str]:
    """The installer options with the pre-flight on (the default) and a short edge wait."""
    return ["-i", "incapsula", "--incapsula-credentials", str(credentials),
            "--incapsula-api-url", imperva.url, "--incapsula-allow-staging",
            "--incapsula-edge-wait", str(wait)]


def run(runner: Certbot, pebble: Pebble, args: List[str], *extra: str, webroot: str = "",
        check: bool = True) -> subprocess.CompletedProcess[str]:
    return runner.run("run", "-a", "webroot", "-w", webroot or pebble.webroot, *args, *NAMES, *extra,
                      check=check)


def pebble_log_size(pebble: Pebble) -> int:
    return pebble.log_path("pebble").stat().st_size


def pebble_log_since(pebble: Pebble, offset: int) -> str:
    with open(pebble.log_path("pebble"), "rb") as log:
        log.seek(offset)
        return log.read().decode(errors="replace")


def files_under(root: str) -> List[str]:
    return sorted(str(p) for p in Path(root).rglob("*") if p.is_file())


def tool(runner: Certbot, *args: str) -> subprocess.CompletedProcess[str]:
    """The certbot-incapsula command on the runner's config dir."""
    return runner.incapsula(*args, "--config-dir", str(runner.config_dir))


def assert_stopped_before_the_ca(result: subprocess.CompletedProcess[str], pebble: Pebble, log_offset: int,
                                 edge: ImpervaEdge, *phrases: str) -> None:
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "Imperva pre-flight: the CA would not get the challenge file through Imperva's edge" in output
    for phrase in phrases:
        assert phrase in output, output
    assert "Traceback" not in output
    assert edge.requests_for(user_agent=CA) == []  # the CA never asked the edge
    assert "POST /order-plz" not in pebble_log_since(pebble, log_offset)  # nor was an order made
    assert files_under(pebble.webroot) == []  # the probe is gone


# ----- the pre-flight ------------------------------------------------------------------------------


def test_preflight_stops_run_before_the_ca_then_the_same_command_succeeds(
        edge_certbot_runner, edge_pebble, imperva_edge, imperva, credentials, tmp_path):
    args = edge_args(imperva, credentials)
    address = imperva_edge.address
    cases = [
        ("block", f"Imperva's edge {address} blocked the request (HTTP 403, Incapsula incident ID: "),
        ("jschallenge", "answered with a JavaScript challenge (HTTP 200) that the CA cannot pass"),
        ("cached", "(a cached or stale answer): exclude /.well-known/acme-challenge/ from caching on "
                   "site 101"),
    ]
    for rule, phrase in cases:
        imperva_edge.set_rule(WWW, rule)
        offset = pebble_log_size(edge_pebble)
        result = run(edge_certbot_runner, edge_pebble, args, check=False)
        assert_stopped_before_the_ca(result, edge_pebble, offset, imperva_edge, phrase)
        lines = [line for line in (result.stdout + result.stderr).splitlines() if phrase in line]
        assert {line.split(":")[0].strip() for line in lines} == {"www.example.test", "example.test"}
        if rule != "cached":
            assert all(FIX_WAF in line for line in lines)
    block = [r for r in imperva_edge.requests_for(user_agent=PROBE) if r.answer == "block"]
    # The incident ID shown is one the edge gave (each of a name's three fetches gets its own).
    assert block and any(r.incident_id in edge_certbot_runner.outputs[0] for r in block)

    imperva_edge.set_rule(WWW, None)
    elsewhere = tmp_path / "not-the-webroot"
    elsewhere.mkdir()
    offset = pebble_log_size(edge_pebble)
    result = run(edge_certbot_runner, edge_pebble, args, webroot=str(elsewhere), check=False)
    assert_stopped_before_the_ca(result, edge_pebble, offset, imperva_edge,
                                 f"www.example.test: the origin answered 404 through Imperva's edge "
                                 f"{address}: the webroot -w {elsewhere} is not where the origin serves "
                                 "www.example.test from")
    assert files_under(str(elsewhere)) == [] and list(elsewhere.iterdir()) == []
    assert not edge_certbot_runner.live("www.example.test").exists()

    # The rule lifted, the webroot right: the same command passes the pre-flight, then the CA.
    imperva_edge.clear()
    result = run(edge_certbot_runner, edge_pebble, args)
    output = result.stdout + result.stderr
    assert ("Imperva pre-flight: the challenge path reaches the webroot through Imperva's edge for "
            "www.example.test, example.test") in output
    assert {r.host for r in imperva_edge.requests_for(user_agent=CA)} == {"www.example.test", "example.test"}
    assert len(imperva.uploads(WWW)) == 1
    # The edge check, immediate: the edge serves the upload at once.
    assert f"Imperva site 101 (www.example.test): Imperva's edge {address} serves it to ECC clients " \
           "(after 0 s)" in output
    assert files_under(edge_pebble.webroot) == []


def test_preflight_timeout(edge_certbot_runner, edge_pebble, imperva_edge, imperva, credentials):
    args = edge_args(imperva, credentials)
    imperva_edge.set_rule(WWW, "timeout")
    imperva_edge.hold_seconds = 15  # longer than the probe waits (10 s, about what a CA waits)
    offset = pebble_log_size(edge_pebble)
    result = run(edge_certbot_runner, edge_pebble, args, check=False)
    assert_stopped_before_the_ca(
        result, edge_pebble, offset, imperva_edge,
        f"www.example.test: no answer from Imperva's edge {imperva_edge.address} within 10 s after it "
        "accepted the connection (a CA waits about as long): check that site 101 lets "
        "/.well-known/acme-challenge/ through to an origin that is up")

    imperva_edge.set_rule(WWW, None)
    run(edge_certbot_runner, edge_pebble, args)
    assert len(imperva.uploads(WWW)) == 1


def test_renew_due_with_a_failed_preflight_fails_that_lineage_and_keeps_the_installer(
        edge_certbot_runner, edge_pebble, imperva_edge, imperva, credentials):
    run(edge_certbot_runner, edge_pebble, [*edge_args(imperva, credentials), "--incapsula-preflight", "on"])
    conf = edge_certbot_runner.renewal_conf("www.example.test")
    assert "incapsula_preflight = on" in conf and "incapsula_edge_wait = 3" in conf

    imperva_edge.clear()
    imperva_edge.set_rule(WWW, "block")
    offset = pebble_log_size(edge_pebble)
    result = edge_certbot_runner.run("renew", "--no-random-sleep-on-renew", "--force-renewal", check=False)
    assert_stopped_before_the_ca(result, edge_pebble, offset, imperva_edge, FIX_WAF)
    assert "1 renew failure(s)" in result.stdout + result.stderr
    assert edge_certbot_runner.renewal_conf("www.example.test") == conf  # the installer stays
    assert len(imperva.uploads(WWW)) == 1

    # A dry run is checked too: it would spend a failed validation at the staging CA.
    offset = pebble_log_size(edge_pebble)
    result = edge_certbot_runner.run("renew", "--no-random-sleep-on-renew", "--dry-run", check=False)
    assert_stopped_before_the_ca(result, edge_pebble, offset, imperva_edge, FIX_WAF)


def test_preflight_off_and_edge_wait_0_do_no_network_work(edge_certbot_runner, edge_pebble, imperva_edge,
                                                          imperva, credentials):
    args = [*edge_args(imperva, credentials, wait=0), "--incapsula-preflight", "off"]
    run(edge_certbot_runner, edge_pebble, args)
    assert len(imperva.uploads(WWW)) == 1
    assert imperva_edge.requests_for(user_agent=PROBE) == []
    assert all(r.user_agent.startswith(CA) for r in imperva_edge.requests)  # the CA's alone
    assert imperva_edge.handshakes == []
    assert tool(edge_certbot_runner, "status").returncode == 0  # wait 0: status skips the edge too
    assert imperva_edge.handshakes == []


# ----- issues 17 and 20: stop only on proof, several origin servers, one deadline ----------------


def test_two_origin_servers_webroot_on_one_stops_before_the_ca_then_a_shared_directory_passes(
        edge_certbot_runner, edge_pebble, imperva_edge, imperva, credentials, tmp_path):
    from imperva_edge import Origin

    args = edge_args(imperva, credentials)
    other = tmp_path / "second-origin"
    other.mkdir()
    with Origin(other) as second:
        imperva_edge.set_origins(WWW, [edge_pebble.origin_url, second.url])
        offset = pebble_log_size(edge_pebble)
        result = run(edge_certbot_runner, edge_pebble, args, check=False)
    assert_stopped_before_the_ca(
        result, edge_pebble, offset, imperva_edge,
        f"www.example.test, example.test: 3 of 6 answers through Imperva's edge {imperva_edge.address} "
        "carried the probe file and 3 were a 404: site 101 has several origin servers and this host's "
        f"webroot -w {edge_pebble.webroot} is on only one of them. Serve /.well-known/acme-challenge/ "
        "from one directory shared by every origin server, or have the others proxy or redirect it to "
        "this host, or make them standby servers, or use dns-01 (see docs/several-servers.md)")
    assert files_under(str(other)) == [] and list(other.iterdir()) == []  # nothing left on either
    assert not edge_certbot_runner.live("www.example.test").exists()

    # Both origin servers serve one shared directory: the same command passes, then the CA.
    with Origin(edge_pebble.webroot) as shared:
        pool = [edge_pebble.origin_url, shared.url]
        imperva_edge.set_origins(WWW, pool)
        imperva_edge.clear()
        result = run(edge_certbot_runner, edge_pebble, args)
    assert ("Imperva pre-flight: the challenge path reaches the webroot through Imperva's edge for "
            "www.example.test, example.test") in result.stdout + result.stderr
    assert {r.origin for r in imperva_edge.requests_for(user_agent=PROBE)} == set(pool)
    assert {r.host for r in imperva_edge.requests_for(user_agent=CA)} == {"www.example.test", "example.test"}
    assert len(imperva.uploads(WWW)) == 1
    assert files_under(edge_pebble.webroot) == []


def not_checked_line(imperva: ImpervaServer, why: str) -> str:
    return (f"Imperva pre-flight: site 101: not checked for www.example.test, example.test: {why}; the "
            "CA, which reaches Imperva from the internet, will decide")


@pytest.mark.parametrize("edge", ["refuses", "does not resolve"])
def test_an_edge_this_host_cannot_reach_warns_and_the_ca_decides(certbot_runner, pebble, imperva,
                                                                 credentials, edge):
    """No edge double: the site's DNS names an address where nothing listens, or a CNAME target
    that does not resolve (no root needed); pebble's VA reaches the webroot itself."""
    if edge == "refuses":
        why = f"Imperva's edge {imperva.idle_address} refused the connection on port 80"
    else:
        imperva.dns_target = "abcd.x.incapdns.invalid"  # .invalid never resolves
        why = "Imperva's edge abcd.x.incapdns.invalid (from the site's DNS entries) does not resolve"
    args = edge_args(imperva, credentials, wait=0)
    for command in (["run", "-a", "webroot", "-w", pebble.webroot, *args, *NAMES],
                    ["renew", "--no-random-sleep-on-renew", "--force-renewal"]):
        offset = pebble_log_size(pebble)
        result = certbot_runner.run(*command)
        output = result.stdout + result.stderr
        assert not_checked_line(imperva, why) in output, output
        assert output.count("Imperva pre-flight: site 101: not checked") == 1  # one line per site
        assert "POST /order-plz" in pebble_log_since(pebble, offset)  # the CA was asked
    assert len(imperva.uploads(WWW)) == 2
    assert files_under(pebble.webroot) == []


def test_preflight_of_a_dripping_edge_ends_within_its_timeout(origin_edge, imperva, credentials, tmp_path):
    """An edge that sends its answer a byte every half second (the whole answer would take minutes):
    `check` ends within the pre-flight's 10 s plus a second or two, the bound issue 20 asks for."""
    import time

    edge, webroot = origin_edge
    edge.set_rule(WWW, "drip")
    edge.drip_interval = 0.5
    started = time.monotonic()
    result = command("check", "--credentials", str(credentials), "--api-url", imperva.url,
                     "--config-dir", str(tmp_path / "config"), "-w", str(webroot), "-d", "www.example.test")
    elapsed = time.monotonic() - started
    assert elapsed < 10 + 2, f"{elapsed:.1f} s"
    assert result.returncode == 1, result.stdout + result.stderr
    assert re.search(rf"^FAILED  www\.example\.test: Imperva's edge {re.escape(edge.address)} sent HTTP 200 "
                     r"but not the whole answer within 10 s after it accepted the connection \(a CA waits "
                     r"about as long\)", result.stdout, re.M), result.stdout
    assert list(webroot.iterdir()) == []


def test_not_due_run_with_a_block_rule_keeps_and_installs(edge_certbot_runner, edge_pebble, imperva_edge,
                                                          imperva, credentials):
    args = edge_args(imperva, credentials)
    run(edge_certbot_runner, edge_pebble, args)
    imperva_edge.clear()
    imperva_edge.set_rule(WWW, "block")

    offset = pebble_log_size(edge_pebble)
    result = run(edge_certbot_runner, edge_pebble, args)  # nothing due: no order, so no pre-flight
    assert result.returncode == 0
    assert "Imperva pre-flight" not in result.stdout + result.stderr
    assert imperva_edge.requests_for(user_agent=PROBE) == []
    assert "POST /order-plz" not in pebble_log_since(pebble=edge_pebble, offset=offset)

    # --cert-name and no -d: the names certbot orders (the lineage's) are probed.
    offset = pebble_log_size(edge_pebble)
    result = edge_certbot_runner.run("run", "-a", "webroot", "-w", edge_pebble.webroot, *args,
                                     "--cert-name", "www.example.test", "--force-renewal", check=False)
    assert_stopped_before_the_ca(result, edge_pebble, offset, imperva_edge, FIX_WAF)
    lines = [line for line in (result.stdout + result.stderr).splitlines() if FIX_WAF in line]
    assert {line.split(":")[0].strip() for line in lines} == {"www.example.test", "example.test"}


def test_check_command_says_not_checked_with_a_status_of_its_own(imperva, credentials, tmp_path):
    """No edge double (no root): the site's DNS names an address where nothing listens."""
    webroot = tmp_path / "webroot"
    webroot.mkdir()
    result = command("check", "--credentials", str(credentials), "--api-url", imperva.url,
                     "--config-dir", str(tmp_path / "config"), "-w", str(webroot),
                     "-d", "www.example.test,example.test")
    assert result.returncode == 3, result.stdout + result.stderr
    assert result.stdout == (f"NOT CHECKED  site 101: not checked for www.example.test, example.test: "
                             f"Imperva's edge {imperva.idle_address} refused the connection on port 80; "
                             "the CA, which reaches Imperva from the internet, will decide\n")
    assert "this host could not reach Imperva's edge for some names (see NOT CHECKED)" in result.stderr
    assert list(webroot.iterdir()) == []


# ----- the edge check after the upload, status and sync ---------------------------------------------


def test_edge_check_waits_for_propagation(edge_certbot_runner, edge_pebble, imperva_edge, imperva,
                                          credentials):
    imperva_edge.set_propagation_delay(1)
    result = run(edge_certbot_runner, edge_pebble, edge_args(imperva, credentials, wait=5))
    edge = re.escape(imperva_edge.address)
    assert re.search(rf"Imperva site 101 \(www\.example\.test\): Imperva's edge {edge} serves it to ECC "
                     r"clients \(after [12] s\)", result.stdout), result.stdout
    served = [h for h in imperva_edge.handshakes if h.sni == "www.example.test"]
    assert not served[0].custom and served[-1].custom  # Imperva's own certificate, then the upload


def test_edge_serving_an_old_certificate_warns_then_status_and_sync_say_drifted(
        edge_certbot_runner, edge_pebble, imperva_edge, imperva, credentials):
    args = edge_args(imperva, credentials, wait=2)
    run(edge_certbot_runner, edge_pebble, args)
    first = imperva.held(WWW)["serialNumber"]

    imperva_edge.set_propagation_delay(300)  # the renewal does not reach the edge in time
    result = edge_certbot_runner.run("renew", "--no-random-sleep-on-renew", "--force-renewal")
    output = result.stdout + result.stderr
    stale = re.search(r"Imperva site 101 \(www\.example\.test\): Imperva's edge \S+ still serves serial "
                      r"(\w+) \(issued by Pebble Intermediate CA \w+\) to ECC clients after 2 s \(Imperva "
                      r"may still be propagating\)", output)
    assert stale and stale.group(1) == first.replace(":", "").upper().lstrip("0"), output
    assert len(imperva.uploads(WWW)) == 2  # a warning, not a failure: exit 0

    before = len(imperva_edge.handshakes)
    status = tool(edge_certbot_runner, "status")
    assert status.returncode == 1, status.stdout + status.stderr
    assert re.search(r"site 101 \(www\.example\.test\)  DRIFTED  Imperva's API shows this certificate, but "
                     rf"Imperva's edge \S+ serves serial {stale.group(1)} \(issued by", status.stdout)
    assert len(imperva_edge.handshakes) == before + 1  # one handshake, no wait

    imperva.clear()
    sync = tool(edge_certbot_runner, "sync")
    assert sync.returncode == 1, sync.stdout + sync.stderr
    assert "Imperva site 101 (www.example.test): drifted at the edge" in sync.stdout
    assert imperva.uploads() == []  # Imperva holds it already: uploading again would change nothing

    before = len(imperva_edge.handshakes)
    assert tool(edge_certbot_runner, "status", "--edge-wait", "0").returncode == 0  # the API alone
    assert len(imperva_edge.handshakes) == before


def test_dual_ecdsa_and_rsa_each_checked_by_its_own_handshake(edge_certbot_runner, edge_pebble,
                                                              imperva_edge, imperva, credentials):
    args = edge_args(imperva, credentials)
    run(edge_certbot_runner, edge_pebble, args, "--cert-name", "www-ec", "--key-type", "ecdsa")
    imperva_edge.clear()
    result = run(edge_certbot_runner, edge_pebble, args, "--cert-name", "www-rsa", "--key-type", "rsa")
    label = f"Imperva site 101 (www.example.test): Imperva's edge {imperva_edge.address}"
    assert f"{label} serves it to RSA clients (after 0 s)" in result.stdout
    assert f"{label} serves www-ec's certificate to ECC clients" in result.stdout
    offered = {h.offered for h in imperva_edge.handshakes if h.sni == "www.example.test"}
    assert offered == {("ECC",), ("RSA",)}
    assert {(h.key_type, h.custom) for h in imperva_edge.handshakes} == {("ECC", True), ("RSA", True)}

    # The API shows one slot, the latest upload's (RSA): the ECDSA slot is settled at the edge.
    status = tool(edge_certbot_runner, "status")
    assert status.returncode == 0, status.stdout + status.stderr
    assert re.search(r"^www-ec  site 101 \(www\.example\.test\)  IN SYNC  .*; settled at the edge: "
                     r"Imperva's edge \S+ serves it to ECC clients$", status.stdout, re.M), status.stdout
    assert re.search(r"^www-rsa  site 101 \(www\.example\.test\)  IN SYNC  serial \w+, expires .*; the edge "
                     "serves it$", status.stdout, re.M), status.stdout
    imperva.clear()
    sync = tool(edge_certbot_runner, "sync")
    assert (sync.returncode, sync.stdout) == (0, "www-ec: in sync\nwww-rsa: in sync\n"), sync.stderr
    assert imperva.uploads() == []


def test_edge_not_reachable_is_a_warning(certbot_runner, pebble, imperva, credentials):
    """No edge runs: the site's DNS names an address where nothing listens (no root needed)."""
    args = [*edge_args(imperva, credentials, wait=3), "--incapsula-preflight", "off"]
    result = certbot_runner.run("run", "-a", "webroot", "-w", pebble.webroot, *args, *NAMES)
    assert (f"Imperva site 101 (www.example.test): edge not reachable for ECC clients: Imperva's edge "
            f"{imperva.idle_address} refused the connection on port 443") in result.stdout + result.stderr
    assert len(imperva.uploads(WWW)) == 1

    status = certbot_runner.status()
    assert status.returncode == 0, status.stdout + status.stderr
    assert "IN SYNC  serial" in status.stdout and "edge not reachable: Imperva's edge" in status.stdout


# ----- the command's doors: check and deploy ------------------------------------------------------




def command(*args: str) -> subprocess.CompletedProcess[str]:
    exe = str(Path(sys.executable).parent / "certbot-incapsula")
    env = dict(os.environ, NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost")
    return subprocess.run([exe, *args], stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          env=env, timeout=120, check=False)


def test_check_command(origin_edge, imperva, credentials, tmp_path):
    edge, webroot = origin_edge
    base = ["check", "--credentials", str(credentials), "--api-url", imperva.url,
            "--config-dir", str(tmp_path / "config")]
    edge.set_rule(WWW, "block")
    result = command(*base, "-w", str(webroot), "-d", "www.example.test",
                     "-d", "shop.example.test,nowhere.test")
    assert result.returncode == 1, result.stdout + result.stderr
    assert re.search(r"^FAILED  www\.example\.test: Imperva's edge \S+ blocked the request \(HTTP 403, "
                     rf"Incapsula incident ID: [\d-]+\): {FIX_WAF}$", result.stdout, re.M), result.stdout
    assert re.search(r"^OK  shop\.example\.test: the challenge path reaches the webroot", result.stdout, re.M)
    assert "not probed, as no Imperva site serves them: nowhere.test" in result.stdout
    assert "1 of 2 probed name(s) would fail http-01 through Imperva" in result.stderr
    assert list(webroot.iterdir()) == []

    edge.set_rule(WWW, None)
    assert command(*base, "-d", "www.example.test", "-w", str(webroot)).returncode == 0
    assert command(*base, "-d", "www.example.test").returncode == 2  # no webroot: a usage error


def test_deploy_command_edge_wait(origin_edge, imperva, credentials, tmp_path):
    edge, _ = origin_edge
    chain = make_chain(["www.example.test", "example.test"])
    fullchain, key = tmp_path / "fullchain.pem", tmp_path / "privkey.pem"
    fullchain.write_bytes(chain.fullchain_pem)
    key.write_bytes(chain.key_pem)
    key.chmod(0o600)
    result = command("deploy", "--fullchain", str(fullchain), "--key", str(key), "--credentials",
                     str(credentials), "--api-url", imperva.url, "--allow-staging", "--edge-wait", "3",
                     "--config-dir", str(tmp_path / "config"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"Imperva's edge {edge.address} serves it to ECC clients (after 0 s)" in result.stdout
    stored = (tmp_path / "config" / "incapsula" / "lineages" / "www.example.test.conf").read_text()
    assert "incapsula_edge_wait = 3" in stored


# ----- issue 20: every wait ends when it says; the records are only a cache ---------------------


def hand_made(tmp_path: Path, names: List[str]):
    chain = make_chain(names)
    fullchain, key = tmp_path / "fullchain.pem", tmp_path / "privkey.pem"
    fullchain.write_bytes(chain.fullchain_pem)
    key.write_bytes(chain.key_pem)
    key.chmod(0o600)
    return chain, fullchain, key


def test_deploy_to_25_sites_whose_edge_never_switches_ends_within_the_wait(
        origin_edge, imperva, credentials, tmp_path):
    from imperva_server import Site

    edge, _ = origin_edge
    names = [f"s{i}.fleet.test" for i in range(1, 26)]
    for i, name in enumerate(names, 1):
        imperva.add_site(Site(2000 + i, name))
    edge.set_propagation_delay(3600)  # no upload from now on reaches the edge
    _, fullchain, key = hand_made(tmp_path, names)
    result = command("deploy", "--fullchain", str(fullchain), "--key", str(key), "--credentials",
                     str(credentials), "--api-url", imperva.url, "--allow-staging", "--edge-wait", "3",
                     "--config-dir", str(tmp_path / "config"))
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert len(imperva.uploads()) == 25
    stale = re.findall(rf"Imperva site 20\d\d \(s\d+\.fleet\.test\): Imperva's edge {edge.address} still "
                       r"serves serial [0-9A-F]+ \(issued by Imperva generated test ECC\) to ECC clients "
                       r"after 3 s \(Imperva may still be propagating\)", output)
    assert len(stale) == 25, output
    # The check's handshakes, from the first to the last, span the wait (3 s), not 3 waits.
    times = [h.time for h in edge.handshakes]
    assert len(times) >= 50 and 3 <= max(times) - min(times) < 5, max(times) - min(times)


def test_deploy_with_a_damaged_fingerprint_in_the_records_succeeds_with_one_line(
        origin_edge, imperva, credentials, tmp_path):
    """The records say another lineage put an RSA certificate on site 101, with a fingerprint of
    3 bytes: that record is dropped with one line, the upload and the edge check go on."""
    edge, _ = origin_edge
    config = tmp_path / "config"
    (config / "incapsula").mkdir(parents=True)
    (config / "incapsula" / "state.json").write_text(json.dumps({"version": 1, "lineages": {
        "other": {"sites": None, "pinned": None, "history": [{
            "site_id": WWW, "domain": "www.example.test", "serial": "AB", "fingerprint": "AB:CD:EF",
            "input_hash": "sha256:other", "auth_type": "RSA", "archive_version": None,
            "fullchain": None, "privkey": None, "outcome": "ok", "action": "uploaded",
            "error": None, "flags": [], "time": "2026-01-01T00:00:00Z"}]}}}))
    chain, fullchain, key = hand_made(tmp_path, ["www.example.test", "example.test"])
    result = command("deploy", "--fullchain", str(fullchain), "--key", str(key), "--credentials",
                     str(credentials), "--api-url", imperva.url, "--allow-staging", "--edge-wait", "3",
                     "--config-dir", str(config))
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "Traceback" not in output
    assert imperva.held(WWW)["serialNumber"] == format(chain.serial, "X")
    damaged = [line for line in output.splitlines() if "damaged part(s)" in line]
    assert len(damaged) == 1 and str(config / "incapsula" / "state.json") in damaged[0]
    assert f"Imperva's edge {edge.address} serves it to ECC clients (after 0 s)" in output
