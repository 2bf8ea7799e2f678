"""End to end, issue 4: Imperva always ends up holding what is on disk: self-healing on every
renew, read-back verification, rollback, the redirect enhancement, dry runs and the status view."""
from __future__ import annotations

from certmaker import make_chain
from conftest import write_credentials
from cryptography import x509

NAMES = ["-d", "www.example.test", "-d", "example.test"]
RENEW = ["renew", "--no-random-sleep-on-renew"]


def obtain(certbot_runner, pebble, plugin_args, *extra):
    return certbot_runner.run("run", "-a", "webroot", "-w", pebble.webroot, *plugin_args, *NAMES,
                              *extra)


def live_serial(certbot_runner) -> str:
    pem = (certbot_runner.live("www.example.test") / "cert.pem").read_bytes()
    return format(x509.load_pem_x509_certificate(pem).serial_number, "X")


def endpoints(imperva):
    return [call.path.rsplit("/v1/", 1)[1] for call in imperva.requests]


def drift(imperva, site_id=101):
    """Someone replaces the site's certificate behind certbot's back (e.g. in Imperva's console)."""
    chain = make_chain(["www.example.test", "example.test"])
    imperva.console_upload(site_id, chain.fullchain_pem, chain.key_pem)
    return format(chain.serial, "X")


def test_in_sync_lineage_costs_one_listing_page(certbot_runner, pebble, imperva, plugin_args):
    obtain(certbot_runner, pebble, plugin_args)
    imperva.clear()
    result = certbot_runner.run(*RENEW)
    # The account's listing says what every site holds: one page, no sites/status.
    assert endpoints(imperva) == ["sites/list"]
    assert "Imperva" not in result.stdout  # nothing to say when nothing changed


def test_failed_upload_during_renew_heals_on_the_next_plain_renew(certbot_runner, pebble, imperva,
                                                                   plugin_args):
    obtain(certbot_runner, pebble, plugin_args)
    old = imperva.held(101)["serialNumber"]
    imperva.sites[101].ssl = False  # the renewal's upload is refused
    failed = certbot_runner.run("renew", "--force-renewal", "--no-random-sleep-on-renew", check=False)
    assert failed.returncode != 0 and "does not have SSL enabled" in failed.stderr
    assert imperva.held(101)["serialNumber"] == old != live_serial(certbot_runner)
    imperva.sites[101].ssl = True
    healed = certbot_runner.run(*RENEW)  # nothing is due: only generic_updates runs
    assert "Certificate not yet due for renewal" in healed.stdout
    assert "repaired (the site holds another certificate)" in healed.stdout
    assert imperva.held(101)["serialNumber"] == live_serial(certbot_runner)
    imperva.clear()
    certbot_runner.run(*RENEW)
    assert endpoints(imperva) == ["sites/list"]


def test_disable_renew_updates_then_plain_renew_ends_in_sync(certbot_runner, pebble, imperva,
                                                             plugin_args):
    obtain(certbot_runner, pebble, plugin_args)
    certbot_runner.run("renew", "--force-renewal", "--no-random-sleep-on-renew",
                       "--disable-renew-updates")
    assert imperva.held(101)["serialNumber"] != live_serial(certbot_runner)
    certbot_runner.run(*RENEW)
    assert imperva.held(101)["serialNumber"] == live_serial(certbot_runner)


def test_drift_made_elsewhere_is_repaired(certbot_runner, pebble, imperva, plugin_args):
    obtain(certbot_runner, pebble, plugin_args)
    drift(imperva)
    imperva.clear()
    result = certbot_runner.run(*RENEW)
    assert "Imperva site 101 (www.example.test): repaired" in result.stdout
    # The listing shows the drift; the upload is read back with sites/status.
    assert endpoints(imperva) == ["sites/list", "sites/customCertificate/upload", "sites/status"]
    assert imperva.held(101)["serialNumber"] == live_serial(certbot_runner)


def test_sync_without_serial_and_fingerprint_uses_the_input_hash(certbot_runner, pebble, imperva,
                                                                 plugin_args):
    imperva.omit_identity = True
    obtain(certbot_runner, pebble, plugin_args)
    imperva.clear()
    certbot_runner.run(*RENEW)
    assert endpoints(imperva) == ["sites/list"]
    drift(imperva)
    certbot_runner.run(*RENEW)
    assert imperva.held_slots(101)["ECC"]["serialNumber"] == live_serial(certbot_runner)


def test_rollback_puts_the_previous_certificate_back(certbot_runner, pebble, imperva, plugin_args):
    obtain(certbot_runner, pebble, plugin_args)
    first = live_serial(certbot_runner)
    certbot_runner.run("renew", "--force-renewal", "--no-random-sleep-on-renew")
    second = live_serial(certbot_runner)
    assert imperva.held(101)["serialNumber"] == second != first
    result = certbot_runner.run("rollback", "--checkpoints", "1", *plugin_args)
    assert "rolled back to archive version 1" in result.stdout
    assert imperva.held(101)["serialNumber"] == first
    # The hold survives the self-check of later renew runs, with a warning, until a new upload.
    held = certbot_runner.run(*RENEW)
    assert "self-healing is paused" in held.stderr
    assert imperva.held(101)["serialNumber"] == first
    certbot_runner.run("install", "--cert-name", "www.example.test", *plugin_args)
    assert imperva.held(101)["serialNumber"] == second


def test_rollback_without_history_is_a_clear_error(certbot_runner, pebble, imperva, plugin_args):
    obtain(certbot_runner, pebble, plugin_args)
    result = certbot_runner.run("rollback", "--checkpoints", "1", *plugin_args, check=False)
    assert result.returncode != 0 and "nothing that far back" in result.stderr
    assert "Traceback" not in result.stderr


def test_redirect_is_turned_on_only_when_asked(certbot_runner, pebble, imperva, plugin_args):
    obtain(certbot_runner, pebble, plugin_args)
    assert imperva.sites[101].redirect_http_to_https is False
    assert imperva.calls("performance/advanced") == []
    result = certbot_runner.run("install", "--cert-name", "www.example.test", *plugin_args,
                                "--redirect")
    assert imperva.sites[101].redirect_http_to_https is True
    assert len(imperva.calls("performance/advanced")) == 1  # once per site, not per name
    assert "HTTP is now redirected to HTTPS" in result.stdout


def test_hsts_is_reported_unsupported(certbot_runner, pebble, imperva, plugin_args):
    result = obtain(certbot_runner, pebble, plugin_args, "--hsts")
    assert "Option hsts is not supported by the selected installer" in result.stderr


def test_dry_run_with_a_revoked_key_fails_clearly_and_uploads_nothing(
        certbot_runner, pebble, imperva, plugin_args, credentials):
    obtain(certbot_runner, pebble, plugin_args)
    ok = certbot_runner.run("renew", "--dry-run", "--no-random-sleep-on-renew")
    assert "Imperva: the API key works; reachable: site 101 (www.example.test)" in ok.stdout
    write_credentials(credentials, imperva.api_id, "revoked-key")
    imperva.clear()
    result = certbot_runner.run("renew", "--dry-run", "--no-random-sleep-on-renew", check=False)
    assert result.returncode != 0
    assert "Dry run: Imperva did not accept the API id and key" in result.stderr
    assert "Traceback" not in result.stderr
    assert imperva.uploads() == []
    assert "installer = incapsula" in certbot_runner.renewal_conf("www.example.test")


def test_dry_run_catches_a_removed_site(certbot_runner, pebble, imperva, plugin_args):
    obtain(certbot_runner, pebble, plugin_args, "--incapsula-site-id", "101")
    del imperva.sites[101]
    result = certbot_runner.run("renew", "--dry-run", "--no-random-sleep-on-renew", check=False)
    assert result.returncode != 0 and "res 9413" in result.stderr


def test_status_view_exit_codes(certbot_runner, pebble, imperva, plugin_args, credentials):
    obtain(certbot_runner, pebble, plugin_args)
    imperva.clear()
    synced = certbot_runner.status()
    assert synced.returncode == 0, synced.stdout + synced.stderr
    assert "www.example.test  site 101 (www.example.test)  IN SYNC" in synced.stdout
    assert endpoints(imperva) == ["sites/list"]  # read-only: one listing page, no upload
    other = drift(imperva)
    drifted = certbot_runner.status("--json")
    assert drifted.returncode == 1
    assert '"state": "drifted"' in drifted.stdout
    assert imperva.held(101)["serialNumber"] == other  # the view changed nothing
    write_credentials(credentials, imperva.api_id, "revoked-key")
    unreachable = certbot_runner.status()
    assert unreachable.returncode == 2 and "res 9411" in unreachable.stdout
    assert "Traceback" not in unreachable.stdout + unreachable.stderr


def test_deployment_records_hold_no_secret_and_are_private(certbot_runner, pebble, imperva,
                                                           plugin_args):
    import json
    import stat
    obtain(certbot_runner, pebble, plugin_args)
    state = certbot_runner.config_dir / "incapsula" / "state.json"
    assert stat.S_IMODE(state.stat().st_mode) == 0o600
    entry = json.loads(state.read_text())["lineages"]["www.example.test"]
    (deployment,) = entry["history"]
    assert deployment["site_id"] == 101 and deployment["outcome"] == "ok"
    assert deployment["archive_version"] == 1 and deployment["serial"] == live_serial(certbot_runner)
    assert entry["sites"]["targets"] == [{"site_id": 101, "domain": "www.example.test",
                                          "names": ["www.example.test", "example.test"]}]


def test_certbot_enhance_redirect_on_an_existing_lineage(certbot_runner, pebble, imperva, plugin_args):
    obtain(certbot_runner, pebble, plugin_args)
    imperva.clear()
    result = certbot_runner.run("enhance", "--cert-name", "www.example.test", "--redirect",
                                *plugin_args)
    assert imperva.sites[101].redirect_http_to_https is True
    # The sites come from the records: no discovery, one call for the one site.
    assert endpoints(imperva) == ["sites/performance/advanced"]
    assert "HTTP is now redirected to HTTPS" in result.stdout
