"""End to end, issue 3: every foreseeable failure ends in one clear message, a non-zero exit and
nothing lost (Imperva's certificate as it was, the lineage and its renewal config intact)."""
from __future__ import annotations

import os
import shutil

import pytest
from certmaker import make_chain, write_lineage
from conftest import write_credentials
from imperva_server import Site

NAMES = ["-d", "www.example.test", "-d", "example.test"]


def obtain(certbot_runner, pebble, plugin_args, *extra, check=True):
    return certbot_runner.run("run", "-a", "webroot", "-w", pebble.webroot, *plugin_args, *NAMES,
                              *extra, check=check)


def with_option(args, flag, value):
    args = list(args)
    if flag in args:
        args[args.index(flag) + 1] = value
    else:
        args += [flag, value]
    return args


def assert_clean_failure(result, *phrases):
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "Traceback" not in output
    for phrase in phrases:
        assert phrase in output, output


# ----- credentials and options: refused in prepare(), before anything is issued or sent --------

@pytest.mark.parametrize("content, phrase", [
    (None, "does not exist"),
    ("dir", "is a directory"),
    ("", 'Property "incapsula_api_id" not found'),
    ("incapsula_api_id = 12345\n", 'Property "incapsula_api_key" not found'),
    ("incapsula_api_id = 12345\nincapsula_api_key =\n", 'Property "incapsula_api_key" not set'),
    ("incapsula_api_id = abc\nincapsula_api_key = x\n", "incapsula_api_id in"),
    ("incapsula_api_id = 12345\n[broken\nincapsula_api_key = test-key-0123456789abcdef\n",
     "is not a valid INI file (line 2)"),
])
def test_bad_credentials_file_stops_before_issuance(certbot_runner, pebble, imperva, plugin_args,
                                                    tmp_path, content, phrase):
    path = tmp_path / "bad.ini"
    if content == "dir":
        path.mkdir()
    elif content is not None:
        path.write_text(content)
        os.chmod(path, 0o600)
    result = obtain(certbot_runner, pebble, with_option(plugin_args, "--incapsula-credentials",
                                                        str(path)), check=False)
    assert_clean_failure(result, phrase)
    assert not certbot_runner.live("www.example.test").exists()  # nothing issued
    assert imperva.requests == []


def test_world_readable_credentials_warn_but_work(certbot_runner, pebble, imperva, plugin_args,
                                                  credentials):
    os.chmod(credentials, 0o644)
    result = obtain(certbot_runner, pebble, plugin_args)
    assert "Unsafe permissions on credentials configuration file" in result.stderr
    assert len(imperva.uploads(101)) == 1


def test_missing_credentials_option(certbot_runner, pebble, imperva, plugin_args):
    args = plugin_args[:2] + plugin_args[4:]
    result = obtain(certbot_runner, pebble, args, check=False)
    assert_clean_failure(result, "--incapsula-credentials PATH is required")


@pytest.mark.parametrize("flag, value, phrase", [
    ("--incapsula-site-id", "www.example.test", "is not a site id"),
    ("--incapsula-api-url", "http://api.example.test", "is not https://HOST"),
    ("--incapsula-api-url", "ftp://127.0.0.1", "is not https://HOST"),
    ("--incapsula-preflight", "maybe", "is 'maybe', which is neither true nor false"),
    ("--incapsula-edge-wait", "soon", "is not a number of seconds from 0 to 3600"),
])
def test_bad_options_stop_before_issuance(certbot_runner, pebble, imperva, plugin_args, flag, value,
                                          phrase):
    result = obtain(certbot_runner, pebble, with_option(plugin_args, flag, value), check=False)
    assert_clean_failure(result, phrase)
    assert imperva.requests == []


# ----- Imperva refusing: the certificate is issued, the upload fails loudly -------------------

def test_wrong_api_key(certbot_runner, pebble, imperva, plugin_args, tmp_path):
    creds = write_credentials(tmp_path / "wrong.ini", imperva.api_id, "not-the-key")
    result = obtain(certbot_runner, pebble, with_option(plugin_args, "--incapsula-credentials",
                                                        str(creds)), check=False)
    assert_clean_failure(result, "res 9411", "check incapsula_api_id and incapsula_api_key",
                         "certbot install --cert-name www.example.test")
    assert imperva.uploads() == []


@pytest.mark.parametrize("setup, phrase", [
    (lambda s: setattr(s, "permissions", False), "'Manage SSL Certificates' permission"),
    (lambda s: setattr(s.sites[101], "plan_custom_certs", False), "plan does not include custom"),
    (lambda s: setattr(s.sites[101], "ssl", False), "does not have SSL enabled"),
])
def test_imperva_refusals_name_the_fix(certbot_runner, pebble, imperva, plugin_args, setup, phrase):
    setup(imperva)
    result = obtain(certbot_runner, pebble, plugin_args, check=False)
    assert_clean_failure(result, phrase, "site 101")
    assert imperva.held(101) is None


def test_unknown_site_id(certbot_runner, pebble, imperva, plugin_args):
    result = obtain(certbot_runner, pebble, plugin_args + ["--incapsula-site-id", "999"],
                    check=False)
    assert_clean_failure(result, "res 9413", "check --incapsula-site-id")


def test_site_of_another_account(certbot_runner, pebble, imperva, plugin_args):
    imperva.add_site(Site(301, "other.example.test", account_id=2))
    result = obtain(certbot_runner, pebble, plugin_args + ["--incapsula-site-id", "301"],
                    check=False)
    assert_clean_failure(result, "res 9413")


def test_no_name_matches_a_site(certbot_runner, pebble, imperva, plugin_args):
    result = certbot_runner.run("run", "-a", "webroot", "-w", pebble.webroot, *plugin_args,
                                "-d", "nowhere.example.test", "-d", "else.example.test", check=False)
    assert_clean_failure(result, "No Imperva site serves any of these names: nowhere.example.test, "
                                 "else.example.test")
    assert imperva.uploads() == []


def test_unmatched_names_are_listed_in_a_warning(certbot_runner, pebble, imperva, plugin_args):
    result = certbot_runner.run("run", "-a", "webroot", "-w", pebble.webroot, *plugin_args,
                                *NAMES, "-d", "nowhere.example.test")
    assert "no site serves nowhere.example.test" in result.stderr
    assert len(imperva.uploads(101)) == 1


def test_a_name_on_several_sites_is_an_error(certbot_runner, pebble, imperva, plugin_args):
    imperva.add_site(Site(103, "www2.example.test", display_name="www.example.test"))
    result = obtain(certbot_runner, pebble, plugin_args, check=False)
    assert_clean_failure(result, "www.example.test -> sites 101, 103", "--incapsula-site-id")
    assert imperva.uploads() == []


def test_one_site_failing_does_not_stop_the_others(certbot_runner, pebble, imperva, plugin_args):
    imperva.sites[102].ssl = False
    result = certbot_runner.run("run", "-a", "webroot", "-w", pebble.webroot, *plugin_args,
                                *NAMES, "-d", "shop.example.test", check=False)
    assert_clean_failure(result, "Imperva site 101 (www.example.test): uploaded",
                         "Imperva site 102 (shop.example.test): FAILED", "1 of 2 site(s) failed")
    assert len(imperva.uploads(101)) == 1 and imperva.held(102) is None


# ----- the API misbehaving: heal by retrying, or fail clearly -----------------------------------

@pytest.mark.parametrize("kind", ["503", "html200", "res3015", "reset", "badjson"])
def test_transient_faults_heal(certbot_runner, pebble, imperva, plugin_args, kind):
    imperva.inject("customCertificate/upload", kind, count=1)
    result = obtain(certbot_runner, pebble, plugin_args)
    assert "retrying in" in result.stderr
    assert len(imperva.uploads(101)) == 1


def test_rate_limit_honours_retry_after(certbot_runner, pebble, imperva, plugin_args):
    imperva.inject("sites/list", "429", count=1, retry_after=2)
    result = obtain(certbot_runner, pebble, plugin_args)
    assert "HTTP 429 (rate limited); retrying in 2.0 s" in result.stderr
    lists = imperva.calls("sites/list")
    assert lists[1].time - lists[0].time >= 1.9


def test_unreachable_api_fails_after_bounded_retries(certbot_runner, pebble, imperva, plugin_args):
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed once the with ends: connections are refused
    args = with_option(plugin_args, "--incapsula-api-url", f"http://127.0.0.1:{port}")
    result = obtain(certbot_runner, pebble, args, check=False)
    assert_clean_failure(result, "did not answer sites/list usefully after 5 attempt(s)",
                         "connection failed")


# ----- bad certificate files (certbot install with explicit paths) -----------------------------

@pytest.mark.parametrize("damage, phrase", [
    # certbot itself reads the key first on install: its own message is clear enough.
    ("missing-key", "Error while reading private key"),
    ("empty-cert", "is empty"),
    ("not-pem", "holds no PEM certificate"),
    ("other-key", "does not belong to the certificate"),
    ("expired", "expired on"),
    ("encrypted", "is encrypted"),
])
def test_bad_certificate_files_upload_nothing(certbot_runner, imperva, plugin_args, tmp_path,
                                              damage, phrase):
    chain = make_chain(["www.example.test", "example.test"], expired=(damage == "expired"))
    paths = write_lineage(tmp_path / "files", chain)
    if damage == "missing-key":
        os.unlink(paths["privkey"])
    elif damage == "empty-cert":
        open(paths["fullchain"], "w").close()
    elif damage == "not-pem":
        open(paths["fullchain"], "w").write("hello\n")
    elif damage == "other-key":
        shutil.copy(write_lineage(tmp_path / "other", make_chain(["www.example.test"]))["privkey"],
                    paths["privkey"])
    elif damage == "encrypted":
        from certmaker import pkcs8_pem
        open(paths["privkey"], "wb").write(pkcs8_pem(chain.key, b"secret"))
    result = certbot_runner.run("install", *plugin_args, "--cert-path", paths["cert"],
                                "--key-path", paths["privkey"], "--fullchain-path",
                                paths["fullchain"], "-d", "www.example.test", check=False)
    assert_clean_failure(result, phrase)
    assert imperva.uploads() == []


# ----- during renew: fail the lineage visibly, never detach the installer ------------------------

def test_renew_with_missing_credentials_fails_and_keeps_the_installer(
        certbot_runner, pebble, imperva, plugin_args, credentials):
    obtain(certbot_runner, pebble, plugin_args)
    before = certbot_runner.renewal_conf("www.example.test")
    os.unlink(credentials)
    result = certbot_runner.run("renew", "--force-renewal", "--no-random-sleep-on-renew",
                                check=False)
    assert_clean_failure(result, "does not exist")
    assert certbot_runner.renewal_conf("www.example.test") == before
    assert "installer = incapsula" in before


def test_renew_upload_refused_fails_the_lineage_and_keeps_the_config(
        certbot_runner, pebble, imperva, plugin_args):
    obtain(certbot_runner, pebble, plugin_args)
    held = imperva.held(101)
    imperva.sites[101].ssl = False
    result = certbot_runner.run("renew", "--force-renewal", "--no-random-sleep-on-renew",
                                check=False)
    assert_clean_failure(result, "does not have SSL enabled", "1 renew failure(s)")
    assert "installer = incapsula" in certbot_runner.renewal_conf("www.example.test")
    assert imperva.held(101) == held


# ----- issue 20: a redirect never carries the key anywhere -----------------------------------

def test_a_redirected_upload_sends_nothing_elsewhere_and_fails_the_run(
        certbot_runner, pebble, imperva, plugin_args):
    from imperva_server import UPLOAD, Catcher

    obtain(certbot_runner, pebble, plugin_args)
    held = imperva.held(101)["serialNumber"]
    with Catcher() as catcher:
        host = catcher.url  # http://127.66.x.y:PORT, plain http on another loopback address
        target = host + "/api/prov/v1/" + UPLOAD + "?from=imperva"
        imperva.redirect(UPLOAD, 307, target)
        renewed = obtain(certbot_runner, pebble, plugin_args, "--force-renewal", check=False)
        imperva.redirect(UPLOAD, 302, target)
        installed = certbot_runner.run("install", "--cert-name", "www.example.test", *plugin_args,
                                       check=False)
    assert catcher.connections == 0 and catcher.bytes_received == 0  # neither the key nor the private key
    for result, status in ((renewed, 307), (installed, 302)):
        assert result.returncode == 1, result.stdout + result.stderr
        assert_clean_failure(result, f"Imperva's API answered {UPLOAD} for site 101 with a "
                                     f"redirect (HTTP {status} to {host}), which is never followed")
        assert "?from=imperva" not in result.stdout + result.stderr
    assert imperva.uploads() == imperva.uploads()[:1]  # only the first run's upload took effect
    assert imperva.held(101)["serialNumber"] == held  # the site keeps its certificate
    assert len(imperva.calls(UPLOAD)) == 3  # one each: a redirect is not retried
