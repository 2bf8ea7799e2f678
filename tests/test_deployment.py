"""The upload orchestration against the Imperva test double: one upload per site, a read-back
after each, sync that uploads only where the site differs, and the records it keeps."""
from __future__ import annotations

import pytest
from certmaker import make_chain, write_lineage
from imperva_server import ImpervaServer, Site

from certbot_incapsula import certificate, deployment, sites
from certbot_incapsula.api import ImpervaClient, RetryPolicy
from certbot_incapsula.records import Records


@pytest.fixture
def server():
    with ImpervaServer() as imperva:
        imperva.add_site(Site(101, "www.example.test", ["example.test"]))
        imperva.add_site(Site(102, "shop.example.test"))
        yield imperva


@pytest.fixture
def deployer(server, tmp_path):
    client = ImpervaClient(server.api_id, server._api_key, server.url,
                           retry=RetryPolicy(base=0.01, cap=0.02, budget=5))
    yield deployment.Deployer(client, Records(str(tmp_path / "config")))
    client.close()


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
    again = deployment.Deployer(deployer.client, Records(deployer.records.path.rsplit("/incapsula/", 1)[0]))
    assert [t.site_id for t in again.resolve("l", names, []).targets] == [101, 102]
    assert server.requests == []
    # Other names: the remembered sites no longer apply, so discovery runs again.
    assert [t.site_id for t in again.resolve("l", ["shop.example.test"], []).targets] == [102]
    assert paths_of(server) == ["sites/list"]


def test_upload_reads_back_and_records(deployer, server, tmp_path):
    cert = local(tmp_path, ["www.example.test", "example.test"])
    outcomes = deployer.upload(cert, [sites.SiteTarget(101)], "l", 3)
    assert [(o.action, o.error, o.failed) for o in outcomes] == [("uploaded", None, False)]
    assert outcomes[0].target.domain == "www.example.test"  # learnt from the read-back
    assert paths_of(server) == ["sites/customCertificate/upload", "sites/status"]
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
    assert outcome.warnings == ["coverageError: the certificate does not cover every domain of this site"]


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
    assert deployment.difference(cert, held) is None
    other = local(tmp_path, ["www.example.test"], name="other")
    # With neither hash nor serial, only the expiry tells them apart (same second here): say so.
    if omit_identity and omit_hash:
        assert deployment.difference(other, held) in (
            None, "the site holds a certificate of another expiry date")
    else:
        assert deployment.difference(other, held) is not None


def test_difference_on_an_empty_site():
    assert deployment.difference(None, None) == "the site holds no custom certificate"  # type: ignore[arg-type]


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
    settings = Settings(str(creds), server.url, allow_staging=True)
    config, context = str(tmp_path / "config"), Context()
    first = {}
    for lineage, names in (("a", ["www.example.test"]), ("b", ["shop.example.test"])):
        for version in (1, 2):
            paths = write_lineage(tmp_path / lineage / str(version), make_chain(names))
            files = deployment.LineageFiles(lineage, paths["fullchain"], paths["privkey"])
            deployment.Deployment(settings, config, context=context).deploy(files)
            first.setdefault(lineage, certificate.load(paths["fullchain"], paths["privkey"]))

    def settings_for(name):
        if name == "a":
            raise deployment.Refusal("Imperva: cannot act on a: no settings are stored.")
        return settings

    reports = deployment.rollback(config, 1, settings_for, context=context)
    assert [(r.title, r.error()) for r in reports] == [
        ("Imperva rollback of a", "Imperva: cannot act on a: no settings are stored."),
        ("Imperva rollback of b", None)]
    assert server.held(102)["inputHash"] == first["b"].input_hash
    assert server.held(101)["inputHash"] != first["a"].input_hash
    context.close()
