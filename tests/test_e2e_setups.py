"""End to end, issue 9: the setups Imperva customers have. A wildcard certificate across sites,
RSA and ECDSA lineages side by side, two lineages of one key type on one site, and several
Imperva accounts (and sub-accounts) on one host. Real certbot, pebble and the Imperva double."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from certmaker import make_chain, write_lineage
from conftest import NO_EDGE_ARGS, write_credentials
from cryptography import x509
from imperva_server import ImpervaServer, Site

RENEW = ["renew", "--no-random-sleep-on-renew"]
NAMES = ["-d", "www.example.test", "-d", "example.test"]
WILD = ["-d", "*.example.test", "-d", "example.test"]


def endpoints(imperva):
    return [call.path.rsplit("/v1/", 1)[1] for call in imperva.requests]


def uploaded_sites(imperva):
    return sorted(int(u.form["site_id"]) for u in imperva.uploads())


def upload_behind_the_back(imperva, site_id, names, key_type="ecdsa", expired=False):
    """Someone else puts a certificate on the site (Imperva's console, another tool)."""
    chain = make_chain(names, key_type, expired=expired)
    imperva.console_upload(site_id, chain.fullchain_pem, chain.key_pem,
                           "RSA" if key_type == "rsa" else "ECC")
    return format(chain.serial, "X")


def remove_slot(imperva, site_id, auth_type):
    answer = imperva.console("sites/customCertificate/remove",
                             {"site_id": str(site_id), "auth_type": auth_type})
    assert answer["res"] == 0


def live_serial(certbot_runner, name):
    pem = (certbot_runner.live(name) / "cert.pem").read_bytes()
    return format(x509.load_pem_x509_certificate(pem).serial_number, "X")


def dns_hooks(pebble, directory: Path) -> list[str]:
    """certbot's manual hooks for dns-01: the TXT record goes into pebble's DNS stub (so pebble
    issues a real wildcard certificate, which http-01 cannot), and out again after validation
    (the stub lives for the whole session; left-over records would overflow its UDP answers)."""
    hook = directory / "dns-hook.py"
    hook.write_text(f"""#!{sys.executable}
import json, os, sys, urllib.request
host = "_acme-challenge." + os.environ["CERTBOT_DOMAIN"] + "."
clear = sys.argv[1:] == ["clear"]
body = {{"host": host}} if clear else {{"host": host, "value": os.environ["CERTBOT_VALIDATION"]}}
opener = urllib.request.build_opener(urllib.request.ProxyHandler({{}}))
url = "http://127.0.0.1:{pebble.challtestsrv_port}/" + ("clear-txt" if clear else "set-txt")
request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST")
opener.open(request, timeout=5).read()
""")
    hook.chmod(0o755)
    return ["-a", "manual", "--preferred-challenges", "dns", "--manual-auth-hook", str(hook),
            "--manual-cleanup-hook", f"{hook} clear"]


def rows(result):
    return {(row["lineage"], row["site"]): row for row in json.loads(result.stdout)}


# ----- wildcards ----------------------------------------------------------------------------------

def test_a_wildcard_lineage_reaches_every_covered_site_leaves_a_foreign_one_and_finds_new_ones(
        certbot_runner, pebble, imperva, plugin_args, tmp_path):
    # 101 www.example.test (+ example.test) and 102 shop.example.test come with the fixture.
    imperva.add_site(Site(103, "blog.example.test"))  # someone else's valid certificate
    imperva.add_site(Site(104, "a.b.example.test"))  # deeper than *.example.test covers
    imperva.add_site(Site(105, "www.example.org"))
    foreign = upload_behind_the_back(imperva, 103, ["blog.example.test"])
    imperva.clear()
    run = certbot_runner.run("run", *dns_hooks(pebble, tmp_path), *plugin_args, *WILD,
                             "--cert-name", "wild")
    assert uploaded_sites(imperva) == [101, 102]
    assert "Imperva site 101 (www.example.test) chosen for *.example.test, example.test" in run.stdout
    assert "Imperva site 102 (shop.example.test) chosen for *.example.test" in run.stdout
    assert "Imperva site 102 (shop.example.test): uploaded" in run.stdout
    assert imperva.held(103)["serialNumber"] == foreign
    assert "Imperva site 103 (blog.example.test): left alone (see the warning)" in run.stdout
    said = " ".join(run.stderr.split())
    assert ("Imperva: site 103 (blog.example.test) was left alone: found only through a wildcard, "
            f"it holds a valid certificate this host did not upload (ECDSA key, serial {foreign}, "
            "expires") in said
    assert ("To replace it, upload once to it by id: certbot install --cert-name wild "
            "-i incapsula --incapsula-site-id 103") in said
    assert imperva.held(104) is None and imperva.held(105) is None

    # A site added under the wildcard later is served by the next plain renew (nothing due).
    imperva.add_site(Site(106, "new.example.test"))
    imperva.clear()
    renew = certbot_runner.run(*RENEW)
    assert "Certificate not yet due for renewal" in renew.stdout
    assert uploaded_sites(imperva) == [106]
    assert "Imperva site 106 (new.example.test): repaired (the site holds no custom certificate)" \
        in renew.stdout
    assert renew.stderr.count("was left alone") == 1  # named once per run
    assert imperva.held(103)["serialNumber"] == foreign

    view = certbot_runner.status("--json")
    assert view.returncode == 0, view.stdout + view.stderr
    states = {site: row["state"] for (_, site), row in rows(view).items()}
    assert states == {101: "in sync", 102: "in sync", 103: "left alone", 106: "in sync"}

    # The wildcard lineage renews like any other: every covered site but the foreign one, and
    # one added just before the renewal too.
    imperva.add_site(Site(107, "late.example.test"))
    imperva.clear()
    certbot_runner.run("renew", "--force-renewal", "--no-random-sleep-on-renew")
    assert uploaded_sites(imperva) == [101, 102, 106, 107]
    serial = live_serial(certbot_runner, "wild")
    assert all(imperva.held(s)["serialNumber"] == serial for s in (101, 102, 106, 107))
    imperva.clear()
    certbot_runner.run(*RENEW)
    assert imperva.uploads() == []

    # The redirect goes to the sites the certificate went to, not to the one left alone; once
    # per site although certbot asks once per name.
    imperva.clear()
    certbot_runner.run("enhance", "--redirect", "--cert-name", "wild", "-i", "incapsula")
    redirected = sorted(i for i, site in imperva.sites.items() if site.redirect_http_to_https)
    assert redirected == [101, 102, 106, 107]
    assert len(imperva.calls("performance/advanced")) == 4

    # Including the site left alone, as the warning says: once, by id; it is the lineage's then.
    imperva.clear()
    certbot_runner.run("install", "--cert-name", "wild", *plugin_args, "--incapsula-site-id", "103")
    assert uploaded_sites(imperva) == [103] and imperva.held(103)["serialNumber"] == serial
    imperva.clear()
    after = certbot_runner.run(*RENEW)
    assert imperva.uploads() == [] and "left alone" not in after.stderr
    assert "incapsula_site_id" not in certbot_runner.renewal_conf("wild")  # discovery goes on


def test_certbot_install_of_wildcard_files_many_sites_one_failing(
        certbot_runner, imperva, plugin_args, tmp_path):
    for n in range(1, 13):
        imperva.add_site(Site(200 + n, f"s{n}.wild.test"))
    imperva.add_site(Site(300, "wild.test"))  # named exactly: replaced even if foreign
    imperva.add_site(Site(301, "x.wild.test"))  # an expired foreign certificate: replaced
    imperva.add_site(Site(302, "a.b.wild.test"))  # deeper: not covered
    imperva.sites[205].ssl = False  # its upload fails; the others go on
    upload_behind_the_back(imperva, 300, ["wild.test"])
    upload_behind_the_back(imperva, 301, ["x.wild.test"], expired=True)
    files = write_lineage(tmp_path / "wild-files", make_chain(["*.wild.test", "wild.test"]))
    imperva.clear()
    result = certbot_runner.run("install", "--cert-path", files["cert"], "--key-path",
                                files["privkey"], "--fullchain-path", files["fullchain"],
                                "-d", "*.wild.test", "-d", "wild.test", *plugin_args, check=False)
    assert result.returncode != 0
    expected = [*(200 + n for n in range(1, 13) if n != 5), 300, 301]
    assert uploaded_sites(imperva) == expected  # each once; 205 failed, 302 is not covered
    assert imperva.held(302) is None and imperva.uploads(205) == []
    # Many sites: a count instead of a line each, then every site's outcome.
    assert "Imperva: 14 sites chosen: 13 for *.wild.test, 1 for wild.test" in result.stdout
    for site_id in expected:
        assert f"Imperva site {site_id} (" in result.stdout
    assert "Imperva: 1 of 14 site(s) failed. site 205:" in result.stderr
    assert "does not have SSL enabled" in result.stderr


# ----- RSA and ECDSA side by side -------------------------------------------------------------

def test_rsa_and_ecdsa_lineages_on_one_site(certbot_runner, pebble, imperva, plugin_args):
    webroot = ["run", "-a", "webroot", "-w", pebble.webroot, *plugin_args, *NAMES]
    certbot_runner.run(*webroot, "--cert-name", "dual-ec")
    certbot_runner.run(*webroot, "--cert-name", "dual-rsa", "--key-type", "rsa")
    ec, rsa = live_serial(certbot_runner, "dual-ec"), live_serial(certbot_runner, "dual-rsa")
    slots = imperva.held_slots(101)
    assert (slots["ECC"]["serialNumber"], slots["RSA"]["serialNumber"]) == (ec, rsa)
    assert imperva.held(101)["serialNumber"] == rsa  # Imperva shows the newest upload only

    imperva.clear()
    for _ in range(3):
        quiet = certbot_runner.run(*RENEW)
        assert "Imperva" not in quiet.stdout and "WARNING" not in quiet.stderr
    assert imperva.uploads() == []
    assert endpoints(imperva) == ["sites/list"] * 3  # the listing tells all: one call a run
    view = certbot_runner.status("--json")
    assert view.returncode == 0, view.stdout
    found = rows(view)
    assert found[("dual-rsa", 101)]["state"] == "in sync"
    assert found[("dual-ec", 101)]["state"] == "not verifiable"
    assert "shows only the site's RSA certificate" in found[("dual-ec", 101)]["detail"]

    # The ECDSA slot replaced behind the plugin's back: repaired, the RSA one untouched.
    rsa_slot = imperva.held_slots(101)["RSA"]
    upload_behind_the_back(imperva, 101, ["www.example.test", "example.test"])
    imperva.clear()
    repaired = certbot_runner.run(*RENEW)
    assert [(u.form["site_id"], u.form["auth_type"]) for u in imperva.uploads()] == [("101", "ECC")]
    assert "Imperva site 101 (www.example.test): repaired (the site holds another certificate)" \
        in repaired.stdout
    assert imperva.held_slots(101)["ECC"]["serialNumber"] == ec
    assert imperva.held_slots(101)["RSA"] == rsa_slot

    # The ECDSA slot removed: Imperva shows the older RSA upload, so the ECDSA one is gone.
    remove_slot(imperva, 101, "ECC")
    imperva.clear()
    restored = certbot_runner.run(*RENEW)
    assert [u.form["auth_type"] for u in imperva.uploads()] == ["ECC"]
    assert "repaired (the ECDSA certificate was removed)" in restored.stdout
    assert imperva.held_slots(101)["RSA"] == rsa_slot

    # Without authType in Imperva's answers, the records tell the key types: still quiet.
    imperva.omit_auth_type = True
    imperva.clear()
    certbot_runner.run(*RENEW)
    assert imperva.uploads() == []


def test_a_certificate_of_unknown_key_type_on_a_dual_site_is_not_verifiable(
        certbot_runner, pebble, imperva, plugin_args):
    imperva.omit_auth_type = True
    webroot = ["run", "-a", "webroot", "-w", pebble.webroot, *plugin_args, *NAMES]
    certbot_runner.run(*webroot, "--cert-name", "dual-ec")
    certbot_runner.run(*webroot, "--cert-name", "dual-rsa", "--key-type", "rsa")
    upload_behind_the_back(imperva, 101, ["www.example.test", "example.test"], "rsa")
    imperva.clear()
    result = certbot_runner.run(*RENEW)
    assert imperva.uploads() == []  # which slot it replaced is not said: no upload on a guess
    said = " ".join(result.stderr.split())
    assert "Not verifiable which, so nothing was uploaded" in said
    assert "certbot install --cert-name dual-rsa" in said
    view = certbot_runner.status("--json")
    assert view.returncode == 1  # something is known to be wrong
    found = rows(view)
    assert {row["state"] for row in found.values()} == {"not verifiable"}
    assert all(row["known_wrong"] for row in found.values())


# ----- two lineages of one key type on one site ---------------------------------------------

def test_two_ecdsa_lineages_claiming_one_site(certbot_runner, pebble, imperva, plugin_args):
    webroot = ["run", "-a", "webroot", "-w", pebble.webroot, *plugin_args]
    certbot_runner.run(*webroot, *NAMES)
    certbot_runner.run(*webroot, "--cert-name", "cov", "-d", "www.example.test")
    cov = live_serial(certbot_runner, "cov")
    assert imperva.held(101)["serialNumber"] == cov  # deployed last: the site is cov's

    imperva.clear()
    for _ in range(3):
        result = certbot_runner.run(*RENEW)
        said = " ".join(result.stderr.split())
        assert said.count("certificate of lineage cov") == 1  # once per run
        assert ("site 101 (www.example.test) holds the ECDSA certificate of lineage cov, "
                "deployed there last; www.example.test leaves it alone") in said
        assert "certbot install --cert-name www.example.test -i incapsula" in said
        assert "--incapsula-site-id" in said
    assert imperva.uploads() == []

    view = certbot_runner.status("--json")
    assert view.returncode == 0, view.stdout
    found = rows(view)
    assert found[("cov", 101)]["state"] == "in sync"
    assert found[("www.example.test", 101)]["state"] == "held by other lineage"
    assert "belongs to lineage cov" in found[("www.example.test", 101)]["detail"]
    plain = certbot_runner.status()
    assert "HELD BY OTHER LINEAGE" in plain.stdout

    moved = certbot_runner.run("install", "--cert-name", "www.example.test", *plugin_args)
    assert "its ECDSA certificate is now www.example.test's, no longer cov's" in moved.stdout
    assert imperva.held(101)["serialNumber"] == live_serial(certbot_runner, "www.example.test")
    imperva.clear()
    after = certbot_runner.run(*RENEW)
    assert imperva.uploads() == []
    assert "certificate of lineage www.example.test" in " ".join(after.stderr.split())


# ----- several accounts on one host -------------------------------------------------------------

@pytest.fixture
def parent_account():
    """A second Imperva account whose key is a parent's: its sub-accounts 51 and 52 hold sites."""
    with ImpervaServer(api_id="777", api_key="second-account-key-42", account_id=50,
                       sub_accounts=(51, 52)) as server:
        server.add_site(Site(301, "d.fleet.test", account_id=51))
        server.add_site(Site(302, "e.fleet.test", account_id=52))
        yield server


def test_two_accounts_each_lineage_through_its_own(certbot_runner, pebble, imperva, plugin_args,
                                                    parent_account, tmp_path):
    other = parent_account
    second = write_credentials(tmp_path / "second.ini", other.api_id, other._api_key)
    certbot_runner.run("run", "-a", "webroot", "-w", pebble.webroot, *plugin_args, *NAMES)
    certbot_runner.run("run", "-a", "webroot", "-w", pebble.webroot, "-i", "incapsula",
                       "--incapsula-credentials", str(second), "--incapsula-api-url", other.url,
                       "--incapsula-account-id", "51", "--incapsula-allow-staging", *NO_EDGE_ARGS,
                       "-d", "d.fleet.test")
    assert "incapsula_account_id = 51" in certbot_runner.renewal_conf("d.fleet.test")
    first = {"www.example.test": live_serial(certbot_runner, "www.example.test"),
             "d.fleet.test": live_serial(certbot_runner, "d.fleet.test")}

    imperva.clear()
    other.clear()
    certbot_runner.run("renew", "--force-renewal", "--no-random-sleep-on-renew")
    assert uploaded_sites(imperva) == [101] and uploaded_sites(other) == [301]
    assert imperva.held(101)["serialNumber"] == live_serial(certbot_runner, "www.example.test")
    assert other.held(301)["serialNumber"] == live_serial(certbot_runner, "d.fleet.test")

    other.clear()
    view = certbot_runner.status("--json")
    assert view.returncode == 0, view.stdout + view.stderr
    assert {key: row["state"] for key, row in rows(view).items()} == {
        ("www.example.test", 101): "in sync", ("d.fleet.test", 301): "in sync"}
    # The parent key's listing, narrowed to the lineage's sub-account.
    assert [call.form.get("account_id") for call in other.calls("sites/list")] == ["51"]

    # No flag but the installer (from cli.ini): each lineage rolls back through its own account.
    imperva.clear()
    other.clear()
    rolled = certbot_runner.run("rollback", "--checkpoints", "1", cli_ini="installer = incapsula\n")
    assert rolled.stdout.count("rolled back to archive version 1") == 2
    assert imperva.held(101)["serialNumber"] == first["www.example.test"]
    assert other.held(301)["serialNumber"] == first["d.fleet.test"]
    assert uploaded_sites(imperva) == [101] and uploaded_sites(other) == [301]

    # enhance on a lineage of the second account, flag-less, then a flag that wins.
    certbot_runner.run("enhance", "--redirect", "--cert-name", "d.fleet.test", "-i", "incapsula")
    assert other.sites[301].redirect_http_to_https and not other.sites[302].redirect_http_to_https
    assert len(other.calls("performance/advanced")) == 1
    assert not imperva.sites[101].redirect_http_to_https
    certbot_runner.run("enhance", "--redirect", "--cert-name", "d.fleet.test", "-i", "incapsula",
                       "--incapsula-site-id", "302")
    assert other.sites[302].redirect_http_to_https
    # The leak scan after this test looks for both accounts' keys (conftest.WRITTEN_KEYS).
