"""End to end, issue 2: real certbot + pebble + the Imperva test double, on loopback."""
from __future__ import annotations

import base64
import os
import re
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa

NAMES = ["-d", "www.example.test", "-d", "example.test"]


def issue(certbot_runner, pebble, plugin_args, *extra):
    return certbot_runner.run("run", "-a", "webroot", "-w", pebble.webroot, *plugin_args, *NAMES,
                              *extra)


def leaf_serial(certbot_runner, name="www.example.test") -> int:
    return x509.load_pem_x509_certificate((certbot_runner.live(name) / "cert.pem").read_bytes()).serial_number


def test_run_uploads_once_per_site_with_ecc_and_reports(certbot_runner, pebble, imperva, plugin_args):
    result = issue(certbot_runner, pebble, plugin_args)
    uploads = imperva.uploads()
    # certbot calls deploy_cert once per name; the site still gets exactly one upload.
    assert [int(u.form["site_id"]) for u in uploads] == [101]
    assert uploads[0].form["auth_type"] == "ECC"
    live = certbot_runner.live("www.example.test")
    assert base64.b64decode(uploads[0].form["certificate"]) == (live / "fullchain.pem").read_bytes()
    assert uploads[0].form["input_hash"].startswith("sha256:")
    assert uploads[0].content_type.startswith("application/x-www-form-urlencoded")
    assert all(call.query == "" for call in imperva.requests)
    held = imperva.held(101)
    assert held is not None and held["serialNumber"] == format(leaf_serial(certbot_runner), "X")
    assert imperva.held(102) is None
    assert "Imperva site 101 (www.example.test) chosen for www.example.test, example.test" in result.stdout
    assert re.search(r"Imperva site 101 \(www\.example\.test\): uploaded; expires \d{4}-\d\d-\d\d "
                     r"\d\d:\d\d UTC; active: yes; no error flags", result.stdout), result.stdout
    conf = certbot_runner.renewal_conf("www.example.test")
    assert "installer = incapsula" in conf
    assert re.search(r"^incapsula_credentials = /\S+incapsula\.ini$", conf, re.M), conf
    assert imperva._api_key not in conf


def test_names_on_two_sites_upload_to_both(certbot_runner, pebble, imperva, plugin_args):
    result = certbot_runner.run("run", "-a", "webroot", "-w", pebble.webroot, *plugin_args,
                                "-d", "www.example.test", "-d", "shop.example.test")
    assert sorted(int(u.form["site_id"]) for u in imperva.uploads()) == [101, 102]
    assert "Imperva site 102 (shop.example.test): uploaded" in result.stdout
    # The certificate does not cover example.test, which site 101 also serves: a visible warning.
    assert "coverageError: the certificate does not cover every domain of this site" in result.stdout
    assert "WARNING" in result.stdout + result.stderr


def test_renew_uploads_the_new_certificate(certbot_runner, pebble, imperva, plugin_args):
    issue(certbot_runner, pebble, plugin_args)
    first = leaf_serial(certbot_runner)
    imperva.clear()
    result = certbot_runner.run("renew", "--force-renewal", "--no-random-sleep-on-renew")
    second = leaf_serial(certbot_runner)
    assert second != first
    assert [int(u.form["site_id"]) for u in imperva.uploads()] == [101]
    assert imperva.held(101)["serialNumber"] == format(second, "X")
    assert "Imperva site 101 (www.example.test): uploaded" in result.stdout
    # Discovery was remembered: a renewal costs the pre-flight's look at the site's DNS
    # instructions (where its edge is), a look at what the site holds (to put it back should
    # Imperva flag the new one), one upload and one read-back, nothing more: no listing.
    assert [c.path.rsplit("/v1/", 1)[1] for c in imperva.requests] == [
        "sites/status", "sites/status", "sites/customCertificate/upload", "sites/status"]


def test_rsa_lineage_uploads_with_rsa_auth_type(certbot_runner, pebble, imperva, plugin_args):
    issue(certbot_runner, pebble, plugin_args, "--key-type", "rsa")
    key = (certbot_runner.live("www.example.test") / "cert.pem").read_bytes()
    assert isinstance(x509.load_pem_x509_certificate(key).public_key(), rsa.RSAPublicKey)
    assert [u.form["auth_type"] for u in imperva.uploads()] == ["RSA"]
    assert imperva.held(101)["authType"] == "RSA"


def test_install_cert_name_uploads_again(certbot_runner, pebble, imperva, plugin_args):
    certbot_runner.run("certonly", "-a", "webroot", "-w", pebble.webroot, *NAMES)
    assert imperva.requests == []
    result = certbot_runner.run("install", "--cert-name", "www.example.test", *plugin_args)
    assert [int(u.form["site_id"]) for u in imperva.uploads()] == [101]
    assert "Imperva site 101 (www.example.test): uploaded" in result.stdout
    certbot_runner.run("install", "--cert-name", "www.example.test", *plugin_args)
    assert len(imperva.uploads(101)) == 2


def test_settings_from_cli_ini_only(certbot_runner, pebble, imperva, credentials):
    cli_ini = (f"installer = incapsula\nincapsula-credentials = {credentials}\n"
               f"incapsula-api-url = {imperva.url}\nincapsula-allow-staging = true\n"
               "incapsula-site-id = 101\nincapsula-edge-wait = 0\n")
    certbot_runner.run("run", "-a", "webroot", "-w", pebble.webroot, *NAMES, cli_ini=cli_ini)
    assert [int(u.form["site_id"]) for u in imperva.uploads()] == [101]
    # Explicit site ids skip discovery altogether.
    assert imperva.calls("sites/list") == []
    conf = certbot_runner.renewal_conf("www.example.test")
    assert "installer = incapsula" in conf and "incapsula_site_id = 101" in conf


def test_relative_credentials_path_is_stored_absolute(certbot_runner, pebble, imperva, plugin_args,
                                                      credentials):
    args = list(plugin_args)
    args[args.index(str(credentials))] = os.path.relpath(credentials)
    issue(certbot_runner, pebble, args)
    conf = certbot_runner.renewal_conf("www.example.test")
    assert f"incapsula_credentials = {credentials}" in conf


def test_staging_certificate_is_refused_without_the_flag(certbot_runner, pebble, imperva, plugin_args):
    args = [a for a in plugin_args if a != "--incapsula-allow-staging"]
    result = certbot_runner.run("run", "-a", "webroot", "-w", pebble.webroot, *args, *NAMES,
                                check=False)
    assert result.returncode != 0
    assert "staging or test CA" in result.stderr and "--incapsula-allow-staging" in result.stderr
    assert imperva.uploads() == []
    assert "Traceback" not in result.stdout + result.stderr


def test_plugin_is_listed_with_its_description(certbot_runner):
    result = certbot_runner.run("plugins")
    assert "* incapsula" in result.stdout
    assert "Upload certificates to Imperva Cloud WAF (Incapsula) sites" in result.stdout


def test_renewal_config_keeps_no_secret(certbot_runner, pebble, imperva, plugin_args, credentials):
    issue(certbot_runner, pebble, plugin_args)
    key_body = Path(certbot_runner.live("www.example.test") / "privkey.pem").read_text().splitlines()[1]
    for path in certbot_runner.config_dir.rglob("*"):
        if path.is_file() and "archive" not in path.parts and path.name != "privkey.pem":
            text = path.read_text(errors="replace")
            assert imperva._api_key not in text, path
            assert key_body not in text, path


def test_plugins_prepare_lists_the_plugin_as_misconfigured_without_breaking(certbot_runner):
    # certbot prepares every plugin here: an unconfigured incapsula must not stop the listing.
    result = certbot_runner.run("plugins", "--prepare")
    assert "* incapsula" in result.stdout and "* webroot" in result.stdout
    assert "--incapsula-credentials PATH is required" in result.stdout
