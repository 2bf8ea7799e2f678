"""The upload orchestration against the Imperva test double: one upload per site, a read-back
after each, sync that uploads only where the site differs, and the records it keeps."""
from __future__ import annotations

import pytest
from certmaker import make_chain, write_lineage
from imperva_server import ImpervaServer, Site

from certbot_incapsula import certificate, report, sites
from certbot_incapsula.core import Deployer, Deployment, rollback
from certbot_incapsula.held import difference
from certbot_incapsula.outcomes import LineageFiles, Refusal
from certbot_incapsula.records import Records


@pytest.fixture
def server():
    with ImpervaServer() as imperva:
        imperva.add_site(Site(101, "www.example.test", ["example.test"]))
        imperva.add_site(Site(102, "shop.example.test"))
        yield imperva


def local(tmp_path, names, key_type="ecdsa", name="lineage"):
    paths = write_lineage(tmp_path / name, make_chain(names, key_type))
    return certificate.load(paths["fullchain"], paths["privkey"])


def paths_of(server):
    return [call.path.rsplit("/v1/", 1)[1] for call in server.requests]


def test_resolve_discovers_once_then_uses_the_records(deployer, server):
    names = ["www.example.test", "example.test", "shop.example.test"]
    found = deployer.resolve("l", names, [])
    assert [(t.site_id, t.names) for t in found.targets] == [
        (101, ["www.example.test", "example.test"]), (102, ["shop.example.test"])]
    deployer.records.save()
    server.clear()
    again = Deployer(deployer.client, Records(deployer.records.path.rsplit("/incapsula/", 1)[0]))
    assert [t.site_id for t in again.resolve("l", names, []).targets] == [101, 102]
    assert server.requests == []
    # Other names: the remembered sites no longer apply, so discovery runs again.
    assert [t.site_id for t in again.resolve("l", ["shop.example.test"], []).targets] == [102]
    assert paths_of(server) == ["sites/list"]


def test_upload_reads_back_and_records(deployer, server, tmp_path):
    cert = local(tmp_path, ["www.example.test", "example.test"])
    outcomes = deployer.upload(cert, [sites.SiteTarget(101)], "l", 3)
    assert [(o.action, o.error, o.failed) for o in outcomes] == [("uploaded", None, False)]
    assert outcomes[0].target.domain == "www.example.test"  # learnt from Imperva
    # What the site held first (to put it back if Imperva flags the upload), then the read-back.
    assert paths_of(server) == ["sites/status", "sites/customCertificate/upload", "sites/status"]
    (entry,) = deployer.records.history("l")
    assert (entry["site_id"], entry["archive_version"], entry["outcome"]) == (101, 3, "ok")
    assert entry["input_hash"] == cert.input_hash


def test_an_upload_imperva_does_not_keep_is_a_failure(deployer, server, tmp_path):
    server.drop_uploads = True
    cert = local(tmp_path, ["www.example.test", "example.test"])
    (outcome,) = deployer.upload(cert, [sites.SiteTarget(101)], "l", 1)
    assert outcome.failed
    assert outcome.error.startswith("Imperva answered OK, but the site holds no custom certificate")
    assert deployer.records.history("l")[0]["outcome"] == "failed"


def test_flags_are_reported_and_chain_errors_fail(deployer, server, tmp_path):
    chain = make_chain(["www.example.test", "example.test"])
    leaf_only = tmp_path / "leaf"
    paths = write_lineage(leaf_only, chain)
    with open(paths["fullchain"], "wb") as handle:
        handle.write(chain.leaf_pem)  # no intermediate: Imperva flags the chain
    cert = certificate.load(paths["fullchain"], paths["privkey"])
    (outcome,) = deployer.upload(cert, [sites.SiteTarget(101)], "l", 1)
    assert outcome.fatal_flags == ["chainError: the chain is incomplete or does not lead to a trusted root"]
    assert outcome.failed and outcome.error is None
    assert any("ERROR chainError" in line for line in outcome.lines())


def test_coverage_flag_is_a_warning_not_a_failure(deployer, server, tmp_path):
    cert = local(tmp_path, ["www.example.test"])  # the site also serves example.test
    (outcome,) = deployer.upload(cert, [sites.SiteTarget(101)], "l", 1)
    assert not outcome.failed
    # The site's DNS instructions name its domains, so the warning names the one missing.
    assert outcome.warnings == ["coverageError: the certificate does not cover every domain of this "
                                "site: it lacks example.test (add -d for each)"]


def test_one_failing_site_does_not_stop_the_others(deployer, server, tmp_path):
    server.sites[101].ssl = False
    cert = local(tmp_path, ["www.example.test", "shop.example.test"])
    outcomes = deployer.upload(cert, [sites.SiteTarget(101), sites.SiteTarget(102)], "l", 1)
    assert [(o.target.site_id, o.failed) for o in outcomes] == [(101, True), (102, False)]
    assert "does not have SSL enabled" in outcomes[0].error
    assert server.held(102) is not None


def test_sync_uploads_only_where_the_site_differs(deployer, server, tmp_path):
    cert = local(tmp_path, ["www.example.test", "shop.example.test"])
    targets = [sites.SiteTarget(101), sites.SiteTarget(102)]
    deployer.upload(cert, targets, "l", 1)
    server.clear()
    assert [o.action for o in deployer.sync(cert, targets, "l", 1)] == ["in sync", "in sync"]
    assert paths_of(server) == ["sites/status", "sites/status"]
    other = local(tmp_path, ["shop.example.test"], name="other")
    # Someone else replaces the certificate of site 102 (not through this host).
    deployer.client.upload_certificate(102, other.fullchain_pem, other.key_pem, other.key_type)
    server.clear()
    outcomes = deployer.sync(cert, targets, "l", 1)
    assert [o.action for o in outcomes] == ["in sync", "repaired (the site holds another certificate)"]
    assert sorted(paths_of(server)) == ["sites/customCertificate/upload", "sites/status",
                                        "sites/status", "sites/status"]


def test_a_slot_deployed_last_by_another_lineage_is_left_to_it(deployer, server, tmp_path):
    mine = local(tmp_path, ["www.example.test", "example.test"])
    theirs = local(tmp_path, ["www.example.test"], name="theirs")
    deployer.upload(mine, [sites.SiteTarget(101)], "mine", 1)
    deployer.upload(theirs, [sites.SiteTarget(101)], "theirs", 1)  # explicit: theirs owns it now
    server.clear()
    (outcome,) = deployer.sync(mine, [sites.SiteTarget(101)], "mine", 1)
    assert outcome.action == "held by other lineage" and outcome.verdict.owner == "theirs"
    assert not outcome.failed and server.uploads() == []
    (outcome,) = deployer.sync(theirs, [sites.SiteTarget(101)], "theirs", 1)
    assert outcome.action == "in sync"
    # Once the owner's certificate files are gone (certbot delete), the site is free again.
    for path in (tmp_path / "theirs").iterdir():
        path.unlink()
    (outcome,) = deployer.sync(mine, [sites.SiteTarget(101)], "mine", 1)
    assert outcome.action.startswith("repaired") and len(server.uploads()) == 1


@pytest.mark.parametrize("omit_identity, omit_hash", [(True, False), (False, True), (True, True)])
def test_difference_without_some_identity_fields(server, deployer, tmp_path, omit_identity, omit_hash):
    server.omit_identity, server.omit_input_hash = omit_identity, omit_hash
    cert = local(tmp_path, ["www.example.test", "example.test"])
    deployer.upload(cert, [sites.SiteTarget(101)], "l", 1)
    held = server.held(101)
    assert difference(cert, held) is None
    other = local(tmp_path, ["www.example.test"], name="other")
    # With neither hash nor serial, only the expiry tells them apart (same second here): say so.
    if omit_identity and omit_hash:
        assert difference(other, held) in (
            None, "the site holds a certificate of another expiry date")
    else:
        assert difference(other, held) is not None


def test_check_is_read_only(deployer, server):
    outcomes = deployer.check([sites.SiteTarget(101), sites.SiteTarget(999)])
    assert [(o.action, o.target.domain) for o in outcomes] == [("reachable", "www.example.test"),
                                                               ("failed", None)]
    assert "res 9413" in outcomes[1].error
    assert server.uploads() == []


def test_sites_for_a_name_prefers_ids_then_records_then_discovery(deployer, server):
    assert [t.site_id for t in deployer.sites_for("example.test", [7])] == [7]
    assert [t.site_id for t in deployer.sites_for("example.test", [])] == [101]
    assert paths_of(server) == ["sites/list"]
    deployer.records.remember_sites("l", ["example.test"], [
        {"site_id": 101, "domain": "www.example.test", "names": ["example.test"]}])
    server.clear()
    assert [t.site_id for t in deployer.sites_for("example.test", [])] == [101]
    assert server.requests == []


def test_rollback_goes_on_past_a_lineage_it_cannot_act_on(server, tmp_path):
    from certbot_incapsula.context import Context
    from certbot_incapsula.settings import Settings

    creds = tmp_path / "incapsula.ini"
    creds.write_text(f"incapsula_api_id = {server.api_id}\nincapsula_api_key = {server._api_key}\n")
    creds.chmod(0o600)
    settings = Settings(str(creds), server.url, allow_staging=True, edge_wait=0)  # no edge here
    config, context = str(tmp_path / "config"), Context()
    first = {}
    for lineage, names in (("a", ["www.example.test"]), ("b", ["shop.example.test"])):
        for version in (1, 2):
            paths = write_lineage(tmp_path / lineage / str(version), make_chain(names))
            files = LineageFiles(lineage, paths["fullchain"], paths["privkey"])
            Deployment(settings, config, context=context).deploy(files)
            first.setdefault(lineage, certificate.load(paths["fullchain"], paths["privkey"]))

    def settings_for(name):
        if name == "a":
            raise Refusal("Imperva: cannot act on a: no settings are stored.")
        return settings

    reports = rollback(config, 1, settings_for, context=context)
    assert [(r.title, r.error()) for r in reports] == [
        ("Imperva rollback of a", "Imperva: cannot act on a: no settings are stored."),
        ("Imperva rollback of b", None)]
    assert server.held(102)["inputHash"] == first["b"].input_hash
    assert server.held(101)["inputHash"] != first["a"].input_hash
    context.close()


# ----- when Imperva flags an upload: the previous certificate goes back ---------------------------

WWW = ["www.example.test", "example.test"]


def archive(tmp_path, *chains, name="l"):
    """certbot's archive/NAME/fullchainN.pem and privkeyN.pem, loaded."""
    directory = tmp_path / "archive" / name
    directory.mkdir(parents=True, exist_ok=True)
    certs = []
    for number, chain in enumerate(chains, start=1):
        (directory / f"fullchain{number}.pem").write_bytes(chain.fullchain_pem)
        (directory / f"privkey{number}.pem").write_bytes(chain.key_pem)
        certs.append(certificate.load(str(directory / f"fullchain{number}.pem"),
                                      str(directory / f"privkey{number}.pem")))
    return certs


def held_serial(server, site_id=101):
    return (server.held(site_id) or {}).get("serialNumber")


def test_a_flagged_upload_puts_the_previous_certificate_back(deployer, server, tmp_path):
    first, second = archive(tmp_path, make_chain(WWW), make_chain(WWW))
    deployer.upload(first, [sites.SiteTarget(101)], "l", 1)
    server.revoked_serials.add(second.serial)
    server.clear()
    (outcome,) = deployer.upload(second, [sites.SiteTarget(101)], "l", 2)
    assert outcome.failed and outcome.error is None
    assert outcome.fatal_flags == ["revocationError: the certificate is revoked"]
    assert outcome.restored == first and held_serial(server) == first.serial_hex
    assert outcome.aftermath.startswith(f"Restored the previous certificate (serial {first.serial_hex}")
    assert paths_of(server) == ["sites/status", "sites/customCertificate/upload", "sites/status",
                                "sites/customCertificate/upload", "sites/status"]
    lines = outcome.lines()
    assert "  ERROR revocationError: the certificate is revoked" in lines
    assert any(line.startswith("  Restored the previous certificate") for line in lines)
    said = report.failure([outcome], 1)
    assert said.startswith("Imperva: 1 of 1 site(s) failed. site 101: Imperva flagged the "
                           "certificate uploaded (revocationError); restored the previous "
                           f"certificate (serial {first.serial_hex}")
    history = deployer.records.history("l")
    assert [(h["serial"], h["outcome"], h["flags"]) for h in history] == [
        (first.serial_hex, "ok", []), (second.serial_hex, "failed", ["revocationError"]),
        (first.serial_hex, "ok", [])]
    assert history[-1]["archive_version"] == 1 and history[-1]["action"].startswith("restored")


def test_the_previous_certificate_is_found_in_certbots_archive(deployer, server, tmp_path):
    first, second = archive(tmp_path, make_chain(WWW), make_chain(WWW))
    # Uploaded without the plugin's records (another machine, a lost state file).
    deployer.client.upload_certificate(101, first.fullchain_pem, first.key_pem, "ECC",
                                       first.input_hash)
    server.revoked_serials.add(second.serial)
    (outcome,) = deployer.upload(second, [sites.SiteTarget(101)], "l", 2)
    assert outcome.restored == first and held_serial(server) == first.serial_hex


@pytest.mark.parametrize("before, phrase", [
    ("nothing", "Not restored: the site held no custom certificate before; the site now serves "
                "the flagged certificate (serial {second})"),
    ("elsewhere", "Not restored: the certificate the site held before (serial {other}) is neither "
                  "in the plugin's records nor in certbot's archive; the site now serves the "
                  "flagged certificate (serial {second})"),
    ("flagged", "Not restored: the certificate the site held before (serial {first}) was flagged "
                "revocationError too"),
    ("rsa", "Not restored: the certificate the site held before (serial {first}) has an RSA key, "
            "and Imperva keeps one certificate per key type"),
])
def test_when_nothing_good_is_at_hand_the_report_says_what_the_site_serves(
        deployer, server, tmp_path, before, phrase):
    first, second = archive(tmp_path, make_chain(WWW, "rsa" if before == "rsa" else "ecdsa"),
                            make_chain(WWW))
    other = local(tmp_path, WWW, name="elsewhere")
    if before == "flagged":
        server.revoked_serials.add(first.serial)
    if before in ("flagged", "rsa"):
        deployer.upload(first, [sites.SiteTarget(101)], "l", 1)
    elif before == "elsewhere":
        deployer.client.upload_certificate(101, other.fullchain_pem, other.key_pem, "ECC")
    server.revoked_serials.add(second.serial)
    uploads = len(server.uploads())
    (outcome,) = deployer.upload(second, [sites.SiteTarget(101)], "l", 2)
    assert outcome.failed and outcome.restored is None
    assert outcome.aftermath.startswith(phrase.format(first=first.serial_hex, other=other.serial_hex,
                                                      second=second.serial_hex)), outcome.aftermath
    assert len(server.uploads()) == uploads + 1  # the flagged one only: nothing else was tried
    assert held_serial(server) == second.serial_hex


def test_self_healing_does_not_upload_a_flagged_certificate_again(deployer, server, tmp_path):
    first, second = archive(tmp_path, make_chain(WWW), make_chain(WWW))
    deployer.upload(first, [sites.SiteTarget(101)], "l", 1)
    server.revoked_serials.add(second.serial)
    deployer.upload(second, [sites.SiteTarget(101)], "l", 2)
    server.clear()
    (outcome,) = deployer.sync(second, [sites.SiteTarget(101)], "l", 2)
    assert outcome.failed and paths_of(server) == ["sites/status"]
    assert "Imperva flagged this certificate (revocationError) when it was uploaded" in outcome.error
    assert "certbot renew --cert-name l --force-renewal" in outcome.error
    assert held_serial(server) == first.serial_hex


def test_sync_with_a_refusal_uploads_nothing_where_the_site_differs(deployer, server, tmp_path):
    cert = local(tmp_path, WWW)
    asked = []

    def refusal():
        asked.append(1)
        return "it expires soon"
    (outcome,) = deployer.sync(cert, [sites.SiteTarget(101)], "l", 1, refusal=refusal)
    assert outcome.error == "the site holds no custom certificate, but it expires soon"
    assert server.uploads() == []
    assert asked == [1]  # the certificate is judged only where an upload is due


def test_sync_of_a_site_in_sync_never_judges_the_certificate(deployer, server, tmp_path):
    cert = local(tmp_path, WWW)
    deployer.upload(cert, [sites.SiteTarget(101)], "l", 1)
    outcomes = deployer.sync(cert, [sites.SiteTarget(101)], "l", 1,
                             refusal=lambda: pytest.fail("judged a certificate in sync"))
    assert [o.action for o in outcomes] == ["in sync"]


def test_a_site_that_serves_none_of_the_names_gets_nothing(deployer, server, tmp_path):
    cert = local(tmp_path, WWW)
    (outcome,) = deployer.upload(cert, [sites.SiteTarget(102)], "l", 1)
    assert outcome.failed and outcome.stale and server.uploads() == []
    assert outcome.error == ("nothing was uploaded: the site serves shop.example.test, which none "
                             "of the certificate's names (www.example.test, example.test) covers. "
                             "Check --incapsula-site-id.")


# ----- the core: a stale record costs a rediscovery; a record that cannot be written, a warning ----

@pytest.fixture
def core(server, tmp_path):
    from certbot_incapsula.context import Context
    from certbot_incapsula.settings import Settings

    creds = tmp_path / "incapsula.ini"
    creds.write_text(f"incapsula_api_id = {server.api_id}\nincapsula_api_key = {server._api_key}\n")
    creds.chmod(0o600)
    context = Context()
    # No edge runs here (test_e2e_edge.py has one): the edge check is off.
    yield Deployment(Settings(str(creds), server.url, edge_wait=0),
                                str(tmp_path / "config"), context=context)
    context.close()


def files_of(tmp_path, chain, name="www.example.test"):
    paths = write_lineage(tmp_path / "live" / name, chain)
    return LineageFiles(name, paths["fullchain"], paths["privkey"])


def test_a_stale_site_record_is_dropped_and_the_sites_found_again(core, server, tmp_path):
    core.records.remember_sites("www.example.test", WWW, [
        {"site_id": 102, "domain": "shop.example.test", "names": WWW}])
    rep = core.deploy(files_of(tmp_path, make_chain(WWW)))
    assert [(o.target.site_id, o.failed) for o in rep.outcomes] == [(101, False)]
    assert server.uploads(102) == [] and len(server.uploads(101)) == 1
    assert any("no longer serve its names: the record is dropped" in w for w in rep.warnings)
    assert core.records.cached_sites("www.example.test", WWW)[0]["site_id"] == 101


def test_a_record_that_cannot_be_written_is_a_warning_naming_what_it_lacks(core, server, tmp_path):
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "incapsula").write_text("a file where a directory belongs")
    chain = make_chain(WWW)
    rep = core.deploy(files_of(tmp_path, chain))
    assert rep.error() is None and server.held(101)["serialNumber"] == format(chain.serial, "X")
    (warning,) = rep.warnings
    assert warning.startswith(f"The upload of serial {chain.serial:X} to site 101 is not recorded: "
                              f"{tmp_path}/config/incapsula/state.json cannot be written "
                              f"({tmp_path}/config/incapsula is a file, not a directory).")


def test_deploy_refuses_a_leaf_only_file_and_sync_only_where_it_would_upload(core, server,
                                                                              tmp_path):
    import datetime as dt

    chain = make_chain(WWW)
    files = files_of(tmp_path, chain)
    with pytest.raises(Refusal, match="holds only the leaf certificate"):
        core.deploy(LineageFiles(files.name, str(tmp_path / "live" / files.name /
                                                            "cert.pem"), files.key))
    assert server.requests == []
    # Expiring in 14 hours: an in-sync site stays in sync, a site that differs gets nothing.
    start = dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=10)
    soon = files_of(tmp_path, make_chain(WWW, start=start, days=1), name="soon")
    server.clear()
    with pytest.raises(Refusal, match="in less than a day"):
        core.deploy(soon)
    rep = core.sync(soon)
    (outcome,) = rep.outcomes
    assert outcome.failed and "the lineage's certificate is not uploaded" in outcome.error
    assert server.uploads() == []


def test_sync_does_not_put_back_a_certificate_a_renewal_replaced_meanwhile(core, server, tmp_path):
    """Issue 20: sync reads the lineage, then the sites; a renewal that replaces the live files
    in between must not make sync "repair" the site back to the older certificate."""
    import os

    name = "www.example.test"
    first, renewed = make_chain(WWW), make_chain(WWW)
    (first_cert, renewed_cert) = archive(tmp_path, first, renewed, name=name)
    live = tmp_path / "live" / name
    live.mkdir(parents=True)

    def point_live_at(version):  # as certbot's renewal does: each link replaced atomically
        for stem in ("fullchain", "privkey"):
            link = live / f"{stem}.pem.new"
            os.symlink(f"../../archive/{name}/{stem}{version}.pem", link)
            os.replace(link, live / f"{stem}.pem")

    point_live_at(1)
    files = LineageFiles(name, str(live / "fullchain.pem"), str(live / "privkey.pem"))
    core.deploy(files)
    server.console("sites/customCertificate/remove", {"site_id": "101", "auth_type": "ECC"})
    renewals = []

    def renew_once(path):  # at sync's first call to Imperva, after it read the lineage
        if not renewals:
            point_live_at(2)
            renewals.append(path)

    # A sync of its own, as from a timer (this process's listing still shows the deploy).
    from certbot_incapsula.context import Context

    timer = Deployment(core.settings, core.config_dir, context=Context())
    server.on_arrival = renew_once
    rep = timer.sync(files)
    server.on_arrival = None
    assert renewals and len(server.uploads()) == 1  # the deploy's only: nothing older went up
    assert server.held(101) is None
    assert rep.error() is None
    assert rep.lines() == [
        f"Imperva self-check of {name}:",
        f"  Imperva site 101 (www.example.test): not repaired (the site holds no custom "
        f"certificate, but the lineage's certificate changed during this self-check (now serial "
        f"{renewed.serial:X}): serial {first.serial:X}, read before, is not uploaded; the renewal's "
        "own deployment or the next self-check deals with the new one)"]
    assert [e["input_hash"] for e in timer.records.history(name)] == [first_cert.input_hash]

    # The next self-check reads the new certificate and repairs the site with it.
    again = Deployment(core.settings, core.config_dir, context=Context()).sync(files)
    assert again.error() is None and server.held(101)["inputHash"] == renewed_cert.input_hash
def test_records_locked_too_long_is_one_plain_warning_and_the_upload_stands(core, server,
                                                                             tmp_path):
    import fcntl
    import os

    chain = make_chain(WWW)
    os.makedirs(tmp_path / "config" / "incapsula")
    lock = tmp_path / "config" / "incapsula" / "state.json.lock"
    holder = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(holder, fcntl.LOCK_EX)  # another process, stuck in the middle of its save
    try:
        core.records.lock_wait = 0.2
        rep = core.deploy(files_of(tmp_path, chain))
    finally:
        os.close(holder)
    assert rep.error() is None and server.held(101)["serialNumber"] == format(chain.serial, "X")
    assert rep.warnings == [
        f"The upload of serial {chain.serial:X} to site 101 is not recorded in "
        f"{tmp_path}/config/incapsula/state.json: another certbot-incapsula process (or certbot "
        f"with this plugin) held its lock {lock} for 0.2 s. What was uploaded stays uploaded, "
        "and self-healing sees it on the site; only the records lack it, so a rollback will not "
        "offer it and a shared site's owner is not updated."]
    assert not (tmp_path / "config" / "incapsula" / "state.json").exists()
    # The next process's self-check finds the site in sync: nothing is uploaded again.
    from certbot_incapsula.context import Context

    server.clear()
    context = Context()
    try:
        later = Deployment(core.settings, core.config_dir, context=context)
        assert later.sync(files_of(tmp_path, chain)).outcomes == [] and server.uploads() == []
    finally:
        context.close()
