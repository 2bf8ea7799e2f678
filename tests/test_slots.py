"""One key type's slot of a site, judged from what the Imperva double shows and this host's
records (slots.py): dual RSA/ECDSA sites, removals, a missing authType, wildcard safety."""
from __future__ import annotations

import pytest
from certmaker import make_chain, write_lineage
from imperva_server import ImpervaServer, Site

from certbot_incapsula import certificate, report, slots
from certbot_incapsula.core import Deployer
from certbot_incapsula.held import held_certificate
from certbot_incapsula.sites import SiteTarget

NAMES = ["www.example.test", "example.test"]


@pytest.fixture
def server():
    with ImpervaServer() as imperva:
        imperva.add_site(Site(101, "www.example.test", ["example.test"]))
        yield imperva


def local(tmp_path, name, key_type="ecdsa", names=NAMES, **kwargs):
    paths = write_lineage(tmp_path / name, make_chain(names, key_type, **kwargs))
    return certificate.load(paths["fullchain"], paths["privkey"])


def shown(deployer, site_id=101):
    return held_certificate(deployer.client.site_status(site_id))


def judge(deployer, cert, lineage, target=None):
    target = target or SiteTarget(101)
    return deployer.judge(cert, lineage, target, shown(deployer, target.site_id))


def foreign_upload(deployer, cert, site_id=101):
    """A certificate uploaded by someone else (Imperva's console, another tool): not recorded."""
    deployer.client.upload_certificate(site_id, cert.fullchain_pem, cert.key_pem, cert.key_type)


def test_two_key_types_both_deployed_neither_is_uploaded_again(deployer, tmp_path):
    ec, rsa = local(tmp_path, "ec"), local(tmp_path, "rsa", "rsa")
    deployer.upload(ec, [SiteTarget(101)], "ec", 1)
    deployer.upload(rsa, [SiteTarget(101)], "rsa", 1)
    assert judge(deployer, rsa, "rsa").action == slots.IN_SYNC
    verdict = judge(deployer, ec, "ec")
    assert (verdict.action, verdict.wrong) == (slots.NOT_VERIFIABLE, False)
    assert "shows only the site's RSA certificate" in verdict.why


def test_the_other_key_types_slot_replaced_is_repaired_this_one_left(deployer, tmp_path):
    ec, rsa = local(tmp_path, "ec"), local(tmp_path, "rsa", "rsa")
    deployer.upload(ec, [SiteTarget(101)], "ec", 1)
    deployer.upload(rsa, [SiteTarget(101)], "rsa", 1)
    foreign_upload(deployer, local(tmp_path, "foreign"))
    assert judge(deployer, ec, "ec").action == slots.UPLOAD
    assert judge(deployer, rsa, "rsa").action == slots.NOT_VERIFIABLE


def test_a_removed_slot_is_seen_when_imperva_shows_an_older_upload(deployer, tmp_path):
    ec, rsa = local(tmp_path, "ec"), local(tmp_path, "rsa", "rsa")
    deployer.upload(rsa, [SiteTarget(101)], "rsa", 1)
    deployer.upload(ec, [SiteTarget(101)], "ec", 1)
    assert judge(deployer, rsa, "rsa").action == slots.NOT_VERIFIABLE
    deployer.client.call("sites/customCertificate/remove", {"site_id": 101, "auth_type": "ECC"})
    verdict = judge(deployer, ec, "ec")
    assert (verdict.action, verdict.why) == (slots.UPLOAD, "the ECDSA certificate was removed")
    # Where Imperva once showed another slot right after an upload, that order proves nothing.
    deployer.records.mark_status_not_latest(101)
    assert judge(deployer, ec, "ec").action == slots.NOT_VERIFIABLE


def test_without_auth_type_the_records_tell_the_key_type(server, deployer, tmp_path):
    server.omit_auth_type = True
    ec, rsa = local(tmp_path, "ec"), local(tmp_path, "rsa", "rsa")
    deployer.upload(ec, [SiteTarget(101)], "ec", 1)
    deployer.upload(rsa, [SiteTarget(101)], "rsa", 1)
    assert judge(deployer, ec, "ec").action == slots.NOT_VERIFIABLE
    # A certificate from elsewhere, of a key type Imperva does not say: one of the two slots
    # was replaced, and which one is not verifiable: nothing is uploaded on a guess.
    foreign_upload(deployer, local(tmp_path, "foreign"))
    for cert, lineage in ((ec, "ec"), (rsa, "rsa")):
        verdict = judge(deployer, cert, lineage)
        assert (verdict.action, verdict.wrong) == (slots.NOT_VERIFIABLE, True)
        assert "did not upload" in verdict.why


def test_without_auth_type_a_single_key_type_site_is_repaired(server, deployer, tmp_path):
    server.omit_auth_type = True
    ec = local(tmp_path, "ec")
    deployer.upload(ec, [SiteTarget(101)], "ec", 1)
    foreign_upload(deployer, local(tmp_path, "foreign", "rsa"))
    # Uploading this slot again cannot harm: no other lineage of this host uses the other one.
    assert judge(deployer, ec, "ec").action == slots.UPLOAD


def test_a_new_lineage_beside_the_other_key_type_is_uploaded(deployer, tmp_path):
    rsa, ec = local(tmp_path, "rsa", "rsa"), local(tmp_path, "ec")
    deployer.upload(rsa, [SiteTarget(101)], "rsa", 1)
    verdict = judge(deployer, ec, "ec")
    assert verdict.action == slots.UPLOAD and "not uploaded to the site from here" in verdict.why


def test_an_empty_site_and_an_owner_elsewhere(deployer, tmp_path):
    a, b = local(tmp_path, "a"), local(tmp_path, "b")
    assert judge(deployer, a, "a").action == slots.UPLOAD
    deployer.upload(a, [SiteTarget(101)], "a", 1)
    deployer.upload(b, [SiteTarget(101)], "b", 1)
    deployer.client.call("sites/customCertificate/remove", {"site_id": 101, "auth_type": "ECC"})
    verdict = judge(deployer, a, "a")  # b's site, even empty: b's self-check puts it back
    assert (verdict.action, verdict.owner) == (slots.HELD_BY_OTHER, "b")
    assert judge(deployer, b, "b").action == slots.UPLOAD


@pytest.mark.parametrize("held_by, expected", [
    ("foreign valid", slots.LEFT_ALONE),
    ("foreign expired", slots.UPLOAD),
    ("this host", slots.UPLOAD),
    ("nothing", slots.UPLOAD),
])
def test_a_site_found_only_through_a_wildcard(server, deployer, tmp_path, held_by, expected):
    server.add_site(Site(105, "blog.example.test"))
    wild = local(tmp_path, "wild", names=["*.example.test", "example.test"])
    if held_by == "foreign valid":
        foreign_upload(deployer, local(tmp_path, "f", names=["blog.example.test"]), 105)
    elif held_by == "foreign expired":
        old = make_chain(["blog.example.test"], expired=True)  # certificate.load refuses it
        deployer.client.upload_certificate(105, old.fullchain_pem, old.key_pem, "ECC")
    elif held_by == "this host":
        old = local(tmp_path, "old", names=["*.example.test", "example.test"])
        deployer.upload(old, [SiteTarget(105)], "wild", 1)
    target = SiteTarget(105, "blog.example.test", ["*.example.test"], wildcard=True)
    verdict = judge(deployer, wild, "wild", target)
    assert verdict.action == expected
    if expected == slots.LEFT_ALONE:
        assert "found only through a wildcard" in verdict.why and "ECDSA key, serial" in verdict.why
    # The same site named by its own name, or by id, is the user's intent: uploaded.
    named = SiteTarget(105, "blog.example.test", ["blog.example.test"])
    assert judge(deployer, wild, "wild", named).action in (slots.UPLOAD, slots.IN_SYNC)


# ----- issue 17: two hosts on one site, the newest certificate wins --------------------------------

from certbot_incapsula.records import Records  # noqa: E402


def other_host(server, tmp_path, name="other-host"):
    """A second host of an HA pair: its own records, the same account."""
    from certbot_incapsula.api import ImpervaClient

    client = ImpervaClient(server.api_id, server._api_key, server.url)
    return Deployer(client, Records(str(tmp_path / name)))


def synced(deployer, cert, lineage="www"):
    (outcome,) = deployer.sync(cert, [SiteTarget(101)], lineage, 1)
    return outcome


def test_a_newer_certificate_from_the_other_host_is_left_alone(server, deployer, tmp_path):
    mine = local(tmp_path, "mine", days=80)
    theirs = local(tmp_path, "theirs", days=90)
    other = other_host(server, tmp_path)
    deployer.upload(mine, [SiteTarget(101)], "www", 1)
    other.upload(theirs, [SiteTarget(101)], "www", 1)  # the other host deploys its renewal
    server.clear()
    outcome = synced(deployer, mine)
    assert outcome.action == slots.NEWER_ON_SITE and not outcome.failed
    assert outcome.verdict.why == (
        f"the site holds a newer certificate (ECDSA key, serial {theirs.serial_hex}, expires "
        f"{report.expiry({'expirationDate': theirs.expiration_ms})}, uploaded by another host or "
        f"tool) than this one (serial {mine.serial_hex}, expires "
        f"{report.expiry({'expirationDate': mine.expiration_ms})})")
    assert synced(other, theirs).action == slots.IN_SYNC
    assert server.uploads() == []
    # An explicit deployment still uploads: the user takes the site back.
    deployer.upload(mine, [SiteTarget(101)], "www", 1)
    assert server.held(101)["serialNumber"] == mine.serial_hex
    # ... and the newer host's self-healing then puts its own back, once.
    assert synced(other, theirs).action.startswith("repaired")
    assert synced(deployer, mine).action == slots.NEWER_ON_SITE
    assert len(server.uploads()) == 2
    other.client.close()


def test_between_two_hosts_exactly_one_certificate_wins_even_of_the_same_age(server, deployer,
                                                                             tmp_path):
    import datetime as dt

    # Issued in the same second by two hosts: the input hash decides, the same way on both.
    start = dt.datetime.now(dt.timezone.utc).replace(microsecond=0) - dt.timedelta(hours=1)
    a, b = local(tmp_path, "a", start=start), local(tmp_path, "b", start=start)
    assert a.expiration_ms == b.expiration_ms
    winner = max((a, b), key=lambda cert: cert.input_hash)
    other = other_host(server, tmp_path)
    deployer.upload(a, [SiteTarget(101)], "www", 1)
    other.upload(b, [SiteTarget(101)], "www", 1)
    for _ in range(3):
        synced(deployer, a)
        synced(other, b)
    # One repair at most (when the first host's certificate wins), then both hosts agree.
    assert len(server.uploads()) == (3 if winner is a else 2)
    assert server.held(101)["serialNumber"] == winner.serial_hex
    loser_action = synced(deployer, a).action if winner is b else synced(other, b).action
    assert loser_action == slots.NEWER_ON_SITE
    other.client.close()


def test_what_makes_self_healing_replace_a_newer_certificate(server, deployer, tmp_path):
    """Flagged, expiring within a day, or covering fewer of the site's domains: replaced."""
    import datetime as dt

    mine = local(tmp_path, "mine", days=80)
    other = other_host(server, tmp_path)
    deployer.upload(mine, [SiteTarget(101)], "www", 1)
    # Revoked (Imperva flags it): replaced.
    revoked = local(tmp_path, "revoked", days=90)
    server.revoked_serials.add(revoked.serial)
    other.upload(revoked, [SiteTarget(101)], "www", 1)
    assert synced(deployer, mine).action.startswith("repaired")
    # Lacking example.test, which the site serves and this certificate covers: replaced.
    narrow = local(tmp_path, "narrow", names=["www.example.test"], days=90)
    other.upload(narrow, [SiteTarget(101)], "www", 1)
    outcome = synced(deployer, mine)
    assert outcome.action.startswith("repaired") and outcome.verdict is None
    # The other way round: a newer certificate that lacks a domain does not take the site from
    # an older one that covers them all (it would take it back on every run).
    assert synced(other, narrow).action == slots.NEWER_ON_SITE
    assert "covers all of its domains, which this one does not (example.test missing)" in \
        synced(other, narrow).verdict.why
    # Newer but expiring within a day (this certificate sooner still): replaced all the same.
    start = dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=23)
    soon = local(tmp_path, "soon", start=start, days=1)  # expires in an hour
    sooner = local(tmp_path, "sooner", start=start - dt.timedelta(minutes=30), days=1)
    deployer.upload(sooner, [SiteTarget(101)], "sooner", 1)
    other.upload(soon, [SiteTarget(101)], "soon", 1)
    assert synced(deployer, sooner, "sooner").action.startswith("repaired")
    other.client.close()


@pytest.mark.parametrize("change, expected", [
    ({}, slots.NEWER_ON_SITE),
    ({"active": False}, None),
    ({"chainError": True}, None),
    ({"validityError": True}, None),
    ({"hostnameMismatchError": True}, None),  # the other name of the coverage flag
    ({"expirationDate": None}, None),  # nothing shows it is newer
    ({"inputHash": None, "days": 90}, None),  # from elsewhere, of the same age: repaired
    ({"inputHash": None, "days": 91}, slots.NEWER_ON_SITE),  # from elsewhere, a day newer
])
def test_outranks_reads_what_imperva_shows(tmp_path, change, expected):
    mine = local(tmp_path, "mine", days=90)
    theirs = local(tmp_path, "theirs", days=change.pop("days", 95))
    held = {"active": True, "expirationDate": theirs.expiration_ms, "validityError": False,
            "chainError": False, "revocationError": False, "hostnameMismatchError": False,
            "serialNumber": theirs.serial_hex, "inputHash": theirs.input_hash}
    held.update(change)
    target = SiteTarget(101, "www.example.test", NAMES)
    target.domains = list(NAMES)
    records = Records(str(tmp_path / "records"))
    why = slots.outranks(mine, "www", target, held, records)
    assert (slots.NEWER_ON_SITE if why else None) == expected
    # An earlier (or any other) certificate of this same lineage never outranks its current one.
    records.add_deployment("www", {"site_id": 101, "input_hash": theirs.input_hash,
                                   "serial": theirs.serial_hex, "outcome": "ok"})
    assert slots.outranks(mine, "www", target, held, records) is None
    assert (slots.outranks(mine, "other", target, held, records) is not None) == bool(expected)
