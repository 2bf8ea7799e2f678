"""The Imperva client (certbot_incapsula.api) against the API double, over real HTTP on loopback.

Small retry policies and short timeouts keep the whole file to a few seconds.
"""
from __future__ import annotations

import base64
import contextlib
import logging
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any, Callable, Iterator, List

import imperva_server
import pytest
from certmaker import make_chain, write_lineage
from imperva_server import REDACTED, ImpervaServer, Site

from certbot_incapsula import certificate
from certbot_incapsula.api import ImpervaClient, ImpervaError, RateLimiter, RetryPolicy, check_api_url

API_ID = "4242"
API_KEY = "s3cr3t-api-key-never-shown-0123"
WWW, SHOP, NO_SSL, NO_PLAN = 101, 102, 103, 104
STATUS = "sites/status"
UPLOAD = "sites/customCertificate/upload"
FAST = RetryPolicy(attempts=5, base=0.01, cap=0.05, budget=5.0)


@pytest.fixture
def server() -> Iterator[ImpervaServer]:
    with ImpervaServer(API_ID, API_KEY) as running:
        running.add_site(Site(WWW, "www.example.test", ["example.test"]))
        running.add_site(Site(SHOP, "shop.example.test"))
        running.add_site(Site(NO_SSL, "nossl.example.test", ssl=False))
        running.add_site(Site(NO_PLAN, "noplan.example.test", plan_custom_certs=False))
        yield running


@pytest.fixture
def make_client(server: ImpervaServer) -> Iterator[Callable[..., ImpervaClient]]:
    made: List[ImpervaClient] = []

    def make(**kwargs: Any) -> ImpervaClient:
        options: dict = {"timeout": (1.0, 2.0), "retry": FAST, "rate": 1000.0}
        options.update(kwargs)
        api_key = options.pop("api_key", API_KEY)
        url = options.pop("url", server.url)
        client = ImpervaClient(API_ID, api_key, url, **options)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


@pytest.fixture
def client(make_client: Callable[..., ImpervaClient]) -> ImpervaClient:
    return make_client()


def key_fragments(key_pem: bytes) -> List[str]:
    """The secret parts of a PEM key: its base64 lines, and the base64 of the whole file."""
    lines = [line for line in key_pem.decode().splitlines() if line and not line.startswith("-----")]
    return [*lines, base64.b64encode(key_pem).decode()[:64]]


def warnings_of(caplog: pytest.LogCaptureFixture) -> List[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno == logging.WARNING and r.name == "certbot_incapsula.api"]


# ----- one session, explicit timeouts --------------------------------------------------------

def test_one_connection_serves_several_calls(server, client, monkeypatch):
    accepted: List[Any] = []
    original = imperva_server._HTTPServer.verify_request

    def counting(self, request, client_address):
        accepted.append(client_address)
        return original(self, request, client_address)

    monkeypatch.setattr(imperva_server._HTTPServer, "verify_request", counting)
    client.verify_account()
    for _ in range(4):
        client.site_status(WWW)
    assert len(server.requests) == 5
    assert len(accepted) == 1, f"expected one kept-alive TCP connection, saw {len(accepted)}"


def test_every_call_has_a_connect_and_a_read_timeout(client):
    seen: List[Any] = []
    post = client._session.post

    def spy(*args, **kwargs):
        seen.append(kwargs.get("timeout"))
        return post(*args, **kwargs)

    client._session.post = spy  # type: ignore[method-assign]
    client.verify_account()
    client.site_status(WWW)
    assert seen == [(1.0, 2.0), (1.0, 2.0)]


def test_a_read_timeout_is_retried_and_never_exceeds_the_configured_one(server, make_client, caplog):
    client = make_client(timeout=(1.0, 0.3))
    server.inject(STATUS, "timeout", retry_after=2)  # the double answers after 2 s
    started = time.monotonic()
    assert client.site_status(WWW)["site_id"] == WWW
    elapsed = time.monotonic() - started
    assert elapsed < 0.9, f"the 0.3 s read timeout was not applied ({elapsed:.2f} s)"
    assert len(server.calls(STATUS)) == 2
    assert any("timed out" in w for w in warnings_of(caplog))


def test_connection_refused_is_retried_then_reported(make_client, caplog):
    with socket.socket() as probe:  # a loopback port that nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = make_client(url=f"http://127.0.0.1:{port}", retry=RetryPolicy(3, 0.01, 0.05, 5.0))
    with pytest.raises(ImpervaError) as err:
        client.verify_account()
    assert err.value.transient and err.value.res is None
    assert "3 attempt(s)" in str(err.value) and "connection failed" in str(err.value)
    assert len(warnings_of(caplog)) == 2
    assert client.calls == 3


# ----- retried faults --------------------------------------------------------------------------

@pytest.mark.parametrize("kind, reason", [
    ("429", "HTTP 429"),
    ("500", "HTTP 500"),
    ("503", "HTTP 503"),
    ("html200", "not Imperva's JSON (text/html)"),
    ("badjson", "not Imperva's JSON"),
    ("res3015", "res 3015"),
    ("res4", "res 4 "),
    ("reset", "connection failed"),
    ("timeout", "timed out"),
])
def test_transient_faults_are_retried_with_a_warning(server, make_client, caplog, kind, reason):
    client = make_client(timeout=(1.0, 0.3))
    server.inject(STATUS, kind, count=2, retry_after=0 if kind == "429" else 2)
    caplog.set_level(logging.WARNING, logger="certbot_incapsula")
    status = client.site_status(WWW)
    assert status["domain"] == "www.example.test"
    calls = server.calls(STATUS)
    assert len(calls) == 3 and [c.fault for c in calls] == [kind, kind, None]
    warned = warnings_of(caplog)
    assert len(warned) == 2
    for message in warned:
        assert "sites/status" in message and f"site {WWW}" in message and reason in message
        assert "retrying in" in message


def test_retries_end_after_the_attempts_allowed(server, make_client):
    client = make_client(retry=RetryPolicy(attempts=3, base=0.01, cap=0.05, budget=5.0))
    server.inject(STATUS, "500", count=10)
    with pytest.raises(ImpervaError) as err:
        client.site_status(WWW)
    assert len(server.calls(STATUS)) == 3
    assert err.value.transient and err.value.operation == STATUS
    assert "3 attempt(s)" in str(err.value) and "HTTP 500" in str(err.value)
    assert "nothing was changed" in str(err.value)


def test_after_upload_timeouts_the_error_does_not_claim_nothing_changed(server, make_client):
    chain = make_chain(["www.example.test", "example.test"])
    client = make_client(timeout=(1.0, 0.2), retry=RetryPolicy(attempts=2, base=0.01, cap=0.05))
    server.inject(UPLOAD, "timeout", count=2, retry_after=1)
    with pytest.raises(ImpervaError) as err:
        client.upload_certificate(WWW, chain.fullchain_pem, chain.key_pem, "ECC")
    assert "timed out" in str(err.value) and "unknown" in str(err.value)
    assert "nothing was changed" not in str(err.value)


def test_a_read_that_times_out_is_worded_as_a_read(server, make_client):
    client = make_client(timeout=(1.0, 0.2), retry=RetryPolicy(attempts=2, base=0.01, cap=0.05))
    server.inject(STATUS, "timeout", count=2, retry_after=1)
    with pytest.raises(ImpervaError) as err:
        client.site_status(WWW)
    assert "timed out" in str(err.value)
    assert "this call only reads, so nothing was changed" in str(err.value)
    assert "unknown" not in str(err.value)


def test_the_budget_bounds_the_time_one_call_spends_retrying(server, make_client, caplog):
    client = make_client(retry=RetryPolicy(attempts=1000, base=0.01, cap=0.05, budget=1.5))
    server.inject(STATUS, "503", count=10_000)
    started = time.monotonic()
    with pytest.raises(ImpervaError) as err:
        client.site_status(WWW)
    elapsed = time.monotonic() - started
    assert elapsed < 3.0, f"a 1.5 s budget took {elapsed:.1f} s"
    assert err.value.transient and "HTTP 503" in str(err.value)
    assert len(server.calls(STATUS)) > 3  # it did retry, many times, within the budget
    assert len(warnings_of(caplog)) == len(server.calls(STATUS)) - 1


def test_the_budget_cuts_a_slow_answer(server, make_client):
    client = make_client(timeout=(1.0, 30.0), retry=RetryPolicy(attempts=5, base=0.01, cap=0.05,
                                                                 budget=1.2))
    server.inject(STATUS, "timeout", count=5, retry_after=4)
    started = time.monotonic()
    with pytest.raises(ImpervaError):
        client.site_status(WWW)
    assert time.monotonic() - started < 3.0  # not the 30 s read timeout, nor 4 s of server sleep


def test_retry_after_is_honoured(server, client, caplog):
    server.inject(STATUS, "429", retry_after=1)
    started = time.monotonic()
    client.site_status(WWW)
    elapsed = time.monotonic() - started
    assert elapsed >= 0.95, f"Retry-After: 1 was not honoured ({elapsed:.2f} s)"
    assert len(server.calls(STATUS)) == 2
    [warned] = warnings_of(caplog)
    assert "HTTP 429" in warned and "retrying in 1.0 s" in warned


def test_a_retry_after_beyond_the_budget_fails_at_once(server, make_client):
    client = make_client(retry=RetryPolicy(attempts=5, base=0.01, cap=0.05, budget=2.0))
    server.inject(STATUS, "429", retry_after=30)
    started = time.monotonic()
    with pytest.raises(ImpervaError) as err:
        client.site_status(WWW)
    assert time.monotonic() - started < 1.0
    assert len(server.calls(STATUS)) == 1
    assert err.value.transient and "HTTP 429" in str(err.value)


def test_backoff_grows_is_capped_and_jittered():
    policy = RetryPolicy(attempts=10, base=1.0, cap=8.0)
    for attempt, ceiling in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (5, 8.0), (9, 8.0)]:
        delays = {policy.delay(attempt) for _ in range(50)}
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert len(delays) > 1  # jitter


# ----- res codes ---------------------------------------------------------------------------

def test_res_as_a_string_is_understood(server, client):
    server.inject(STATUS, "res_str")
    assert client.site_status(WWW)["site_id"] == WWW
    server.inject(STATUS, "res_str")
    with pytest.raises(ImpervaError) as err:
        client.site_status(999)
    assert err.value.res == 9413


def refused(server: ImpervaServer, call: Callable[[], Any], operation: str) -> ImpervaError:
    """Runs a call that Imperva refuses; asserts one request only reached the double."""
    server.clear()
    with pytest.raises(ImpervaError) as err:
        call()
    assert len(server.calls(operation)) == 1, "a permanent error must not be retried"
    assert len(server.requests) == 1
    assert not err.value.transient
    return err.value


def test_bad_credentials_name_the_credentials_file_entries(server, make_client, caplog):
    client = make_client(api_key="wrong-key-also-secret-987")
    error = refused(server, client.verify_account, "account/verify")
    assert error.res == 9411
    assert "incapsula_api_id" in str(error) and "incapsula_api_key" in str(error)
    assert "wrong-key-also-secret-987" not in str(error) + caplog.text
    assert warnings_of(caplog) == []


def test_a_disabled_key_says_to_switch_it_on_in_the_console(server, client):
    server.key_disabled = True
    error = refused(server, client.verify_account, "account/verify")
    assert error.res == 9418
    assert str(error).startswith("The API key exists but is disabled (Imperva creates new API keys "
                                 "disabled): switch it on in Imperva's console")
    assert "res 9418: Disabled API Key" in str(error)


def test_missing_permission_says_permission(server, client, ec_chain):
    server.permissions = False
    error = refused(server, lambda: client.upload_certificate(
        WWW, ec_chain.fullchain_pem, ec_chain.key_pem, "ECC"), UPLOAD)
    assert error.res == 9415 and error.site_id == WWW
    assert "permission" in str(error) and "Manage SSL Certificates" in str(error)


def test_plan_without_custom_certificates_says_plan(server, client, ec_chain):
    error = refused(server, lambda: client.upload_certificate(
        NO_PLAN, ec_chain.fullchain_pem, ec_chain.key_pem, "ECC"), UPLOAD)
    assert error.res == 9414 and "plan" in str(error)


def test_site_without_ssl_says_enable_ssl(server, client, ec_chain):
    error = refused(server, lambda: client.upload_certificate(
        NO_SSL, ec_chain.fullchain_pem, ec_chain.key_pem, "ECC"), UPLOAD)
    assert error.res == 4205 and "enable SSL" in str(error) and f"site {NO_SSL}" in str(error)


def test_unknown_site_names_the_site_id_option(server, client):
    error = refused(server, lambda: client.site_status(999), STATUS)
    assert error.res == 9413 and "--incapsula-site-id" in str(error) and "site 999" in str(error)


def test_unknown_account_is_explained(server, client):
    error = refused(server, lambda: client.call("account/verify", {"account_id": 77}), "account/verify")
    assert error.res == 9403 and "account" in str(error)


def test_invalid_input_shows_imperva_message_and_error(server, client, ec_chain):
    other = make_chain(["www.example.test"])
    # The client uploads what it is given: the double must refuse a key of another certificate.
    error = refused(server, lambda: client.upload_certificate(
        WWW, ec_chain.fullchain_pem, other.key_pem, "ECC"), UPLOAD)
    assert error.res == 2
    assert "Invalid input" in str(error)  # res_message
    assert "private_key does not match the certificate's public key" in str(error)  # debug_info.Error
    assert server.held(WWW) is None
    for fragment in key_fragments(other.key_pem) + key_fragments(ec_chain.key_pem):
        assert fragment not in str(error)


def test_auth_type_that_does_not_match_the_key_is_refused(server, client, rsa_chain):
    error = refused(server, lambda: client.upload_certificate(
        WWW, rsa_chain.fullchain_pem, rsa_chain.key_pem, "ECC"), UPLOAD)
    assert error.res == 2 and "auth_type ECC does not match" in str(error)


def test_an_unknown_path_is_not_retried(server, client):
    error = refused(server, lambda: client.call("no/such/call", {}), "no/such/call")
    assert error.res == 1


# ----- secrets -----------------------------------------------------------------------------

def test_secrets_stay_in_headers_and_body(server, client, ec_chain, caplog):
    caplog.set_level(logging.DEBUG, logger="urllib3")
    caplog.set_level(logging.DEBUG, logger="certbot_incapsula")
    server.inject(UPLOAD, "503")  # one retry, so that the warning path is logged too
    client.verify_account()
    list(client.list_sites())
    client.upload_certificate(WWW, ec_chain.fullchain_pem, ec_chain.key_pem, "ECC", "sha256:abc")
    client.site_status(WWW)
    with pytest.raises(ImpervaError) as err:
        client.site_status(999)

    assert len(server.requests) == 6
    for request in server.requests:
        assert request.method == "POST" and request.query == ""
        assert request.headers["x-API-Key"] == REDACTED  # sent (the double answered), kept out of records
        assert request.headers["x-API-Id"] == API_ID
        if request.form:  # account/verify has no parameter, hence no body
            assert request.content_type.startswith("application/x-www-form-urlencoded")
        assert "private_key" not in request.headers and "PRIVATE" not in str(request.headers)
    [upload, _retry] = server.calls(UPLOAD)
    assert upload.form["private_key"] == REDACTED
    assert b"PRIVATE KEY" not in base64.b64decode(upload.form["certificate"])

    logged = "\n".join(f"{r.name} {r.getMessage()}" for r in caplog.records)
    assert any(r.name.startswith("urllib3") for r in caplog.records)  # the capture did work
    assert any(r.levelno == logging.WARNING for r in caplog.records)
    secrets = [API_KEY, *key_fragments(ec_chain.key_pem)]
    for secret in secrets:
        assert secret not in logged
        assert secret not in str(err.value)


def test_a_key_that_cannot_be_a_header_is_refused_without_showing_it(make_client, server, caplog):
    client = make_client(api_key="line-one\nline-two-secret")
    with pytest.raises(ImpervaError) as err:
        client.verify_account()
    assert "incapsula_api_key" in str(err.value) and not err.value.transient
    assert "line-two-secret" not in str(err.value) + caplog.text
    assert server.requests == []


@pytest.mark.parametrize("url", [
    "https://my.imperva.com", "https://my.incapsula.com/", "https://api.example.test:8443",
    "http://127.0.0.1:8080", "http://localhost:1234/", "http://[::1]:8080",
])
def test_api_urls_accepted(url):
    assert check_api_url(url) == url.rstrip("/")


@pytest.mark.parametrize("url, phrase", [
    ("http://my.imperva.com", "only over TLS"),
    ("http://10.0.0.1:8080", "only over TLS"),
    ("http://localhost.evil.test", "only over TLS"),
    ("ftp://my.imperva.com", "only over TLS"),
    ("my.imperva.com", "only over TLS"),
    ("https://", "only over TLS"),
    ("", "only over TLS"),
    ("https://my.imperva.com/?api_key=SECRET-Q", "plain https://HOST"),
    ("https://my.imperva.com/#SECRET-F", "plain https://HOST"),
    ("https://user:SECRET-P@my.imperva.com", "plain https://HOST"),
    ("https://SECRET-U@my.imperva.com", "plain https://HOST"),
    ("http://user:SECRET-P@example.org", "only over TLS"),
    ("https://my.imperva.com:99999", "not a valid"),
])
def test_api_urls_refused_with_a_clear_message(url, phrase):
    with pytest.raises(ValueError) as err:
        check_api_url(url)
    assert phrase in str(err.value)
    assert "SECRET" not in str(err.value)  # credentials or a query are never echoed


def test_the_client_refuses_a_bad_url_before_any_call():
    with pytest.raises(ValueError):
        ImpervaClient(API_ID, API_KEY, "http://my.imperva.com")


# ----- rate limit ----------------------------------------------------------------------------

def test_rate_limit_spaces_calls_as_the_server_sees_them(server, make_client):
    client = make_client(rate=10.0)
    with ThreadPoolExecutor(max_workers=5) as pool:
        list(pool.map(lambda _: client.site_status(WWW), range(25)))
    arrivals = sorted(r.time for r in server.calls(STATUS))
    assert len(arrivals) == 25
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:])]
    assert min(gaps) >= 0.08, f"calls closer than 1/10 s: {min(gaps):.3f} s"
    assert arrivals[-1] - arrivals[0] >= 2.3


def test_rate_limiter_alone():
    limiter = RateLimiter(50.0)
    starts = []
    for _ in range(6):
        limiter.wait()
        starts.append(time.monotonic())
    assert all(b - a >= 0.018 for a, b in zip(starts, starts[1:]))
    unlimited = RateLimiter(0)
    before = time.monotonic()
    for _ in range(100):
        unlimited.wait()
    assert time.monotonic() - before < 0.5


# ----- paging ------------------------------------------------------------------------------

def add_sites(server: ImpervaServer, count: int) -> None:
    server.sites.clear()
    for n in range(count):
        server.add_site(Site(1000 + n, f"s{n}.example.test"))


@pytest.mark.parametrize("count, pages", [(250, 3), (100, 2), (99, 1), (0, 1), (101, 2)])
def test_list_sites_pages_until_a_short_page(server, client, count, pages):
    add_sites(server, count)
    sites = list(client.list_sites())
    assert sorted(s["site_id"] for s in sites) == [1000 + n for n in range(count)]
    calls = server.calls("sites/list")
    assert [c.form["page_num"] for c in calls] == [str(n) for n in range(pages)]
    assert {c.form["page_size"] for c in calls} == {"100"}


def test_list_sites_with_a_page_size_above_imperva_cap_still_lists_all(server, client):
    add_sites(server, 250)
    assert len(list(client.list_sites(page_size=500))) == 250


def test_list_sites_retries_a_page_without_losing_sites(server, client):
    add_sites(server, 250)
    server.inject("sites/list", "html200")
    assert len({s["site_id"] for s in client.list_sites()}) == 250
    assert len(server.calls("sites/list")) == 4


@pytest.mark.parametrize("count", [100, 250])
def test_list_sites_stops_when_the_server_ignores_page_num(server, client, caplog, count):
    add_sites(server, count)
    server.ignore_page_num = True
    sites = list(client.list_sites())
    assert [s["site_id"] for s in sites] == [1000 + n for n in range(100)]  # page 0, once
    assert len(server.calls("sites/list")) == 2
    assert warnings_of(caplog) == [
        "Imperva's sites/list answered page 1 with sites it had already listed: paging stops "
        "there, with the 100 site(s) listed so far."]


def test_list_sites_stops_after_a_bound_of_pages(server, client, caplog, monkeypatch):
    import certbot_incapsula.api

    monkeypatch.setattr(certbot_incapsula.api, "MAX_PAGES", 3)  # 1,000 in the field
    add_sites(server, 10)
    assert len(list(client.list_sites(page_size=2))) == 6
    assert len(server.calls("sites/list")) == 3
    assert warnings_of(caplog) == [
        "Imperva's sites/list still gave full pages after 3 pages (6 sites): paging stops "
        "there; sites beyond are not seen."]


# ----- upload ------------------------------------------------------------------------------

@pytest.mark.parametrize("key_type, auth_type", [("ecdsa", "ECC"), ("rsa", "RSA")])
def test_upload_returns_flags_and_sends_auth_type_and_input_hash(
        server, client, tmp_path: Path, key_type, auth_type):
    chain = make_chain(["www.example.test", "example.test"], key_type)
    paths = write_lineage(tmp_path / "live", chain)
    cert = certificate.load(paths["fullchain"], paths["privkey"])
    assert cert.key_type == auth_type
    details = client.upload_certificate(WWW, cert.fullchain_pem, cert.key_pem, cert.key_type,
                                        cert.input_hash)
    assert details["active"] is True
    assert details["expirationDate"] == cert.expiration_ms
    assert not any(details[flag] for flag in
                   ("coverageError", "chainError", "validityError", "revocationError"))
    [upload] = server.uploads(WWW)
    assert upload.form["auth_type"] == auth_type
    assert upload.form["input_hash"] == cert.input_hash
    assert base64.b64decode(upload.form["certificate"]) == chain.fullchain_pem
    held = server.held(WWW)
    assert held is not None and held["inputHash"] == cert.input_hash
    assert held["serialNumber"] == cert.serial_hex
    assert held["fingerPrint"] == "SHA1 Fingerprint=" + cert.sha1_fingerprint


def test_upload_reports_flags_that_are_set(server, client):
    chain = make_chain(["shop.example.test"])
    details = client.upload_certificate(WWW, chain.fullchain_pem, chain.key_pem, "ECC")
    assert details["coverageError"] is True  # www.example.test is not covered
    assert "input_hash" not in server.uploads(WWW)[0].form


def test_upload_without_details_in_the_answer_returns_empty_flags(server, client, monkeypatch, ec_chain):
    def bare(form, commit):
        return imperva_server.envelope(0, "OK")

    monkeypatch.setattr(server, "_upload", bare)
    assert client.upload_certificate(WWW, ec_chain.fullchain_pem, ec_chain.key_pem, "ECC") == {}


def test_redirect_setting_and_call_counter(server, client):
    client.set_redirect_to_https(SHOP)
    assert server.sites[SHOP].redirect_http_to_https is True
    client.set_redirect_to_https(SHOP, enabled=False)
    assert server.sites[SHOP].redirect_http_to_https is False
    assert client.calls == 2


class _Fixed(BaseHTTPRequestHandler):
    """Answers every request with one status and an HTML page: not the Imperva double."""

    status = 404

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = b"<html><body>Not here</body></html>"
        self.send_response(self.status)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def fixed_answer(status: int) -> Iterator[str]:
    handler = type("Handler", (_Fixed,), {"status": status})
    httpd = HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_an_http_error_page_without_json_names_the_url_option(make_client):
    with fixed_answer(404) as url:
        client = make_client(url=url)
        with pytest.raises(ImpervaError) as err:
            client.verify_account()
    assert "--incapsula-api-url" in str(err.value) and "HTTP 404" in str(err.value)
    assert not err.value.transient and client.calls == 1


def test_an_http_401_page_without_json_is_read_as_bad_credentials(make_client):
    with fixed_answer(401) as url:
        client = make_client(url=url)
        with pytest.raises(ImpervaError) as err:
            client.verify_account()
    assert err.value.res == 9411 and "incapsula_api_key" in str(err.value) and client.calls == 1


# ----- redirects are never followed (issue 20) -----------------------------------------------

@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_a_redirected_upload_is_never_followed_nor_retried(server, client, status, ec_chain):
    with imperva_server.Catcher() as catcher:
        server.redirect(UPLOAD, status, catcher.url + "/api/prov/v1/sites/customCertificate/upload"
                        "?api_key=" + API_KEY)
        with pytest.raises(ImpervaError) as err:
            client.upload_certificate(WWW, ec_chain.fullchain_pem, ec_chain.key_pem, "ECC")
    text = str(err.value)
    assert catcher.connections == 0 and catcher.bytes_received == 0
    host = catcher.url  # scheme://host:port, never the path or the query
    assert f"with a redirect (HTTP {status} to {host}), which is never followed" in text
    assert "api_key" not in text and API_KEY not in text and "/api/prov" not in text.split("go only")[0]
    if status == 303:
        assert "check the site in Imperva's console" in text
    else:
        assert "the request was answered with a redirect, not by Imperva's API, so Imperva did " \
               "not act on it" in text
    assert not err.value.transient and err.value.site_id == WWW
    assert client.calls == 1 and len(server.calls(UPLOAD)) == 1
    assert server.held(WWW) is None


def test_a_redirected_read_says_it_only_reads(server, client):
    server.redirect(STATUS, 302, "https://elsewhere.example.test:8443/x?y=1")
    with pytest.raises(ImpervaError) as err:
        client.site_status(WWW)
    assert "(HTTP 302 to https://elsewhere.example.test:8443)" in str(err.value)
    assert "this call only reads, so nothing was changed" in str(err.value)
    assert client.calls == 1


@pytest.mark.parametrize("location, shown", [
    ("", "no Location given"),
    ("/moved/here?api_key=x", "http://127.0.0.1:"),
    ("http://[::1", "an unparsable Location"),
])
def test_a_redirect_names_its_target_without_its_path(server, client, location, shown):
    server.redirect("account/verify", 307, location)
    with pytest.raises(ImpervaError) as err:
        client.verify_account()
    assert shown in str(err.value) and "moved" not in str(err.value)


def test_no_session_default_can_follow_a_redirect(server, client):
    """Even a call that asks to follow (requests' default) gets the 3xx back, unfollowed."""
    import requests

    url = server.url + "/api/prov/v1/sites/status"
    with imperva_server.Catcher() as catcher:
        server.redirect(STATUS, 307, catcher.url + "/")
        # The control: a plain session follows, and the catcher sees the key arrive.
        with requests.Session() as plain:
            followed = plain.post(url, data={"site_id": WWW}, timeout=2,
                                  headers={"x-API-Id": API_ID, "x-API-Key": API_KEY})
        assert followed.history and catcher.connections == 1
        assert catcher.received(API_KEY.encode())
        response = client._session.post(url, data={"site_id": WWW}, allow_redirects=True, timeout=2)
    assert response.status_code == 307 and response.history == []
    assert catcher.connections == 1
