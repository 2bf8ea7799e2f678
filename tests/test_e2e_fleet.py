"""End to end, issue 10: one listing of the account serves every lineage of a `certbot renew`."""
from __future__ import annotations

import math

from certmaker import make_chain
from conftest import NO_EDGE_ARGS, write_credentials
from imperva_server import ImpervaServer, Site

RENEW = ["renew", "--no-random-sleep-on-renew"]
LINEAGES = ["a.fleet.test", "b.fleet.test", "c.fleet.test"]


def endpoints(imperva):
    return [c.path.rsplit("/v1/", 1)[1] for c in imperva.requests]


def fleet(imperva, padding=0):
    """One site per lineage, and `padding` more sites that no lineage uses."""
    for i, name in enumerate(LINEAGES):
        imperva.add_site(Site(201 + i, name))
    for i in range(padding):
        imperva.add_site(Site(1000 + i, f"other{i}.fleet.test"))


def issue_all(certbot_runner, pebble, plugin_args, names=LINEAGES):
    for name in names:
        certbot_runner.run("run", "-a", "webroot", "-w", pebble.webroot, *plugin_args, "-d", name)


def drift(imperva, site_id, name):
    chain = make_chain([name])
    imperva.console_upload(site_id, chain.fullchain_pem, chain.key_pem)


def test_in_sync_lineages_cost_one_paged_listing(certbot_runner, pebble, imperva, plugin_args):
    fleet(imperva, padding=150)
    issue_all(certbot_runner, pebble, plugin_args)
    imperva.clear()
    result = certbot_runner.run(*RENEW)
    sites = len(imperva.sites)
    assert endpoints(imperva) == ["sites/list"] * math.ceil(sites / 100)  # 155 sites: 2 pages
    assert "Imperva" not in result.stdout


def test_one_drifted_site_among_many_is_the_only_upload(certbot_runner, pebble, imperva, plugin_args):
    fleet(imperva)
    issue_all(certbot_runner, pebble, plugin_args)
    drift(imperva, 202, "b.fleet.test")
    imperva.clear()
    result = certbot_runner.run(*RENEW)
    assert "Imperva site 202 (b.fleet.test): repaired" in result.stdout
    assert sorted(endpoints(imperva)) == ["sites/customCertificate/upload", "sites/list",
                                          "sites/status"]
    assert [int(u.form["site_id"]) for u in imperva.uploads()] == [202]


def test_a_listing_without_ssl_details_falls_back_to_status(certbot_runner, pebble, imperva,
                                                            plugin_args):
    fleet(imperva)
    issue_all(certbot_runner, pebble, plugin_args)
    imperva.list_without_ssl = True
    drift(imperva, 203, "c.fleet.test")
    imperva.clear()
    result = certbot_runner.run(*RENEW)
    # Same result as with the details: only the drifted site is uploaded again.
    assert [int(u.form["site_id"]) for u in imperva.uploads()] == [203]
    assert "Imperva site 203 (c.fleet.test): repaired" in result.stdout
    calls = endpoints(imperva)
    assert calls.count("sites/list") == 1
    assert calls.count("sites/status") == len(LINEAGES) + 1  # one per site, one read-back


def test_two_accounts_two_listings(certbot_runner, pebble, imperva, plugin_args, tmp_path):
    fleet(imperva)
    with ImpervaServer(api_id="777", api_key="second-account-key-42") as other:
        other.add_site(Site(301, "d.fleet.test", account_id=1))
        issue_all(certbot_runner, pebble, plugin_args, LINEAGES[:2])
        second = write_credentials(tmp_path / "second.ini", other.api_id, other._api_key)
        certbot_runner.run("run", "-a", "webroot", "-w", pebble.webroot, "-i", "incapsula",
                           "--incapsula-credentials", str(second), "--incapsula-api-url",
                           other.url, "--incapsula-allow-staging", *NO_EDGE_ARGS, "-d", "d.fleet.test")
        imperva.clear()
        other.clear()
        certbot_runner.run(*RENEW)
        assert endpoints(imperva) == ["sites/list"]
        assert endpoints(other) == ["sites/list"]
        assert other.held(301) is not None and other._api_key not in certbot_runner.outputs[-1]
