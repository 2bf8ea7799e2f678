"""Settings are parsed strictly, the same way from flags, cli.ini, renewal configs and argv."""
from __future__ import annotations

import pytest

from certbot_incapsula import settings
from certbot_incapsula.settings import SettingsError

SOURCE = "{key} in /etc/letsencrypt/renewal/x.conf"


def parse(**values):
    values.setdefault("credentials", "/etc/letsencrypt/incapsula.ini")
    return settings.parse({k.replace("_", "-"): v for k, v in values.items()}.get, SOURCE)


@pytest.mark.parametrize("value, ids", [
    (None, ()), ("", ()), ("101", (101,)), ("101, 102,101", (101, 102)), (["7", "8"], (7, 8))])
def test_parse_site_ids(value, ids):
    assert settings.parse_site_ids(value) == ids


@pytest.mark.parametrize("value", ["abc", "12x", "-4", "0", "1.5"])
def test_parse_site_ids_refuses_non_numbers(value):
    with pytest.raises(SettingsError, match="is not a site id"):
        settings.parse_site_ids(value)


@pytest.mark.parametrize("value, expected", [
    (True, True), (False, False), ("True", True), ("false", False), ("FALSE", False), ("no", False),
    ("0", False), ("yes", True), ("1", True), ("On", True), (" off ", False)])
def test_booleans_read_as_certbot_writes_them(value, expected):
    assert parse(allow_staging=value).allow_staging is expected


@pytest.mark.parametrize("value", ["maybe", "", "2", "ja"])
def test_a_boolean_that_is_neither_is_an_error_naming_file_and_key(value):
    with pytest.raises(SettingsError) as raised:
        parse(allow_staging=value)
    assert str(raised.value).startswith(
        "incapsula_allow_staging in /etc/letsencrypt/renewal/x.conf is ")
    assert "write true or false" in str(raised.value)


def test_credentials_are_required_and_made_absolute(monkeypatch, tmp_path):
    with pytest.raises(SettingsError, match=r"incapsula_credentials in .* is required"):
        settings.parse({}.get, SOURCE)
    monkeypatch.chdir(tmp_path)
    assert parse(credentials="rel.ini").credentials == str(tmp_path / "rel.ini")


@pytest.mark.parametrize("url, phrase", [
    ("https://my.imperva.com/api/prov/v1", "has a path (/api/prov/v1)"),
    ("https://my.imperva.com/api/prov/v1/", "has a path"),
    ("http://my.imperva.com", "is not https://HOST"),
    ("https://my.imperva.com?x=1", "no user:password@, query or fragment"),
])
def test_api_url_slips_name_the_option_and_the_form(url, phrase):
    with pytest.raises(SettingsError) as raised:
        settings.parse({"credentials": "/c.ini", "api-url": url}.get, "--incapsula-{option}")
    assert str(raised.value).startswith("--incapsula-api-url: ")
    assert phrase in str(raised.value)


def test_account_id_and_edge_wait_are_numbers():
    assert parse(account_id="42").account_id == 42
    with pytest.raises(SettingsError, match="is not an account id"):
        parse(account_id="acme")
    assert parse(edge_wait="0").edge_wait == 0
    with pytest.raises(SettingsError, match="is not a number of seconds"):
        parse(edge_wait="-1")


def test_stored_settings_read_back_the_same():
    chosen = parse(site_id="7,8", account_id="3", allow_staging="yes", api_url="https://x.test")
    again = settings.parse(chosen.stored().get, SOURCE)
    assert again == chosen


def test_overrides_win_and_none_leaves_a_value():
    chosen = parse(site_id="7")
    assert chosen.with_overrides({"site-id": None, "allow-staging": True}, SOURCE) == parse(
        site_id="7", allow_staging=True)


def test_preflight_words_and_the_installer_s_help_default():
    assert parse(preflight="off").preflight is False and parse().preflight is True
    assert parse(preflight="ON").stored()["preflight"] == "on"
    with pytest.raises(SettingsError, match="on/off"):
        parse(preflight="maybe")
    from certbot_incapsula import installer

    # The installer writes the default out rather than import this module on every certbot command.
    assert installer.EDGE_WAIT_HELP_DEFAULT == settings.EDGE_WAIT_DEFAULT == parse().edge_wait
