"""The Imperva API double, exercised over real HTTP with `requests`.

These tests pin the double to the contract in imperva-api.md, so that the plugin's
tests, which only ever see this double, see the Imperva the contract describes.
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import json
import os
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List

import certmaker
import pytest
import requests
from certmaker import Chain, make_chain
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from imperva_server import ImpervaServer, Recorded, Site

API_ID = "4242"
API_KEY = "s3cr3t-test-key-do-not-print"
AUTH = {"x-API-Id": API_ID, "x-API-Key": API_KEY}
UPLOAD = "/api/prov/v1/sites/customCertificate/upload"
REMOVE = "/api/prov/v1/sites/customCertificate/remove"
LIST = "/api/prov/v1/sites/list"
STATUS = "/api/prov/v1/sites/status"
VERIFY = "/api/prov/v1/account/verify"
PERFORMANCE = "/api/prov/v1/sites/performance/advanced"
WWW, SHOP, FOREIGN = 101, 102, 900


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def upload_form(chain: Chain, site_id: int = WWW, **extra: str) -> Dict[str, str]:
    """A correct upload of `chain` (auth_type matching its key), with `extra` overrides."""
    form = {
        "site_id": str(site_id),
        "certificate": b64(chain.fullchain_pem),
        "private_key": b64(chain.key_pem),
        "auth_type": "RSA" if isinstance(chain.key, rsa.RSAPrivateKey) else "ECC",
    }
    form.update(extra)
    return form


def make_server(**kwargs: Any) -> ImpervaServer:
    server = ImpervaServer(API_ID, API_KEY, **kwargs)
    server.add_site(Site(WWW, "www.example.test", ["example.test"]))
    server.add_site(Site(SHOP, "shop.example.test"))
    server.add_site(Site(FOREIGN, "other.example.test", account_id=2))
    return server


@pytest.fixture
def server() -> Iterator[ImpervaServer]:
    with make_server() as running:
        yield running


def post(
    server: ImpervaServer, path: str, data: Dict[str, str] | None = None, **kwargs: Any
) -> requests.Response:
    kwargs.setdefault("headers", AUTH)
    kwargs.setdefault("timeout", 10)
    return requests.post(server.url + path, data=data if data is not None else {}, **kwargs)


def api(server: ImpervaServer, path: str, data: Dict[str, str] | None = None) -> Dict[str, Any]:
    """POST and return the JSON answer, after the checks every answer must pass."""
    response = post(server, path, data)
    assert response.headers["Content-Type"].startswith("application/json")
    body: Dict[str, Any] = response.json()
    assert isinstance(body["res"], int)
    assert isinstance(body["res_message"], str)
    assert isinstance(body["debug_info"], dict) and "id-info" in body["debug_info"]
    assert API_KEY not in response.text
    return body


def assert_invalid(body: Dict[str, Any], *words: str) -> None:
    assert body["res"] == 2, body
    assert body["res_message"] == "Invalid input"
    error = body["debug_info"]["Error"]
    for word in words:
        assert word in error, (word, error)


# ----- transport, envelope, authentication ---------------------------------


def test_url_is_loopback_without_trailing_slash(server: ImpervaServer) -> None:
    assert server.url.startswith("http://127.0.0.1:")
    assert not server.url.endswith("/")
    assert int(server.url.rsplit(":", 1)[1]) > 0


def test_url_before_start_raises() -> None:
    with pytest.raises(RuntimeError):
        _ = ImpervaServer().url


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"x-API-Id": API_ID},
        {"x-API-Key": API_KEY},
        {"x-API-Id": API_ID, "x-API-Key": "wrong"},
        {"x-API-Id": "9999", "x-API-Key": API_KEY},
    ],
    ids=["none", "no-key", "no-id", "wrong-key", "wrong-id"],
)
def test_bad_credentials_answer_401_9411(server: ImpervaServer, headers: Dict[str, str]) -> None:
    response = post(server, VERIFY, {}, headers=headers)
    assert response.status_code == 401
    assert response.json() == {
        "res": 9411,
        "res_message": "Authentication parameters missing or incorrect",
        "debug_info": {"id-info": "13008"},
    }


def test_a_disabled_key_is_refused_with_9418_on_every_call(server: ImpervaServer) -> None:
    server.key_disabled = True  # as Imperva creates new keys, until switched on in the console
    for endpoint in (VERIFY, LIST, STATUS):
        response = post(server, endpoint, {"site_id": "101"})
        assert response.status_code == 200
        assert response.json()["res"] == 9418 and response.json()["res_message"] == "Disabled API Key"
    assert post(server, VERIFY, {}, headers={"x-API-Id": API_ID, "x-API-Key": "wrong"}).status_code == 401
    server.key_disabled = False
    assert post(server, VERIFY, {}).json()["res"] == 0


def test_credentials_in_the_form_body_do_not_authenticate(server: ImpervaServer) -> None:
    response = post(server, VERIFY, {"api_id": API_ID, "api_key": API_KEY}, headers={})
    assert response.status_code == 401
    assert server.requests[-1].form["api_key"] == "<redacted>"


def test_header_names_are_case_insensitive(server: ImpervaServer) -> None:
    response = post(server, VERIFY, {}, headers={"X-API-ID": API_ID, "x-api-key": API_KEY})
    assert response.status_code == 200
    assert response.json()["res"] == 0


def test_account_verify(server: ImpervaServer) -> None:
    body = api(server, VERIFY)
    assert body["res"] == 0 and body["res_message"] == "OK"
    assert body["account_id"] == 1
    assert body["account_name"] == "Test account"
    assert body["plan_name"] == "Enterprise"
    assert api(server, VERIFY, {"account_id": "7"})["res"] == 9403


def test_unknown_path_is_404_json(server: ImpervaServer) -> None:
    for path in ("/api/prov/v1/sites/nope", "/api/prov/v2/sites/101", "/"):
        response = post(server, path, {})
        assert response.status_code == 404
        assert response.json()["res"] == 1
        assert response.json()["res_message"] == "Unknown path"


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH"])
def test_non_post_is_405(server: ImpervaServer, method: str) -> None:
    response = requests.request(method, server.url + STATUS, headers=AUTH, timeout=10)
    assert response.status_code == 405
    assert response.headers["Allow"] == "POST"
    assert response.json()["res"] == 1


def test_json_body_is_refused(server: ImpervaServer) -> None:
    response = requests.post(server.url + STATUS, json={"site_id": WWW}, headers=AUTH, timeout=10)
    assert response.status_code == 200
    body = response.json()
    assert body["res"] == 2
    assert body["res_message"] == "Invalid input: form body required"
    assert "x-www-form-urlencoded" in body["debug_info"]["Error"]


def test_multipart_body_is_refused(server: ImpervaServer) -> None:
    response = requests.post(
        server.url + STATUS, files={"site_id": (None, str(WWW))}, headers=AUTH, timeout=10
    )
    assert response.json()["res"] == 2


def test_bodiless_post_is_an_empty_form(server: ImpervaServer) -> None:
    # requests sends no Content-Type for data={}: account/verify needs no parameter.
    assert api(server, VERIFY)["res"] == 0
    assert server.requests[-1].content_type == ""


@pytest.mark.parametrize(
    "query",
    [
        f"api_id={API_ID}&api_key={API_KEY}",
        f"x-API-Key={API_KEY}",
        "certificate=AAAA",
        "private_key=AAAA",
        "passphrase=hunter2",
    ],
)
def test_secrets_in_the_query_string_are_refused(server: ImpervaServer, query: str) -> None:
    response = requests.post(
        f"{server.url}{STATUS}?{query}", data={"site_id": str(WWW)}, headers=AUTH, timeout=10
    )
    body = response.json()
    assert body["res"] == 2
    assert body["res_message"] == "credentials or key material in the URL are refused"
    assert API_KEY not in response.text
    recorded = server.requests[-1]
    assert recorded.res == 2
    assert API_KEY not in recorded.query and "hunter2" not in recorded.query


def test_query_refusal_comes_before_auth(server: ImpervaServer) -> None:
    # A client trying the pre-2024 query-string auth must learn why, not just "401".
    response = requests.post(f"{server.url}{VERIFY}?api_id={API_ID}&api_key={API_KEY}", data={}, timeout=10)
    assert response.json()["res"] == 2


def test_harmless_query_string_is_recorded_raw(server: ImpervaServer) -> None:
    response = requests.post(f"{server.url}{VERIFY}?trace=1", data={}, headers=AUTH, timeout=10)
    assert response.json()["res"] == 0
    assert server.requests[-1].query == "trace=1"


def test_keep_alive_session_survives_errors_and_faults(server: ImpervaServer) -> None:
    # HTTP/1.1 keep-alive: every answer must be framed right, or the next one is garbage.
    server.inject("account/verify", "500")
    with requests.Session() as session:
        session.headers.update(AUTH)
        for verify_status in (500, 200):  # the fault, then normal
            assert session.post(server.url + "/nope", data={"a": "b"}, timeout=10).status_code == 404
            assert session.get(server.url + STATUS, timeout=10).status_code == 405
            assert session.post(server.url + VERIFY, data={}, timeout=10).status_code == verify_status
            body = session.post(server.url + STATUS, data={"site_id": str(WWW)}, timeout=10).json()
            assert body["res"] == 0


def test_chunked_form_body_is_read(server: ImpervaServer) -> None:
    headers = {**AUTH, "Content-Type": "application/x-www-form-urlencoded"}
    chunks = iter([b"site_id=", f"{SHOP}".encode()])  # a generator makes requests chunk
    response = requests.post(server.url + STATUS, data=chunks, headers=headers, timeout=10)
    assert response.json()["domain"] == "shop.example.test"
    assert server.requests[-1].form == {"site_id": str(SHOP)}


def test_head_gets_405_without_body(server: ImpervaServer) -> None:
    response = requests.head(server.url + STATUS, headers=AUTH, timeout=10)
    assert response.status_code == 405 and response.content == b""


def test_key_is_scrubbed_from_any_recorded_field(server: ImpervaServer) -> None:
    post(server, VERIFY, {"note": f"key is {API_KEY}"}, headers={**AUTH, "X-Debug": API_KEY})
    recorded = server.requests[-1]
    assert API_KEY not in repr(recorded)
    assert recorded.form["note"] == "key is <redacted>"
    assert recorded.headers["X-Debug"] == "<redacted>"


# ----- site_id --------------------------------------------------------------


@pytest.mark.parametrize("path", [UPLOAD, REMOVE, STATUS, PERFORMANCE])
@pytest.mark.parametrize("site_id", [None, "", "abc", "999", str(FOREIGN)])
def test_bad_site_id_is_9413(server: ImpervaServer, path: str, site_id: str | None) -> None:
    form = {} if site_id is None else {"site_id": site_id}
    body = api(server, path, form)
    assert body["res"] == 9413
    assert body["res_message"] == "Unknown/unauthorized site_id"
    assert "site_id" in body["debug_info"]["Error"]


# ----- upload: refusals before validation -----------------------------------


def test_upload_without_permission_is_9415(ec_chain: Chain) -> None:
    with make_server(permissions=False) as server:
        body = api(server, UPLOAD, upload_form(ec_chain))
        assert body["res"] == 9415 and body["res_message"] == "Operation not allowed"
        assert api(server, REMOVE, {"site_id": str(WWW)})["res"] == 9415
        perf = {"site_id": str(WWW), "param": "redirect_http_to_https", "value": "true"}
        assert api(server, PERFORMANCE, perf)["res"] == 9415
        # Reading still works: the permission is about changing things.
        assert api(server, STATUS, {"site_id": str(WWW)})["res"] == 0
        assert api(server, LIST)["res"] == 0
        assert server.held(WWW) is None and server.uploads() == []


def test_upload_to_site_without_ssl_is_4205(server: ImpervaServer, ec_chain: Chain) -> None:
    server.add_site(Site(103, "plain.example.test", ssl=False))
    body = api(server, UPLOAD, upload_form(ec_chain, 103))
    assert body["res"] == 4205 and body["res_message"] == "Site does not have SSL"
    assert "Error" in body["debug_info"]


def test_upload_without_plan_feature_is_9414(server: ImpervaServer, ec_chain: Chain) -> None:
    server.add_site(Site(104, "cheap.example.test", plan_custom_certs=False))
    body = api(server, UPLOAD, upload_form(ec_chain, 104))
    assert body["res"] == 9414 and body["res_message"] == "Feature not permitted"


# ----- upload: input validation ---------------------------------------------


def test_upload_ecc_success(server: ImpervaServer, ec_chain: Chain) -> None:
    body = api(server, UPLOAD, upload_form(ec_chain, input_hash="abc123"))
    assert body["res"] == 0 and body["res_message"] == "OK"
    details = body["debug_info"]["details"]
    assert details == {
        "active": True,
        "expirationDate": int(ec_chain.not_after.timestamp() * 1000),
        "revocationError": False,
        "validityError": False,
        "chainError": False,
        "coverageError": False,
    }
    assert "id-info" in body["debug_info"]
    assert len(server.uploads()) == 1 and len(server.uploads(WWW)) == 1
    assert server.uploads(SHOP) == []


def test_upload_rsa_success_with_default_auth_type(server: ImpervaServer, rsa_chain: Chain) -> None:
    form = upload_form(rsa_chain)
    del form["auth_type"]  # RSA is the default
    body = api(server, UPLOAD, form)
    assert body["res"] == 0
    assert body["debug_info"]["details"]["chainError"] is False  # RSA PKCS#1 v1.5 chain verified
    held = server.held(WWW)
    assert held is not None and held["authType"] == "RSA"


def test_ecc_key_without_auth_type_is_refused(server: ImpervaServer, ec_chain: Chain) -> None:
    form = upload_form(ec_chain)
    del form["auth_type"]
    assert_invalid(api(server, UPLOAD, form), "auth_type", "ECC")
    assert server.held(WWW) is None


def test_rsa_key_with_ecc_auth_type_is_refused(server: ImpervaServer, rsa_chain: Chain) -> None:
    assert_invalid(api(server, UPLOAD, upload_form(rsa_chain, auth_type="ECC")), "auth_type", "RSA")


@pytest.mark.parametrize("auth_type", ["DSA", "ecc", "rsa", "EC"])
def test_unknown_auth_type_is_refused(server: ImpervaServer, ec_chain: Chain, auth_type: str) -> None:
    assert_invalid(api(server, UPLOAD, upload_form(ec_chain, auth_type=auth_type)), "auth_type")


def test_key_not_matching_the_leaf_is_refused(server: ImpervaServer, ec_chain: Chain) -> None:
    other = make_chain(["www.example.test"])
    form = upload_form(ec_chain, private_key=b64(other.key_pem))
    assert_invalid(api(server, UPLOAD, form), "does not match")


def test_key_matching_an_intermediate_not_the_leaf_is_refused(server: ImpervaServer) -> None:
    # The key must match the FIRST certificate: a chain in the wrong order fails here.
    chain = make_chain(["www.example.test", "example.test"])
    form = upload_form(chain, certificate=b64(chain.chain_pem + chain.leaf_pem))
    assert_invalid(api(server, UPLOAD, form), "does not match")


@pytest.mark.parametrize(
    ("field", "value", "word"),
    [
        ("certificate", "", "certificate is missing"),
        ("certificate", "!!!not base64!!!", "certificate is not valid base64"),
        ("certificate", b64(b"hello world"), "certificate is not PEM"),
        ("private_key", "", "private_key is missing"),
        ("private_key", "%%%", "private_key is not valid base64"),
        ("private_key", b64(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"), "PEM"),
        ("private_key", b64(b"just text"), "private_key is not a PEM private key"),
    ],
)
def test_garbage_input_is_refused(
    server: ImpervaServer, ec_chain: Chain, field: str, value: str, word: str
) -> None:
    body = api(server, UPLOAD, {**upload_form(ec_chain), field: value})
    assert_invalid(body, word)
    assert server.uploads() == [] and server.held(WWW) is None


def test_missing_certificate_field_is_refused(server: ImpervaServer, ec_chain: Chain) -> None:
    form = upload_form(ec_chain)
    del form["certificate"]
    assert_invalid(api(server, UPLOAD, form), "certificate")


def test_certificate_passed_as_key_is_refused(server: ImpervaServer, ec_chain: Chain) -> None:
    form = upload_form(ec_chain, private_key=b64(ec_chain.leaf_pem))
    assert_invalid(api(server, UPLOAD, form), "private_key")


def test_der_certificate_is_refused(server: ImpervaServer, ec_chain: Chain) -> None:
    der = ec_chain.leaf.public_bytes(serialization.Encoding.DER)
    assert_invalid(api(server, UPLOAD, upload_form(ec_chain, certificate=b64(der))), "PEM")


def test_unencoded_plus_in_base64_is_refused(server: ImpervaServer, ec_chain: Chain) -> None:
    # A client that forgets to URL-encode sends "+" raw; the server reads it as a space.
    encoded = b64(ec_chain.fullchain_pem)
    raw = f"site_id={WWW}&auth_type=ECC&certificate={encoded}&private_key={b64(ec_chain.key_pem)}"
    headers = {**AUTH, "Content-Type": "application/x-www-form-urlencoded"}
    response = requests.post(server.url + UPLOAD, data=raw, headers=headers, timeout=10)
    if "+" in encoded:
        assert response.json()["res"] == 2
    else:  # rare, but then nothing went wrong
        assert response.json()["res"] == 0


def test_base64_with_line_breaks_is_accepted(server: ImpervaServer, ec_chain: Chain) -> None:
    wrapped = base64.encodebytes(ec_chain.fullchain_pem).decode()  # 76-column lines
    assert "\n" in wrapped
    assert api(server, UPLOAD, upload_form(ec_chain, certificate=wrapped))["res"] == 0


@pytest.mark.parametrize("key_type", ["ecdsa", "rsa"])
def test_traditional_key_formats_are_accepted(server: ImpervaServer, key_type: str) -> None:
    chain = make_chain(["www.example.test", "example.test"], key_type)
    traditional = certmaker.traditional_pem(chain.key)
    header = b"RSA PRIVATE KEY" if key_type == "rsa" else b"EC PRIVATE KEY"
    assert header in traditional  # PKCS#1 / SEC1 really
    form = upload_form(chain, private_key=b64(traditional))
    assert api(server, UPLOAD, form)["res"] == 0


def test_encrypted_key_needs_its_passphrase(server: ImpervaServer) -> None:
    chain = make_chain(["www.example.test", "example.test"])
    encrypted = certmaker.pkcs8_pem(chain.key, b"correct horse")
    assert b"ENCRYPTED PRIVATE KEY" in encrypted
    form = upload_form(chain, private_key=b64(encrypted))
    assert_invalid(api(server, UPLOAD, form), "passphrase")
    assert_invalid(api(server, UPLOAD, {**form, "passphrase": "wrong"}), "passphrase")
    assert api(server, UPLOAD, {**form, "passphrase": "correct horse"})["res"] == 0
    assert server.requests[-1].form["passphrase"] == "<redacted>"


def test_passphrase_for_plain_key_is_ignored(server: ImpervaServer, ec_chain: Chain) -> None:
    assert api(server, UPLOAD, upload_form(ec_chain, passphrase="unused"))["res"] == 0


def test_rsa_above_4096_bits_is_refused(server: ImpervaServer) -> None:
    big = make_chain(["www.example.test", "example.test"], "rsa", rsa_bits=4608)
    assert_invalid(api(server, UPLOAD, upload_form(big)), "4608", "4096")
    limit = make_chain(["www.example.test", "example.test"], "rsa", rsa_bits=4096)
    assert api(server, UPLOAD, upload_form(limit))["res"] == 0


# ----- upload: flags --------------------------------------------------------


def details_of(server: ImpervaServer, chain: Chain, site_id: int = WWW, **extra: str) -> Dict[str, Any]:
    body = api(server, UPLOAD, upload_form(chain, site_id, **extra))
    assert body["res"] == 0, body
    details: Dict[str, Any] = body["debug_info"]["details"]
    return details


def test_leaf_alone_flags_chain_error(server: ImpervaServer, ec_chain: Chain) -> None:
    assert details_of(server, ec_chain, certificate=b64(ec_chain.leaf_pem))["chainError"] is True


def test_self_signed_leaf_alone_has_no_chain_error(server: ImpervaServer) -> None:
    cert_pem, key_pem = certmaker.make_self_signed(["shop.example.test"])
    form = {"site_id": str(SHOP), "certificate": b64(cert_pem), "private_key": b64(key_pem)}
    body = api(server, UPLOAD, {**form, "auth_type": "ECC"})
    assert body["res"] == 0
    assert body["debug_info"]["details"]["chainError"] is False


def test_wrong_intermediate_flags_chain_error(server: ImpervaServer, ec_chain: Chain) -> None:
    rsa_intermediate = make_chain(["x.test"], "rsa").chain_pem  # another issuer name
    certificate = b64(ec_chain.leaf_pem + rsa_intermediate)
    assert details_of(server, ec_chain, certificate=certificate)["chainError"] is True


@pytest.mark.parametrize("key_type", ["ecdsa", "rsa"])
def test_impostor_intermediate_flags_chain_error(server: ImpervaServer, key_type: str) -> None:
    # Same names, wrong key: only a signature check (ECDSA / PKCS#1 v1.5) sees it.
    chain = make_chain(["www.example.test", "example.test"], key_type)
    impostor = certmaker.impostor_of(chain.intermediate)
    assert x509.load_pem_x509_certificate(impostor).subject == chain.intermediate.subject
    details = details_of(server, chain, certificate=b64(chain.leaf_pem + impostor))
    assert details["chainError"] is True


def test_chain_up_to_the_root_is_fine(server: ImpervaServer, ec_chain: Chain) -> None:
    certificate = b64(ec_chain.fullchain_pem + ec_chain.root_pem)
    assert details_of(server, ec_chain, certificate=certificate)["chainError"] is False


@pytest.mark.parametrize(
    ("names", "site_id", "uncovered"),
    [
        (["www.example.test", "example.test"], WWW, False),
        (["www.example.test"], WWW, True),  # the site's bare domain is missing
        (["*.example.test", "example.test"], WWW, False),
        (["*.example.test"], WWW, True),  # a wildcard does not cover the bare domain
        (["*.test"], SHOP, True),  # one label only
        (["*.example.test"], SHOP, False),
        (["SHOP.Example.TEST"], SHOP, False),  # DNS names are case-insensitive
        (["other.example.test"], SHOP, True),
    ],
)
def test_coverage_flag(server: ImpervaServer, names: List[str], site_id: int, uncovered: bool) -> None:
    chain = make_chain(names)
    assert details_of(server, chain, site_id)["coverageError"] is uncovered


@pytest.mark.parametrize("flag", ["coverageError", "hostnameMismatchError"])
def test_coverage_flag_name_is_configurable(flag: str) -> None:
    with make_server(coverage_flag_name=flag) as server:
        details = details_of(server, make_chain(["nothing.example.test"]))
        other = {"coverageError", "hostnameMismatchError"} - {flag}
        assert details[flag] is True
        assert not other & details.keys()
        held = server.held(WWW)
        assert held is not None and held[flag] is True


def test_expired_leaf_flags_validity_error(server: ImpervaServer) -> None:
    chain = make_chain(["www.example.test", "example.test"], expired=True)
    details = details_of(server, chain)
    assert details["validityError"] is True
    assert details["expirationDate"] < time.time() * 1000


def test_revoked_serial_flags_revocation_error(server: ImpervaServer) -> None:
    chain = make_chain(["www.example.test", "example.test"], serial=0xDEADBEEF)
    server.revoked_serials.add(0xDEADBEEF)
    assert details_of(server, chain)["revocationError"] is True
    assert details_of(server, make_chain(["www.example.test"]))["revocationError"] is False


def test_a_revocation_rule_flags_what_it_names(server: ImpervaServer) -> None:
    # "Every certificate but this one is revoked": for a renewal whose serial is not known yet.
    kept = make_chain(["www.example.test", "example.test"])
    server.revoked = lambda leaf: leaf.serial_number != kept.serial
    assert details_of(server, kept)["revocationError"] is False
    assert details_of(server, make_chain(["www.example.test"]))["revocationError"] is True
    assert status(server)["ssl"]["custom_certificate"]["revocationError"] is True


# ----- state: status, slots, remove -------------------------------------------


def status(server: ImpervaServer, site_id: int = WWW) -> Dict[str, Any]:
    body = api(server, STATUS, {"site_id": str(site_id)})
    assert body["res"] == 0, body
    return body


def test_status_of_a_fresh_site(server: ImpervaServer) -> None:
    body = status(server)
    assert body["site_id"] == WWW
    assert body["domain"] == "www.example.test"
    assert body["display_name"] == "www.example.test"
    assert body["account_id"] == 1
    assert body["status"] == "fully-configured"
    assert body["active"] == "active"
    # One DNS instruction per domain, always; without an edge to an address where nothing listens.
    assert body["dns"] == [{"dns_record_name": name, "set_type_to": "A",
                            "set_data_to": [server.idle_address]}
                           for name in ("www.example.test", "example.test")]
    assert ipaddress.ip_address(server.idle_address).is_loopback
    assert body["ssl"] == {}
    assert "extra_domains" not in body  # not part of Imperva's answer
    assert server.held(WWW) is None
    server.add_site(Site(105, "shop2.example.test", display_name="Second shop"))
    assert status(server, 105)["display_name"] == "Second shop"


def test_status_after_upload_shows_identity(server: ImpervaServer, ec_chain: Chain) -> None:
    api(server, UPLOAD, upload_form(ec_chain, input_hash="deadbeef"))
    shown = status(server)["ssl"]["custom_certificate"]
    assert shown["serialNumber"] == format(ec_chain.serial, "X")
    assert shown["serialNumber"] == shown["serialNumber"].upper()
    sha1 = ec_chain.leaf.fingerprint(hashes.SHA1())
    assert shown["fingerPrint"] == "SHA1 Fingerprint=" + ":".join(f"{b:02X}" for b in sha1)
    assert shown["inputHash"] == "deadbeef"
    assert shown["authType"] == "ECC"
    assert shown["active"] is True
    assert shown["expirationDate"] == int(ec_chain.not_after.timestamp() * 1000)
    assert abs(shown["uploadedAt"] - time.time() * 1000) < 60_000
    assert shown == server.held(WWW)


def test_no_input_hash_when_none_sent(server: ImpervaServer, ec_chain: Chain) -> None:
    api(server, UPLOAD, upload_form(ec_chain))
    held = server.held(WWW)
    assert held is not None and "inputHash" not in held


def test_omit_identity_hides_serial_and_fingerprint(ec_chain: Chain) -> None:
    with make_server(omit_identity=True) as server:
        api(server, UPLOAD, upload_form(ec_chain, input_hash="h1"))
        shown = status(server)["ssl"]["custom_certificate"]
        assert "serialNumber" not in shown and "fingerPrint" not in shown
        assert shown["inputHash"] == "h1"
        assert server.held(WWW) == shown
        assert server.held_slots(WWW)["ECC"]["serialNumber"] == format(ec_chain.serial, "X")


def test_omit_input_hash(ec_chain: Chain) -> None:
    with make_server(omit_identity=True, omit_input_hash=True) as server:
        api(server, UPLOAD, upload_form(ec_chain, input_hash="h1"))
        shown = status(server)["ssl"]["custom_certificate"]
        assert not {"serialNumber", "fingerPrint", "inputHash"} & shown.keys()
        assert shown["expirationDate"] == int(ec_chain.not_after.timestamp() * 1000)


def test_upload_replaces_the_same_slot(server: ImpervaServer) -> None:
    first = make_chain(["www.example.test", "example.test"])
    second = make_chain(["www.example.test", "example.test"])
    api(server, UPLOAD, upload_form(first))
    api(server, UPLOAD, upload_form(second))
    assert list(server.held_slots(WWW)) == ["ECC"]
    held = server.held(WWW)
    assert held is not None and held["serialNumber"] == format(second.serial, "X")


def test_two_slots_status_shows_newest_and_remove_per_slot(
    server: ImpervaServer, ec_chain: Chain, rsa_chain: Chain
) -> None:
    api(server, UPLOAD, upload_form(rsa_chain))
    api(server, UPLOAD, upload_form(ec_chain))
    assert status(server)["ssl"]["custom_certificate"]["authType"] == "ECC"
    assert set(server.held_slots(WWW)) == {"RSA", "ECC"}

    assert api(server, REMOVE, {"site_id": str(WWW), "auth_type": "ECC"})["res"] == 0
    shown = status(server)["ssl"]["custom_certificate"]
    assert shown["authType"] == "RSA"
    assert shown["serialNumber"] == format(rsa_chain.serial, "X")

    assert api(server, REMOVE, {"site_id": str(WWW)})["res"] == 0  # RSA by default
    assert status(server)["ssl"] == {}
    assert server.held(WWW) is None
    # Removing an empty slot is harmless.
    assert api(server, REMOVE, {"site_id": str(WWW)})["res"] == 0
    assert_invalid(api(server, REMOVE, {"site_id": str(WWW), "auth_type": "DSA"}), "auth_type")


def test_sites_do_not_share_certificates(server: ImpervaServer, ec_chain: Chain) -> None:
    api(server, UPLOAD, upload_form(ec_chain))
    assert server.held(SHOP) is None
    assert status(server, SHOP)["ssl"] == {}


# ----- sites/list -------------------------------------------------------------


def test_list_default_page_and_items(server: ImpervaServer, ec_chain: Chain) -> None:
    api(server, UPLOAD, upload_form(ec_chain))
    body = api(server, LIST)
    assert body["res"] == 0
    ids = [site["site_id"] for site in body["sites"]]
    assert ids == [WWW, SHOP]  # the other account's site is not listed
    item = body["sites"][0]
    expected = {k: v for k, v in status(server).items() if k not in ("res", "res_message", "debug_info")}
    assert item == expected
    assert "extra_domains" not in item


def test_list_paging_250_sites() -> None:
    with ImpervaServer(API_ID, API_KEY) as server:
        for n in range(250, 0, -1):  # added out of order: the answer is sorted anyway
            server.add_site(Site(1000 + n, f"site{n}.example.test"))
        pages = [api(server, LIST, {"page_size": "100", "page_num": str(num)})["sites"] for num in range(4)]
        assert [len(page) for page in pages] == [100, 100, 50, 0]
        ids = [site["site_id"] for page in pages for site in page]
        assert ids == list(range(1001, 1251))
        assert len(api(server, LIST)["sites"]) == 50  # default page_size
        assert len(api(server, LIST, {"page_size": "500"})["sites"]) == 100  # clamped
        assert len(api(server, LIST, {"page_size": "0"})["sites"]) == 1  # clamped


def test_list_items_show_what_status_shows_for_two_key_types(
    server: ImpervaServer, ec_chain: Chain, rsa_chain: Chain
) -> None:
    api(server, UPLOAD, upload_form(ec_chain))
    api(server, UPLOAD, upload_form(rsa_chain))
    item = api(server, LIST)["sites"][0]
    assert item["ssl"] == status(server)["ssl"]  # the newest upload only, as sites/status shows
    assert item["ssl"]["custom_certificate"]["authType"] == "RSA"


def test_omit_auth_type_hides_the_key_type_everywhere(ec_chain: Chain, rsa_chain: Chain) -> None:
    with make_server(omit_auth_type=True) as server:
        api(server, UPLOAD, upload_form(rsa_chain))
        api(server, UPLOAD, upload_form(ec_chain))
        shown = status(server)["ssl"]["custom_certificate"]
        assert "authType" not in shown and shown["serialNumber"] == format(ec_chain.serial, "X")
        assert "authType" not in api(server, LIST)["sites"][0]["ssl"]["custom_certificate"]
        assert server.held_slots(WWW)["RSA"]["authType"] == "RSA"  # kept, only not shown


def test_a_parent_key_reaches_its_sub_accounts_and_account_id_narrows() -> None:
    with ImpervaServer(API_ID, API_KEY, account_id=50, sub_accounts=(51, 52)) as server:
        server.add_site(Site(1, "parent.example.test", account_id=50))
        server.add_site(Site(2, "a.example.test", account_id=51))
        server.add_site(Site(3, "b.example.test", account_id=52))
        server.add_site(Site(4, "stranger.example.test", account_id=60))
        assert [s["site_id"] for s in api(server, LIST)["sites"]] == [1, 2, 3]
        assert [s["site_id"] for s in api(server, LIST, {"account_id": "51"})["sites"]] == [2]
        assert [s["site_id"] for s in api(server, LIST, {"account_id": "50"})["sites"]] == [1]
        assert api(server, LIST, {"account_id": "60"})["res"] == 9403
        assert api(server, VERIFY, {"account_id": "52"})["account_id"] == 52
        assert api(server, STATUS, {"site_id": "3"})["domain"] == "b.example.test"
        assert api(server, STATUS, {"site_id": "4"})["res"] == 9413


def test_list_input_errors(server: ImpervaServer) -> None:
    assert_invalid(api(server, LIST, {"page_size": "ten"}), "page_size")
    assert_invalid(api(server, LIST, {"page_num": "x"}), "page_num")
    assert api(server, LIST, {"account_id": "2"})["res"] == 9403
    assert api(server, LIST, {"account_id": "1"})["res"] == 0


# ----- sites/performance/advanced ---------------------------------------------


def test_redirect_http_to_https(server: ImpervaServer) -> None:
    form = {"site_id": str(WWW), "param": "redirect_http_to_https", "value": "true"}
    assert api(server, PERFORMANCE, form)["res"] == 0
    assert server.sites[WWW].redirect_http_to_https is True
    assert api(server, PERFORMANCE, {**form, "value": "false"})["res"] == 0
    assert server.sites[WWW].redirect_http_to_https is False
    assert_invalid(api(server, PERFORMANCE, {**form, "value": "yes"}), "value")
    assert_invalid(api(server, PERFORMANCE, {**form, "param": "cache_mode"}), "param")
    assert server.sites[SHOP].redirect_http_to_https is False


# ----- faults -----------------------------------------------------------------


@pytest.mark.parametrize("code", [500, 503])
def test_fault_5xx_html(server: ImpervaServer, code: int) -> None:
    server.inject("account/verify", str(code))
    response = post(server, VERIFY)
    assert response.status_code == code
    assert response.headers["Content-Type"].startswith("text/html")
    assert "<html>" in response.text
    assert server.requests[-1].fault == str(code) and server.requests[-1].res is None
    assert api(server, VERIFY)["res"] == 0  # consumed: the next call is normal


def test_fault_429_retry_after(server: ImpervaServer) -> None:
    server.inject("sites/status", "429", retry_after=7)
    response = post(server, STATUS, {"site_id": str(WWW)})
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "7"
    assert response.json()["res"] == 1


def test_fault_html200(server: ImpervaServer) -> None:
    server.inject("sites/list", "html200")
    response = post(server, LIST)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/html")
    with pytest.raises(ValueError):
        response.json()


def test_fault_badjson(server: ImpervaServer) -> None:
    server.inject("sites/list", "badjson")
    response = post(server, LIST)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json"
    assert response.text == '{"res": 0, "res_mes'
    with pytest.raises(json.JSONDecodeError):
        json.loads(response.text)


@pytest.mark.parametrize(("kind", "res"), [("res3015", 3015), ("res4", 4)])
def test_fault_transient_res(server: ImpervaServer, ec_chain: Chain, kind: str, res: int) -> None:
    server.inject("customCertificate/upload", kind)
    body = api(server, UPLOAD, upload_form(ec_chain))
    assert body["res"] == res
    if kind == "res3015":
        assert body["res_message"] == "Internal error, please try again"
    # Injected faults never change state.
    assert server.held(WWW) is None and server.uploads() == []
    assert api(server, UPLOAD, upload_form(ec_chain))["res"] == 0
    assert len(server.uploads()) == 1


def test_res_as_string_is_a_normal_answer(server: ImpervaServer, ec_chain: Chain) -> None:
    server.inject("customCertificate/upload", "res_str")
    response = post(server, UPLOAD, upload_form(ec_chain))
    body = response.json()
    assert body["res"] == "0"
    assert body["debug_info"]["details"]["chainError"] is False
    assert server.held(WWW) is not None  # not a fault: the upload happened
    assert server.requests[-1].res == 0 and server.requests[-1].fault == "res_str"
    assert len(server.uploads()) == 1
    server.inject("sites/status", "res_str")
    assert post(server, STATUS, {"site_id": "999"}).json()["res"] == "9413"


def test_fault_timeout(server: ImpervaServer, ec_chain: Chain) -> None:
    server.inject("customCertificate/upload", "timeout", retry_after=1)
    started = time.monotonic()
    with pytest.raises(requests.exceptions.ReadTimeout):
        post(server, UPLOAD, upload_form(ec_chain), timeout=0.3)
    assert time.monotonic() - started < 0.9
    # The next call is not delayed, even while the first still sleeps.
    assert api(server, STATUS, {"site_id": str(WWW)})["res"] == 0
    timed_out = server.calls("customCertificate/upload")[0]
    deadline = time.monotonic() + 5
    while timed_out.res is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert timed_out.fault == "timeout" and timed_out.res == 0  # answered late, normally
    assert server.held(WWW) is None and server.uploads() == []  # ... but changed nothing


def test_fault_reset(server: ImpervaServer) -> None:
    server.inject("account/verify", "reset")
    with pytest.raises(requests.exceptions.ConnectionError):
        post(server, VERIFY)
    assert server.requests[-1].fault == "reset" and server.requests[-1].res is None
    assert api(server, VERIFY)["res"] == 0


def test_faults_are_consumed_in_order_per_suffix(server: ImpervaServer) -> None:
    server.inject("sites/status", "503")
    server.inject("sites/status", "res4", count=2)
    server.inject("account/verify", "429")
    form = {"site_id": str(WWW)}
    assert post(server, STATUS, form).status_code == 503
    assert api(server, VERIFY)["res"] == 1  # its own queue
    assert api(server, STATUS, form)["res"] == 4
    assert api(server, STATUS, form)["res"] == 4
    assert api(server, STATUS, form)["res"] == 0
    assert [r.fault for r in server.calls("sites/status")] == ["503", "res4", "res4", None]


def test_faults_hit_before_auth(server: ImpervaServer) -> None:
    # A rate limiter or a broken edge answers before Imperva looks at the key.
    server.inject("account/verify", "503")
    assert post(server, VERIFY, headers={}).status_code == 503


def test_unknown_fault_kind_is_rejected(server: ImpervaServer) -> None:
    with pytest.raises(ValueError):
        server.inject("sites/list", "418")


def test_clear_forgets_requests_and_faults_not_state(server: ImpervaServer, ec_chain: Chain) -> None:
    api(server, UPLOAD, upload_form(ec_chain))
    server.inject("sites/status", "500")
    server.clear()
    assert server.requests == []
    assert status(server)["ssl"]["custom_certificate"]["authType"] == "ECC"
    assert len(server.requests) == 1


def test_latency(ec_chain: Chain) -> None:
    with make_server(latency=0.2) as server:
        started = time.monotonic()
        assert api(server, VERIFY)["res"] == 0
        assert time.monotonic() - started >= 0.2


# ----- records ----------------------------------------------------------------


def test_records_are_complete_and_redacted(server: ImpervaServer, ec_chain: Chain) -> None:
    before = time.monotonic()
    api(server, UPLOAD, upload_form(ec_chain, input_hash="ih"))
    api(server, STATUS, {"site_id": str(WWW)})
    upload, stat_call = server.requests
    assert isinstance(upload, Recorded)
    assert upload.method == "POST"
    assert upload.path == UPLOAD and upload.query == ""
    assert upload.content_type == "application/x-www-form-urlencoded"
    assert upload.res == 0 and upload.fault is None
    assert before <= upload.time <= stat_call.time <= time.monotonic()
    assert upload.form["site_id"] == str(WWW)
    assert upload.form["certificate"] == b64(ec_chain.fullchain_pem)
    assert upload.form["private_key"] == "<redacted>"
    assert upload.form["input_hash"] == "ih"
    key_headers = [v for k, v in upload.headers.items() if k.lower() == "x-api-key"]
    assert key_headers == ["<redacted>"]
    assert [v for k, v in upload.headers.items() if k.lower() == "x-api-id"] == [API_ID]
    everything = repr(server.requests) + repr(server)
    assert API_KEY not in everything
    assert b64(ec_chain.key_pem) not in everything
    assert server.calls("sites/status") == [stat_call]
    assert server.calls() == [upload, stat_call]


def test_failed_requests_are_recorded_too(server: ImpervaServer) -> None:
    post(server, VERIFY, headers={})
    post(server, "/api/prov/v1/nope")
    assert [(r.path, r.res) for r in server.requests] == [(VERIFY, 9411), ("/api/prov/v1/nope", 1)]


def test_concurrent_uploads_are_all_recorded(server: ImpervaServer) -> None:
    chains = [make_chain(["shop.example.test"]) for _ in range(8)]
    answers: List[int] = []

    def send(chain: Chain) -> None:
        answers.append(api(server, UPLOAD, upload_form(chain, SHOP))["res"])

    threads = [threading.Thread(target=send, args=(chain,)) for chain in chains]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert answers == [0] * 8
    assert len(server.uploads(SHOP)) == 8
    held = server.held(SHOP)
    assert held is not None
    assert held["serialNumber"] in {format(chain.serial, "X") for chain in chains}


# ----- standalone main() ------------------------------------------------------


def test_main_serves_and_logs_without_secrets(ec_chain: Chain) -> None:
    script = Path(__file__).with_name("imperva_server.py")
    proc = subprocess.Popen(
        [
            sys.executable,
            str(script),
            "--port",
            "0",
            "--site",
            "101:www.example.test,example.test",
            "--site",
            "102:shop.example.test",
            "--api-id",
            API_ID,
            "--api-key",
            API_KEY,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        assert line.startswith("IMPERVA_URL=http://127.0.0.1:")
        url = line.split("=", 1)[1]
        form = upload_form(ec_chain)
        answer = requests.post(url + UPLOAD, data=form, headers=AUTH, timeout=10).json()
        assert answer["res"] == 0
        assert answer["debug_info"]["details"]["coverageError"] is False  # extra domain parsed
        listed = requests.post(url + LIST, data={}, headers=AUTH, timeout=10).json()
        assert [s["site_id"] for s in listed["sites"]] == [101, 102]
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
    assert proc.returncode == 0
    lines = err.strip().splitlines()
    assert lines == [
        f"POST {UPLOAD} site_id=101 res=0",
        f"POST {LIST} site_id=- res=0",
    ]
    assert API_KEY not in err and b64(ec_chain.key_pem) not in err


# ----- certmaker --------------------------------------------------------------


def test_make_chain_fields() -> None:
    chain = make_chain(["a.example.test", "b.example.test"], "rsa", days=30, serial=1234)
    assert chain.serial == 1234 == chain.leaf.serial_number
    assert chain.fullchain_pem == chain.leaf_pem + chain.chain_pem
    assert chain.key_pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    assert chain.not_after == chain.leaf.not_valid_after_utc
    remaining = chain.not_after - dt.datetime.now(dt.timezone.utc)
    assert dt.timedelta(days=29) < remaining <= dt.timedelta(days=30)
    chain.leaf.verify_directly_issued_by(chain.intermediate)
    with pytest.raises(ValueError):
        make_chain(["x.test"], "dsa")


def test_write_lineage(tmp_path: Path, ec_chain: Chain) -> None:
    paths = certmaker.write_lineage(tmp_path / "live" / "example", ec_chain)
    assert set(paths) == {"cert", "chain", "fullchain", "privkey"}
    assert Path(paths["fullchain"]).read_bytes() == ec_chain.fullchain_pem
    assert Path(paths["cert"]).read_bytes() == ec_chain.leaf_pem
    assert Path(paths["chain"]).read_bytes() == ec_chain.chain_pem
    assert Path(paths["privkey"]).read_bytes() == ec_chain.key_pem
    assert stat.S_IMODE(os.stat(paths["privkey"]).st_mode) == 0o600


# ----- issue 20: answers a plugin must survive ---------------------------------------------------

def test_redirect_answers_a_3xx_acts_on_nothing_and_the_catcher_records_what_follows(
        server: ImpervaServer, ec_chain: Chain) -> None:
    from imperva_server import Catcher

    with Catcher() as catcher:
        server.redirect("sites/customCertificate/upload", 307, catcher.url + "/elsewhere")
        answer = requests.post(server.url + UPLOAD, data=upload_form(ec_chain), headers=AUTH,
                               timeout=5, allow_redirects=False)
        assert answer.status_code == 307 and answer.headers["Location"] == catcher.url + "/elsewhere"
        assert server.held(WWW) is None and server.uploads() == []
        assert server.calls()[-1].fault == "redirect307"
        assert catcher.connections == 0
        followed = requests.post(server.url + UPLOAD, data=upload_form(ec_chain), headers=AUTH,
                                 timeout=5)  # a client that follows: the catcher sees it all
        assert followed.json()["res"] == 0 and catcher.connections == 1
        assert catcher.received(API_KEY.encode()) and catcher.received(b"private_key=")
    server.redirect("sites/customCertificate/upload", None)
    assert post(server, UPLOAD, upload_form(ec_chain)).json()["res"] == 0
    with pytest.raises(ValueError):
        server.redirect("sites/status", 200, "http://x/")


def test_ignore_page_num_answers_the_first_page_every_time(server: ImpervaServer) -> None:
    server.ignore_page_num = True
    first = post(server, LIST, {"page_size": "1", "page_num": "0"}).json()["sites"]
    again = post(server, LIST, {"page_size": "1", "page_num": "5"}).json()["sites"]
    assert first == again and len(first) == 1


def test_on_arrival_runs_before_the_answer(server: ImpervaServer) -> None:
    seen: List[str] = []
    server.on_arrival = seen.append
    post(server, STATUS, {"site_id": str(WWW)})
    assert seen == [STATUS]
