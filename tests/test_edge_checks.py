"""certbot_incapsula.edge_checks: which site's edge a name is probed through, what is not probed,
probes of one webroot at once leaving nothing behind, and which certificates a site's edge should
serve per key type by the records. The network parts run against the edge double (root)."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Dict, List

import requests
from imperva_server import ImpervaServer

from certbot_incapsula import edge_checks
from certbot_incapsula.records import Records

ITEMS: List[Dict[str, Any]] = [
    {"site_id": 102, "domain": "shop.example.test", "dns": []},
    {"site_id": 101, "domain": "www.example.test", "dns": [
        {"dns_record_name": "www.example.test", "set_type_to": "A", "set_data_to": ["127.77.9.9"]},
        {"dns_record_name": "example.test", "set_type_to": "A", "set_data_to": ["127.77.9.9"]}]},
    {"site_id": 103, "domain": "blog.example.test", "display_name": "news.example.test"},
    {"site_id": 104, "domain": "www.bare.test"},
]


def test_serving_site_by_dns_domain_display_name_and_www() -> None:
    assert edge_checks.serving_site("example.test", ITEMS)["site_id"] == 101  # a DNS instruction
    assert edge_checks.serving_site("WWW.example.test.", ITEMS)["site_id"] == 101
    assert edge_checks.serving_site("shop.example.test", ITEMS)["site_id"] == 102
    assert edge_checks.serving_site("news.example.test", ITEMS)["site_id"] == 103
    assert edge_checks.serving_site("bare.test", ITEMS)["site_id"] == 104  # the site of its www.
    assert edge_checks.serving_site("nowhere.test", ITEMS) is None


def test_preflight_says_once_what_it_did_not_probe(tmp_path: Path) -> None:
    """No network: nothing here has a webroot and a DNS target at once."""
    names = ["nowhere.test", "*.example.test", "www.example.test", "shop.example.test", "other.test"]
    result = edge_checks.preflight(names, {"shop.example.test": str(tmp_path)}, ITEMS)
    assert result.passed == [] and result.failures == []
    assert result.notes == [
        "not probed, as no Imperva site serves them: nowhere.test, *.example.test, other.test",
        "not probed, as no webroot is given for them: www.example.test",
        "not probed, as Imperva shows no DNS target for them: shop.example.test (site 102)",
    ]
    assert list(tmp_path.iterdir()) == []


def test_preflight_unresolvable_edge_is_not_checked_and_no_failure(tmp_path: Path) -> None:
    # An A entry that is no address, and a CNAME target that does not resolve (.invalid never
    # does): this host cannot find the edge, which proves nothing about what the CA will see.
    items = [{"site_id": 101, "domain": "www.example.test", "dns": [
        {"dns_record_name": "www.example.test", "set_type_to": "A", "set_data_to": ["edge.broken"]}]},
             {"site_id": 102, "domain": "shop.example.test", "dns": [
        {"dns_record_name": "shop.example.test", "set_type_to": "CNAME",
         "set_data_to": ["abcd.x.incapdns.invalid"]}]}]
    names = ["www.example.test", "shop.example.test"]
    result = edge_checks.preflight(names, dict.fromkeys(names, str(tmp_path)), items)
    assert result.failures == [] and result.passed == []
    assert result.unchecked == [
        "site 101: not checked for www.example.test: Imperva's edge edge.broken (from the site's DNS "
        "entries) does not resolve; the CA, which reaches Imperva from the internet, will decide",
        "site 102: not checked for shop.example.test: Imperva's edge abcd.x.incapdns.invalid (from the "
        "site's DNS entries) does not resolve; the CA, which reaches Imperva from the internet, will decide"]
    assert list(tmp_path.iterdir()) == []


def test_preflight_refused_edge_is_one_line_per_site(tmp_path: Path) -> None:
    from imperva_edge import unused_loopback_address

    nowhere = unused_loopback_address()
    items = [{"site_id": 101, "domain": "www.example.test", "dns": [
        {"dns_record_name": name, "set_type_to": "A", "set_data_to": [nowhere]}
        for name in ("www.example.test", "example.test")]}]
    names = ["www.example.test", "example.test"]
    result = edge_checks.preflight(names, dict.fromkeys(names, str(tmp_path)), items)
    assert (result.failures, result.passed) == ([], [])
    assert result.unchecked == [
        f"site 101: not checked for www.example.test, example.test: Imperva's edge {nowhere} refused "
        "the connection on port 80; the CA, which reaches Imperva from the internet, will decide"]
    assert list(tmp_path.iterdir()) == []


def test_others_on_site_by_the_records(tmp_path: Path) -> None:
    records = Records(str(tmp_path))

    def deployed(lineage: str, site: int, kind: str, fingerprint: str, when: str, outcome: str = "ok"):
        records.add_deployment(lineage, {"site_id": site, "auth_type": kind, "fingerprint": fingerprint,
                                         "serial": fingerprint[:4], "input_hash": fingerprint,
                                         "outcome": outcome, "time": when})

    deployed("ec", 101, "ECC", "AA:01", "2026-01-01T00:00:00Z")
    deployed("rsa-old", 101, "RSA", "BB:01", "2026-01-01T00:00:00Z")
    deployed("rsa", 101, "RSA", "BB:02", "2026-02-01T00:00:00Z")
    deployed("rsa-failed", 101, "RSA", "BB:03", "2026-03-01T00:00:00Z", "failed")
    deployed("rsa-elsewhere", 102, "RSA", "CC:01", "2026-03-01T00:00:00Z")

    assert edge_checks.others_on_site(records, "ec", 101, "ECC") == {"RSA": ("rsa", "BB:02", "BB:0")}
    assert edge_checks.others_on_site(records, "rsa", 101, "RSA") == {"ECC": ("ec", "AA:01", "AA:0")}
    assert edge_checks.others_on_site(records, "ec", 103, "ECC") == {}


def test_after_upload_with_a_wait_of_0_does_nothing() -> None:
    expected = edge_checks.Expectation("site 101", "www.example.test", ITEMS[1], "ECC", "AA", "1")
    assert edge_checks.after_upload([expected], 0) == ([], [])




def listed(imperva: ImpervaServer) -> List[Dict[str, Any]]:
    headers = {"x-API-Id": imperva.api_id, "x-API-Key": imperva._api_key}
    return requests.post(f"{imperva.url}/api/prov/v1/sites/list", data={}, headers=headers,
                         timeout=10).json()["sites"]


def test_probes_of_one_webroot_at_once_leave_nothing_behind(origin_edge, imperva: ImpervaServer) -> None:
    edge, webroot = origin_edge
    edge.set_rule(102, "block")
    names = ["www.example.test", "example.test", "shop.example.test"]
    result = edge_checks.preflight(names, dict.fromkeys(names, str(webroot)), listed(imperva))
    assert [line.split(":")[0] for line in result.passed] == ["www.example.test", "example.test"]
    assert [line.split(":")[0] for line in result.failures] == ["shop.example.test"]
    assert len(edge.requests) == 3 * edge_checks.ATTEMPTS
    assert list(webroot.iterdir()) == []  # no probe, and not the directories made for them


# ----- issue 20 ------------------------------------------------------------------------------------

def site_101(imperva: ImpervaServer) -> Dict[str, Any]:
    return next(item for item in listed(imperva) if item["site_id"] == 101)


def test_after_upload_waits_once_for_all_sites_not_ten_at_a_time(origin_edge, imperva) -> None:
    """25 sites whose edge never switches, a wait of 2 s: one deadline for all, not 3 rounds."""
    status = site_101(imperva)
    expected = [edge_checks.Expectation(f"site {n}", "www.example.test", status, "ECC", "AB" * 20,
                                        "1") for n in range(25)]
    started = time.monotonic()
    lines, warnings = edge_checks.after_upload(expected, 2)
    elapsed = time.monotonic() - started
    assert lines == [] and len(warnings) == 25
    assert all("still serves serial" in w and "after 2 s" in w for w in warnings)
    assert 2 <= elapsed < 3.5, f"25 sites with a wait of 2 s took {elapsed:.1f} s"


def test_look_with_a_fingerprint_that_cannot_be_compared_is_one_line(origin_edge, imperva) -> None:
    expected = edge_checks.Expectation("site 101", "www.example.test", site_101(imperva), "RSA",
                                       "AB:CD:EF", "1", whose="other")
    seen = edge_checks.look(expected)
    assert seen == edge_checks.Look(
        edge_checks.UNKNOWN, "edge not checked: the records hold no usable fingerprint for other's "
                             "certificate")
    lines, warnings = edge_checks.after_upload([expected], 3)
    assert lines == [] and warnings == [f"Imperva site 101: {seen.text}"]


def test_look_at_an_edge_certificate_that_does_not_parse(origin_edge, imperva) -> None:
    edge, _ = origin_edge
    edge.set_tls_mode(101, "unparsable")
    expected = edge_checks.Expectation("site 101", "www.example.test", site_101(imperva), "ECC",
                                       "AB" * 20, "1")
    seen = edge_checks.look(expected)
    assert seen.state == edge_checks.UNKNOWN
    assert seen.text.startswith(f"edge not checked: Imperva's edge {edge.address} sent an ECC "
                                "certificate for www.example.test that cannot be parsed (")


def test_several_origin_servers_seen_across_the_names_of_a_site(origin_edge, imperva: ImpervaServer,
                                                               tmp_path: Path) -> None:
    """Two origin servers, the webroot on one: each name's fetches may all land on one server, but
    the site's fetches together show both, and one line per site says so."""
    from imperva_edge import Origin

    edge, webroot = origin_edge
    other = tmp_path / "other-origin"
    other.mkdir()
    with Origin(other) as second:
        pool = [edge.origin, second.url]
        edge.set_origins(101, pool)
        names = ["www.example.test", "example.test"]
        result = edge_checks.preflight(names, dict.fromkeys(names, str(webroot)), listed(imperva))
    assert result.passed == [] and len(result.failures) == 1
    assert result.failures[0].startswith(
        f"www.example.test, example.test: 3 of 6 answers through Imperva's edge {edge.address} carried "
        "the probe file and 3 were a 404: site 101 has several origin servers and this host's webroot "
        f"-w {webroot} is on only one of them. Serve /.well-known/acme-challenge/ from one directory")
    assert {r.origin for r in edge.requests} == set(pool)
    assert list(webroot.iterdir()) == [] and list(other.iterdir()) == []
