"""The Imperva edge double (tests/imperva_edge.py), over real HTTP and TLS on its own 127.77.x.y:
routing by Host, each rule, certificates by SNI and key type, propagation, and pebble validating
http-01 through it. Needs root (ports 80 and 443): skipped otherwise, a failure under CI."""

from __future__ import annotations

import base64
import http.client
import socket
import ssl
import time
from pathlib import Path
from typing import Dict, Optional, Tuple

import pytest
from certmaker import Chain, make_chain
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from imperva_edge import GENERATED_ISSUER, STALE_BODY, ImpervaEdge
from imperva_server import ImpervaServer

CHALLENGE = "/.well-known/acme-challenge/"
WWW, SHOP = 101, 102
NAMES = ["-d", "www.example.test", "-d", "example.test"]


# ----- helpers: a real client of each side ---------------------------------------------------------


def get(edge: ImpervaEdge, host: str, path: str, *, timeout: float = 5.0,
        user_agent: str = "edge-test") -> Tuple[int, Dict[str, str], bytes]:
    connection = http.client.HTTPConnection(edge.address, 80, timeout=timeout)
    try:
        connection.request("GET", path, headers={"Host": host, "User-Agent": user_agent})
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def client_context(offer: Optional[str], cafile: Optional[str] = None) -> ssl.SSLContext:
    """offer "ECC" or "RSA": TLS 1.2 with only those suites; None: a default client (TLS 1.3)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if cafile is None:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    else:
        context.load_verify_locations(cafile)
    if offer is not None:
        context.maximum_version = ssl.TLSVersion.TLSv1_2
        context.set_ciphers("aECDSA" if offer == "ECC" else "aRSA")
    return context


def leaf_served(edge: ImpervaEdge, sni: Optional[str], offer: Optional[str]) -> x509.Certificate:
    with socket.create_connection((edge.address, 443), timeout=5) as raw:
        with client_context(offer).wrap_socket(raw, server_hostname=sni) as tls:
            der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def upload(imperva: ImpervaServer, site_id: int, chain: Chain) -> None:
    form = {
        "site_id": str(site_id),
        "certificate": base64.b64encode(chain.fullchain_pem).decode(),
        "private_key": base64.b64encode(chain.key_pem).decode(),
        "auth_type": "RSA" if isinstance(chain.key, rsa.RSAPrivateKey) else "ECC",
    }
    answer = api(imperva, "sites/customCertificate/upload", form)
    assert answer["res"] == 0, answer


def api(imperva: ImpervaServer, endpoint: str, form: Dict[str, str]) -> Dict:
    return imperva.console(endpoint, form)


def is_generated(cert: x509.Certificate) -> bool:
    return GENERATED_ISSUER in cert.issuer.rfc4514_string()


@pytest.fixture
def webroot(tmp_path: Path) -> Path:
    root = tmp_path / "webroot"
    (root / ".well-known" / "acme-challenge").mkdir(parents=True)
    (root / ".well-known" / "acme-challenge" / "token-a").write_text("content of token a")
    (root / ".well-known" / "acme-challenge" / "token-b").write_text("content of token b")
    return root


@pytest.fixture
def edge(origin_edge) -> ImpervaEdge:
    return origin_edge[0]


# ----- HTTP, port 80 -----------------------------------------------------------------------------


def test_proxies_the_challenge_path_to_the_origin_by_host(edge: ImpervaEdge) -> None:
    for host in ("www.example.test", "EXAMPLE.test:80", "shop.example.test"):
        status, headers, body = get(edge, host, CHALLENGE + "token-a", user_agent=f"ua for {host}")
        assert (status, body) == (200, b"content of token a")
        assert headers["X-CDN"] == "Imperva" and headers["X-Iinfo"]
    assert get(edge, "www.example.test", CHALLENGE + "missing")[0] == 404  # the origin's 404

    log = edge.requests
    assert [(r.host, r.site_id, r.answer, r.status) for r in log] == [
        ("www.example.test", WWW, "proxied", 200),
        ("example.test", WWW, "proxied", 200),
        ("shop.example.test", SHOP, "proxied", 200),
        ("www.example.test", WWW, "proxied", 404),
    ]
    assert log[0].user_agent == "ua for www.example.test" and log[0].path == CHALLENGE + "token-a"
    assert len(edge.requests_for("example.test", user_agent="ua for")) == 1


def test_a_host_no_site_serves_gets_imperva_s_error_page(edge: ImpervaEdge) -> None:
    status, headers, body = get(edge, "nobody.example.test", CHALLENGE + "token-a")
    assert status == 503 and headers["X-CDN"] == "Imperva"
    assert b"not served by Imperva" in body and b"token a" not in body
    assert edge.requests[-1].answer == "unknown_host"


def test_block_rule_answers_imperva_s_block_page(edge: ImpervaEdge) -> None:
    edge.set_rule(WWW, "block")
    status, headers, body = get(edge, "www.example.test", CHALLENGE + "token-a")
    assert status == 403
    assert headers["X-CDN"] == "Imperva" and headers["X-Iinfo"] and "visid_incap_101" in headers["Set-Cookie"]
    incident = edge.requests[-1].incident_id
    assert incident and f"Request unsuccessful. Incapsula incident ID: {incident}".encode() in body
    # The rule is the site's: both its names, and no other site.
    assert get(edge, "example.test", CHALLENGE + "token-a")[0] == 403
    assert get(edge, "shop.example.test", CHALLENGE + "token-a")[0] == 200
    edge.set_rule(WWW, None)
    assert get(edge, "www.example.test", CHALLENGE + "token-a")[2] == b"content of token a"


def test_jschallenge_rule_answers_a_page_loading_incapsula_resource(edge: ImpervaEdge) -> None:
    edge.set_rule(WWW, "jschallenge")
    status, headers, body = get(edge, "www.example.test", CHALLENGE + "token-a")
    assert status == 200 and headers["X-CDN"] == "Imperva" and headers["X-Iinfo"]
    assert b'<script src="/_Incapsula_Resource?' in body and b"token a" not in body


def test_cached_rule_serves_a_stale_body(edge: ImpervaEdge) -> None:
    edge.set_rule(SHOP, "cached")  # nothing fetched for this site yet: a fixed stale body
    assert get(edge, "shop.example.test", CHALLENGE + "token-a")[2] == STALE_BODY

    assert get(edge, "www.example.test", CHALLENGE + "token-a")[2] == b"content of token a"
    edge.set_rule(WWW, "cached")  # from now on: the first body ever fetched under the path
    status, headers, body = get(edge, "www.example.test", CHALLENGE + "token-b")
    assert (status, body) == (200, b"content of token a")
    assert headers["X-CDN"] == "Imperva" and "Age" in headers


def test_timeout_rule_holds_the_connection_without_answering(edge: ImpervaEdge) -> None:
    edge.set_rule(WWW, "timeout")
    edge.hold_seconds = 2
    started = time.monotonic()
    with pytest.raises((socket.timeout, TimeoutError)):
        get(edge, "www.example.test", CHALLENGE + "token-a", timeout=0.5)
    assert time.monotonic() - started < 2
    assert edge.requests[-1].answer == "timeout" and edge.requests[-1].status is None


def test_redirect_to_https_then_the_file_over_tls(edge: ImpervaEdge, imperva: ImpervaServer) -> None:
    edge.set_rule(WWW, "redirect_https")
    status, headers, _ = get(edge, "www.example.test", CHALLENGE + "token-a?x=1")
    assert status == 301 and headers["Location"] == f"https://www.example.test{CHALLENGE}token-a?x=1"

    # The site's own setting (sites/performance/advanced) does the same.
    form = {"site_id": str(SHOP), "param": "redirect_http_to_https", "value": "true"}
    assert api(imperva, "sites/performance/advanced", form)["res"] == 0
    assert get(edge, "shop.example.test", CHALLENGE + "token-a")[0] == 301

    # Port 443 speaks HTTP after the handshake, with the same routing (and no redirect).
    with socket.create_connection((edge.address, 443), timeout=5) as raw:
        with client_context(None).wrap_socket(raw, server_hostname="www.example.test") as tls:
            tls.sendall(f"GET {CHALLENGE}token-a HTTP/1.1\r\nHost: www.example.test\r\n"
                        "Connection: close\r\n\r\n".encode())
            answer = b""
            while chunk := tls.recv(4096):
                answer += chunk
    assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"content of token a")
    assert [r.scheme for r in edge.requests] == ["http", "http", "https"]


def test_dns_entries_point_at_the_edge_while_it_runs(imperva_edge: ImpervaEdge,
                                                     imperva: ImpervaServer) -> None:
    address = imperva_edge.address
    assert address.startswith("127.77.")
    status = api(imperva, "sites/status", {"site_id": str(WWW)})
    assert status["dns"] == [
        {"dns_record_name": name, "set_type_to": "A", "set_data_to": [address]}
        for name in ("www.example.test", "example.test")
    ]
    listed = api(imperva, "sites/list", {})["sites"]
    assert [item["dns"][0]["set_data_to"] for item in listed] == [[address]] * 2

    imperva_edge.stop()  # Imperva still shows the instructions: now to where nothing listens
    idle = imperva.idle_address
    assert idle != address and idle.startswith("127.77.")
    status = api(imperva, "sites/status", {"site_id": str(WWW)})
    assert [entry["set_data_to"] for entry in status["dns"]] == [[idle]] * 2


# ----- TLS, port 443 ------------------------------------------------------------------------------


def test_imperva_s_generated_certificate_when_the_site_holds_none(imperva_edge: ImpervaEdge) -> None:
    for offer in ("ECC", "RSA", None):
        assert is_generated(leaf_served(imperva_edge, "www.example.test", offer))
    assert [h.offered for h in imperva_edge.handshakes] == [("ECC",), ("RSA",), ("ECC", "RSA")]
    assert [h.key_type for h in imperva_edge.handshakes] == ["ECC", "RSA", "ECC"]
    assert not any(h.custom for h in imperva_edge.handshakes)


def test_custom_certificate_by_sni_and_key_type(imperva_edge: ImpervaEdge, imperva: ImpervaServer,
                                                ec_chain: Chain, rsa_chain: Chain) -> None:
    upload(imperva, WWW, ec_chain)
    # Only ECC held: an RSA-only client gets Imperva's own RSA certificate.
    assert leaf_served(imperva_edge, "www.example.test", "ECC") == ec_chain.leaf
    rsa_only = leaf_served(imperva_edge, "www.example.test", "RSA")
    assert is_generated(rsa_only) and isinstance(rsa_only.public_key(), rsa.RSAPublicKey)

    upload(imperva, WWW, rsa_chain)
    assert leaf_served(imperva_edge, "www.example.test", "ECC") == ec_chain.leaf
    assert leaf_served(imperva_edge, "example.test", "RSA") == rsa_chain.leaf
    assert leaf_served(imperva_edge, "www.example.test", None) == ec_chain.leaf  # both: ECDSA wins
    # No SNI, or a name of another site: Imperva's own certificate.
    assert is_generated(leaf_served(imperva_edge, None, "ECC"))
    assert is_generated(leaf_served(imperva_edge, "shop.example.test", "ECC"))


def test_the_fullchain_is_served(imperva_edge: ImpervaEdge, imperva: ImpervaServer, ec_chain: Chain,
                                 tmp_path: Path) -> None:
    upload(imperva, WWW, ec_chain)
    root = tmp_path / "root.pem"
    root.write_bytes(ec_chain.root_pem)  # the root alone: verifying needs the intermediate served
    with socket.create_connection((imperva_edge.address, 443), timeout=5) as raw:
        with client_context(None, cafile=str(root)).wrap_socket(raw, server_hostname="www.example.test"):
            pass


def test_removed_certificate_gives_way_to_imperva_s_own(imperva_edge: ImpervaEdge, imperva: ImpervaServer,
                                                        ec_chain: Chain) -> None:
    upload(imperva, WWW, ec_chain)
    assert leaf_served(imperva_edge, "www.example.test", "ECC") == ec_chain.leaf
    form = {"site_id": str(WWW), "auth_type": "ECC"}
    assert api(imperva, "sites/customCertificate/remove", form)["res"] == 0
    assert is_generated(leaf_served(imperva_edge, "www.example.test", "ECC"))


def test_propagation_delay(imperva_edge: ImpervaEdge, imperva: ImpervaServer, ec_chain: Chain) -> None:
    imperva_edge.set_propagation_delay(0.6)
    upload(imperva, WWW, ec_chain)
    uploaded = time.monotonic()
    assert is_generated(leaf_served(imperva_edge, "www.example.test", "ECC"))
    time.sleep(max(0.0, uploaded + 0.7 - time.monotonic()))
    assert leaf_served(imperva_edge, "www.example.test", "ECC") == ec_chain.leaf

    # A renewal: the old certificate until the new one has propagated. Per site, too.
    renewed = make_chain(["www.example.test", "example.test"])
    imperva_edge.set_propagation_delay(0.6, WWW)
    imperva_edge.set_propagation_delay(0.0)
    upload(imperva, WWW, renewed)
    uploaded = time.monotonic()
    assert leaf_served(imperva_edge, "www.example.test", "ECC") == ec_chain.leaf
    time.sleep(max(0.0, uploaded + 0.7 - time.monotonic()))
    assert leaf_served(imperva_edge, "www.example.test", "ECC") == renewed.leaf
    assert [h.serial for h in imperva_edge.handshakes][-2:] == [ec_chain.serial, renewed.serial]


# ----- pebble through the edge ---------------------------------------------------------------------


def test_pebble_validates_http01_through_the_edge(edge_certbot_runner, edge_pebble, imperva_edge) -> None:
    edge_certbot_runner.run("certonly", "-a", "webroot", "-w", edge_pebble.webroot, *NAMES)

    assert (edge_certbot_runner.live("www.example.test") / "cert.pem").is_file()
    from_ca = imperva_edge.requests_for(user_agent="LetsEncrypt-Pebble-VA")
    assert {r.host for r in from_ca} == {"example.test", "www.example.test"}  # pebble asks 3 times
    assert all((r.scheme, r.answer, r.status) == ("http", "proxied", 200) for r in from_ca)


def test_a_block_rule_makes_the_ca_s_validation_fail(edge_certbot_runner, edge_pebble, imperva_edge) -> None:
    imperva_edge.set_rule(WWW, "block")
    result = edge_certbot_runner.run("certonly", "-a", "webroot", "-w", edge_pebble.webroot, *NAMES,
                                     check=False)

    assert result.returncode != 0
    assert "403" in result.stdout + result.stderr
    blocked = imperva_edge.requests_for(user_agent="LetsEncrypt-Pebble-VA")
    assert blocked and all(r.answer == "block" for r in blocked)
    assert not edge_certbot_runner.live("www.example.test").exists()


# ----- issue 20: handshakes a plugin must survive ------------------------------------------------

def test_tls_mode_no_generated_fails_the_handshake_until_the_upload_propagates(
        imperva_edge: ImpervaEdge, imperva: ImpervaServer, ec_chain: Chain) -> None:
    imperva_edge.set_tls_mode(101, "no_generated")
    with pytest.raises(ssl.SSLError, match="HANDSHAKE_FAILURE"):
        leaf_served(imperva_edge, "www.example.test", "ECC")
    assert is_generated(leaf_served(imperva_edge, "shop.example.test", "ECC"))  # other sites as before
    upload(imperva, 101, ec_chain)
    assert leaf_served(imperva_edge, "www.example.test", "ECC") == ec_chain.leaf


def test_tls_mode_unparsable_serves_a_certificate_openssl_reads_and_cryptography_does_not(
        imperva_edge: ImpervaEdge) -> None:
    imperva_edge.set_tls_mode(101, "unparsable")
    with socket.create_connection((imperva_edge.address, 443), timeout=5) as raw:
        with client_context("ECC").wrap_socket(raw, server_hostname="www.example.test") as tls:
            der = tls.getpeercert(binary_form=True)
    assert der
    with pytest.raises(ValueError):
        x509.load_der_x509_certificate(der)
    with pytest.raises(ValueError):
        imperva_edge.set_tls_mode(101, "bogus")


# ----- several origin servers and a dripping answer (issues 17 and 20) ---------------------------


def test_a_site_balanced_over_origin_servers_in_turn(origin_edge, tmp_path: Path) -> None:
    from imperva_edge import Origin

    edge, webroot = origin_edge
    (webroot / "who").write_text("first")
    roots = []
    for name in ("second", "third"):
        root = tmp_path / name
        root.mkdir()
        (root / "who").write_text(name)
        roots.append(root)
    with Origin(roots[0]) as second, Origin(roots[1]) as third:
        pool = [edge.origin, second.url, third.url]
        edge.set_origins(WWW, pool)
        bodies = [get(edge, "www.example.test", "/who")[2] for _ in range(6)]
        assert bodies == [b"first", b"second", b"third"] * 2  # one request each, in turn
        assert [r.origin for r in edge.requests] == pool * 2
        assert get(edge, "shop.example.test", "/who")[2] == b"first"  # another site: its one origin
        edge.set_origins(WWW, None)
        assert get(edge, "www.example.test", "/who")[2] == b"first"


def test_drip_sends_the_answer_a_byte_at_a_time(origin_edge) -> None:
    edge, webroot = origin_edge
    (webroot / "file").write_text("x" * 20)
    edge.set_rule(WWW, "drip")
    edge.drip_interval = 0.01
    chunks = []
    with socket.create_connection((edge.address, 80), timeout=10) as sock:
        sock.sendall(b"GET /file HTTP/1.1\r\nHost: www.example.test\r\nConnection: close\r\n\r\n")
        while True:
            chunk = sock.recv(4096)
            if not chunk:
                break
            chunks.append(chunk)
    answer = b"".join(chunks)
    assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(b"\r\n\r\n" + b"x" * 20)
    # Byte by byte, the status line and headers included (a busy reader may get two at once).
    assert len(chunks) > len(answer) // 2
