"""Imperva's edge, on loopback, for the tests: what visitors and the ACME CA reach.

An `ImpervaEdge` serves the sites of an `ImpervaServer` (the API double) on an address of its own,
a random 127.77.x.y, the way Imperva's edge does (see /work/shared/imperva-api.md, "The edge"):

- HTTP on port 80: routes by `Host` to the site, and proxies to the origin (a base URL, e.g. the
  webroot server of `acme_env.Pebble`), unless the test set a rule for the site (`RULES`):
  `block` (403 with Imperva's block page), `jschallenge` (200 with a page loading
  `/_Incapsula_Resource?...`), `cached` (200 with a stale body under the challenge path),
  `timeout` (holds the connection without answering), `redirect_https` (301 to https://host/path;
  the site's `redirect_http_to_https` setting does the same) or `drip` (the origin's answer, sent a
  byte every `drip_interval` seconds, status line and headers included). `set_origins(site, urls)`
  balances a site's requests over several origin servers in turn, one request each (round robin).
  A Host no site serves gets an Imperva-like 503 page. Every answer carries `X-Iinfo` and `X-CDN: Imperva`.
- TLS on port 443: by SNI and by the key types the client offers, the site's custom certificate of
  that key type (the fullchain uploaded through the API double) once the upload has propagated
  (the propagation delay in effect at the upload, counted from it), else Imperva's own
  certificate (self-signed here, issuer "Imperva generated test"), which is also what a client
  without SNI gets. After the handshake
  the connection speaks HTTP like port 80 (minus the redirect), so a CA following a redirect to
  https gets the challenge file through TLS.

How the key type is chosen: Python's `ssl` cannot tell a server which signature algorithms or cipher
suites a client offered, so the edge peeks at the ClientHello (recv with MSG_PEEK, before the TLS
library sees it), reads the SNI, signature_algorithms, supported_versions and cipher suites, and
only then wraps the socket with the context holding the right certificate. A client can take an
ECDSA certificate when its signature algorithms (if sent) include ECDSA and it offers TLS 1.3 or an
ECDSA-authenticated TLS 1.2 suite; the same for RSA. ECDSA wins when both fit, as on Imperva.

Ports 80 and 443 need root (the tests skip, or fail under CI, without it: `need_root()`).
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import errno
import functools
import hashlib
import http.client
import os
import random
import shutil
import socket
import socketserver
import ssl
import struct
import tempfile
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

# unused_loopback_address lives with the API double, whose `dns` entries name one when no edge runs.
from imperva_server import ImpervaServer, Site, SlotMaterial, random_edge_address, unused_loopback_address

__all__ = [
    "GENERATED_ISSUER",
    "RULES",
    "STALE_BODY",
    "ClientHello",
    "EdgeHandshake",
    "EdgeRequest",
    "ImpervaEdge",
    "Origin",
    "need_root",
    "parse_client_hello",
    "unused_loopback_address",
]

RULES = ("block", "jschallenge", "cached", "timeout", "redirect_https", "drip")
# What port 443 does for a site where no custom certificate of the offered key type has propagated:
# `no_generated` fails the handshake (no certificate of that key type is served yet), `unparsable`
# serves Imperva's generated certificate with a BER-encoded field (OpenSSL reads it, strict DER
# parsers such as `cryptography` do not).
TLS_MODES = ("no_generated", "unparsable")
CHALLENGE_PREFIX = "/.well-known/acme-challenge/"
STALE_BODY = b"stale answer cached by Imperva's edge\n"
GENERATED_ISSUER = "Imperva generated test"
KEY_TYPES = ("ECC", "RSA")
HANDSHAKE_TIMEOUT = 5.0
ORIGIN_TIMEOUT = 5.0
MAX_BODY = 1 << 20

# Signature algorithms (RFC 8446 4.2.3) that an ECDSA or an RSA certificate can sign with. The
# rsa_pss_pss_* ones need an RSASSA-PSS key, which no certbot certificate has.
ECDSA_SIGALGS = frozenset({0x0403, 0x0503, 0x0603, 0x0203})
RSA_SIGALGS = frozenset({0x0401, 0x0501, 0x0601, 0x0201, 0x0804, 0x0805, 0x0806})
TLS13 = 0x0304


def need_root() -> Optional[str]:
    """Why the edge cannot run here, or None."""
    if os.geteuid() != 0:
        return "the Imperva edge double binds ports 80 and 443 on 127.77.x.y, which needs root"
    return None


def _suite_auth() -> Dict[int, str]:
    # Which key type each TLS 1.2 cipher suite authenticates with, from OpenSSL's own table
    # (every suite it knows, weak ones included, so no offered suite goes unclassified).
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.set_ciphers("ALL:COMPLEMENTOFALL:@SECLEVEL=0")
    table = {}
    for cipher in context.get_ciphers():
        auth = {"auth-ecdsa": "ECC", "auth-rsa": "RSA"}.get(cipher.get("auth", ""))
        if auth is not None:
            table[cipher["id"] & 0xFFFF] = auth
    return table


SUITE_AUTH = _suite_auth()


# ----- the ClientHello ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ClientHello:
    sni: Optional[str]
    cipher_suites: Tuple[int, ...]
    sigalgs: Optional[Tuple[int, ...]]  # None: the extension was not sent
    versions: Tuple[int, ...]  # supported_versions, else the legacy version alone

    def can_take(self, key_type: str) -> bool:
        """Whether a certificate with a key of `key_type` ("ECC" or "RSA") can be served."""
        sigalgs = ECDSA_SIGALGS if key_type == "ECC" else RSA_SIGALGS
        signable = self.sigalgs is None or bool(sigalgs.intersection(self.sigalgs))
        suite = TLS13 in self.versions or any(SUITE_AUTH.get(c) == key_type for c in self.cipher_suites)
        return signable and suite

    @property
    def key_types(self) -> Tuple[str, ...]:
        return tuple(t for t in KEY_TYPES if self.can_take(t))


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def take(self, count: int) -> bytes:
        if self.pos + count > len(self.data):
            raise ValueError("truncated ClientHello")
        chunk = self.data[self.pos : self.pos + count]
        self.pos += count
        return chunk

    def number(self, size: int) -> int:
        return int.from_bytes(self.take(size), "big")

    def vector(self, length_size: int) -> bytes:
        return self.take(self.number(length_size))

    def done(self) -> bool:
        return self.pos >= len(self.data)


def _pairs(data: bytes) -> Tuple[int, ...]:
    return tuple(struct.unpack(f"!{len(data) // 2}H", data[: len(data) // 2 * 2]))


def parse_client_hello(data: bytes) -> Optional[ClientHello]:
    """The ClientHello at the start of `data`; None while only part of it has arrived.
    ValueError when `data` is not a TLS ClientHello."""
    handshake, pos = b"", 0
    while True:
        if len(data) < pos + 5:
            return None
        content_type, _version, length = struct.unpack("!BHH", data[pos : pos + 5])
        if content_type != 22:
            raise ValueError("not a TLS handshake")
        if len(data) < pos + 5 + length:
            return None
        handshake += data[pos + 5 : pos + 5 + length]
        pos += 5 + length
        if len(handshake) >= 4:
            if handshake[0] != 1:
                raise ValueError("not a ClientHello")
            size = int.from_bytes(handshake[1:4], "big")
            if len(handshake) >= 4 + size:
                break
    body = _Reader(handshake[4 : 4 + size])
    legacy_version = body.number(2)
    body.take(32)  # random
    body.vector(1)  # session id
    suites = _pairs(body.vector(2))
    body.vector(1)  # compression methods
    sni: Optional[str] = None
    sigalgs: Optional[Tuple[int, ...]] = None
    versions: Tuple[int, ...] = (legacy_version,)
    extensions = _Reader(body.vector(2)) if not body.done() else _Reader(b"")
    while not extensions.done():
        kind, payload = extensions.number(2), _Reader(extensions.vector(2))
        if kind == 0:  # server_name: a list of (type, name); type 0 is a host name
            names = _Reader(payload.vector(2))
            while not names.done():
                name_type, name = names.number(1), names.vector(2)
                if name_type == 0:
                    sni = name.decode("ascii", "replace").lower().rstrip(".")
        elif kind == 13:  # signature_algorithms
            sigalgs = _pairs(payload.vector(2))
        elif kind == 43:  # supported_versions
            versions = _pairs(payload.vector(1))
    return ClientHello(sni, suites, sigalgs, versions)


def _peek_client_hello(sock: socket.socket, timeout: float) -> ClientHello:
    deadline = time.monotonic() + timeout
    while True:
        data = sock.recv(1 << 17, socket.MSG_PEEK)
        if not data:
            raise ConnectionError("closed before its ClientHello")
        hello = parse_client_hello(data)
        if hello is not None:
            return hello
        if time.monotonic() > deadline:
            raise TimeoutError("no complete ClientHello")
        time.sleep(0.005)  # MSG_PEEK returns at once while the rest is in flight


# ----- Imperva's generated certificate -------------------------------------------------------------

_generated: Dict[str, Tuple[bytes, bytes]] = {}  # key type -> (cert PEM, key PEM), made once
_generated_lock = threading.Lock()


def _unparsable_pems(key_type: str) -> Tuple[bytes, bytes]:
    """The generated certificate with its critical flag written as BER TRUE (01 01 01), not DER
    (01 01 FF): the signature no longer matches, which a client that does not verify never sees."""
    cert_pem, key_pem = _generated_pems(key_type)
    der = x509.load_pem_x509_certificate(cert_pem).public_bytes(serialization.Encoding.DER)
    assert der.count(b"\x01\x01\xff") == 1
    bad = der.replace(b"\x01\x01\xff", b"\x01\x01\x01")
    body = base64.encodebytes(bad)
    return b"-----BEGIN CERTIFICATE-----\n" + body + b"-----END CERTIFICATE-----\n", key_pem


def _generated_pems(key_type: str) -> Tuple[bytes, bytes]:
    with _generated_lock:
        if key_type not in _generated:
            key: Union[ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey]
            if key_type == "ECC":
                key = ec.generate_private_key(ec.SECP256R1())
            else:
                key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            name = x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, GENERATED_ISSUER),
                    x509.NameAttribute(NameOID.COMMON_NAME, f"{GENERATED_ISSUER} {key_type}"),
                ]
            )
            now = dt.datetime.now(dt.timezone.utc)
            cert = (
                x509.CertificateBuilder()
                .subject_name(name)
                .issuer_name(name)
                .public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(days=1))
                .not_valid_after(now + dt.timedelta(days=90))
                .add_extension(x509.SubjectAlternativeName([x509.DNSName("*.incapdns.test")]), False)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
                .sign(key, hashes.SHA256())
            )
            pkcs8 = serialization.PrivateFormat.PKCS8
            _generated[key_type] = (
                cert.public_bytes(serialization.Encoding.PEM),
                key.private_bytes(serialization.Encoding.PEM, pkcs8, serialization.NoEncryption()),
            )
        return _generated[key_type]


# ----- records ---------------------------------------------------------------------------------


@dataclass
class EdgeRequest:
    """One HTTP request the edge received (port 80, or 443 after the handshake)."""

    scheme: str
    method: str
    host: str
    path: str
    user_agent: str
    site_id: Optional[int]
    answer: str = ""  # "proxied", a rule's name, "redirect_https", "unknown_host", "origin_down"
    origin: str = ""  # the origin server's base URL a proxied request went to
    status: Optional[int] = None  # None: no answer was sent (timeout rule)
    incident_id: Optional[str] = None
    time: float = field(default_factory=time.monotonic)


@dataclass
class EdgeHandshake:
    """One TLS handshake on port 443 and the certificate chosen for it."""

    sni: Optional[str]
    offered: Tuple[str, ...]  # the key types the ClientHello can take
    key_type: str  # of the certificate served
    custom: bool  # the site's custom certificate (else Imperva's generated one)
    serial: int
    completed: bool = False  # set by the edge's thread once its side is done (may lag the client)
    time: float = field(default_factory=time.monotonic)


class _NoCertificate(Exception):
    def __init__(self, record: EdgeHandshake) -> None:
        super().__init__("no certificate of the offered key type")
        self.record = record


# ----- servers -----------------------------------------------------------------------------------


class _QuietBind:
    # HTTPServer.server_bind asks socket.getfqdn() for the address: a reverse DNS query that can
    # leave the machine for 127.77.x.y. The name is never used here.
    def server_bind(self) -> None:
        socketserver.TCPServer.server_bind(self)  # type: ignore[arg-type]
        host, port = self.socket.getsockname()[:2]  # type: ignore[attr-defined]
        self.server_name, self.server_port = host, port


class _Listener(_QuietBind, ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    # An edge takes many connections at once (one per site and key type of a check); the default
    # backlog of 5 drops the rest's SYNs, which then wait a second for their retransmission.
    request_queue_size = 128

    def __init__(self, address: Tuple[str, int], edge: ImpervaEdge, tls: bool) -> None:
        self.edge, self.tls = edge, tls
        super().__init__(address, _EdgeHandler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        if not self.tls:
            _EdgeHandler(request, client_address, self)
            return
        wrapped = self.edge._handshake(request)
        if wrapped is None:
            return
        try:
            _EdgeHandler(wrapped, client_address, self)
        finally:
            with contextlib.suppress(OSError):
                wrapped.close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients hang up (timeouts, probes); the request log says what was answered


class _EdgeHandler(BaseHTTPRequestHandler):
    server: _Listener
    protocol_version = "HTTP/1.1"
    timeout = 10
    disable_nagle_algorithm = True
    server_version = "imperva-edge-double"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self.server.edge._serve(self)

    do_HEAD = do_POST = do_GET

    def answer(self, status: int, body: bytes, headers: Dict[str, str], drip: float = 0.0) -> None:
        """With `drip`, one byte every `drip` seconds from the status line on (until the edge stops)."""
        try:
            if drip > 0:
                self.send_response_only(status)  # no Date or Server: buffered, sent below
            else:
                self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            if drip <= 0:
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)
                return
            data = b"".join(self._headers_buffer) + b"\r\n" + (body if self.command != "HEAD" else b"")
            self._headers_buffer = []
            self.close_connection = True
            for i in range(len(data)):
                if self.server.edge._stopping.wait(drip):
                    return
                self.wfile.write(data[i : i + 1])
                self.wfile.flush()
        except OSError:
            self.close_connection = True


class _OriginHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


class _OriginServer(_QuietBind, ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False


class Origin:
    """A static web server for a webroot on 127.0.0.1: a site's origin behind the edge (pebble's
    own webroot server plays this part in the end-to-end tests)."""

    def __init__(self, webroot: Union[str, Path], port: int = 0) -> None:
        self.webroot = Path(webroot)
        self.port = port  # 0: a free one
        self._httpd: Optional[_OriginServer] = None

    def start(self) -> Origin:
        handler = functools.partial(_OriginHandler, directory=str(self.webroot))
        self._httpd = _OriginServer(("127.0.0.1", self.port), handler)
        serve = self._httpd.serve_forever
        threading.Thread(target=serve, kwargs={"poll_interval": 0.01}, daemon=True).start()
        return self

    def stop(self) -> None:
        httpd, self._httpd = self._httpd, None
        if httpd is not None:
            httpd.shutdown()
            httpd.server_close()

    @property
    def url(self) -> str:
        if self._httpd is None:
            raise RuntimeError("origin not started")
        port = self._httpd.server_address[1]
        return "http://127.0.0.1" if port == 80 else f"http://127.0.0.1:{port}"

    def __enter__(self) -> Origin:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _incident_id() -> str:
    return f"{random.randint(100, 9999)}-{random.randint(10**14, 10**15 - 1)}"


def _iinfo() -> str:
    node = random.randint(1, 60)
    first = random.randint(10**7, 10**9)
    return f"{node}-{first}-{first + 7} NNNN CT(0 0 0) RT(1700000000000 0) q(0 0 0 -1) r(0 0) U6"


BLOCK_PAGE = (
    '<html style="height:100%"><head><META NAME="ROBOTS" CONTENT="NOINDEX, NOFOLLOW">'
    '<meta name="format-detection" content="telephone=no"><meta name="viewport" '
    'content="initial-scale=1.0"></head><body style="margin:0px;height:100%">'
    '<iframe id="main-iframe" src="/_Incapsula_Resource?CWUDNSAI=24&xinfo=8-1-0&incident_id={incident}'
    '&edet=12&cinfo=04000000&rpinfo=0&mth=GET" frameborder=0 width="100%" height="100%" '
    'marginheight="0px" marginwidth="0px">Request unsuccessful. Incapsula incident ID: {incident}'
    "</iframe></body></html>"
)
CHALLENGE_PAGE = (
    '<html><head><META NAME="robots" CONTENT="noindex,nofollow">'
    '<script src="/_Incapsula_Resource?SWJIYLWA=5074a744e2e3d891814e9a2dace20bd4,'
    '719d34d31c8e3a6e6fffd425f7e032f3"></script><body></body></html>'
)
ERROR_PAGE = (
    "<html><head><title>Imperva</title></head><body><h1>{title}</h1>"
    "<p>{detail}</p><p>Powered by Imperva</p></body></html>"
)


class ImpervaEdge:
    """The edge of `imperva`'s sites on a 127.77.x.y of its own. start() (or `with`), then:

    - `address`: where it listens (80 and 443); `imperva.edge_address` is set to it while it
      runs, so the `dns` entries of sites/status and sites/list point here;
    - `origin`: base URL the HTTP side proxies to (settable at any time);
    - `set_rule(site, rule)` with a rule of `RULES` or None; `clear_rules()`;
    - `propagation_delay` (seconds, all sites) and `set_propagation_delay(seconds, site)`;
    - `requests` / `handshakes` (copies of the logs), `requests_for(...)`, `clear()`.
    """

    def __init__(
        self,
        imperva: ImpervaServer,
        origin: Optional[str] = None,
        *,
        address: Optional[str] = None,
        propagation_delay: float = 0.0,
        hold_seconds: float = 30.0,
    ) -> None:
        self.imperva = imperva
        self.origin = origin
        self.hold_seconds = hold_seconds  # how long the timeout rule holds a connection at most
        self._wanted_address = address
        self._address: Optional[str] = None
        self._rules: Dict[int, str] = {}
        self._tls_modes: Dict[int, str] = {}
        # (when set, site or None for all, seconds): an upload waits the delay in effect at its time,
        # so changing the delay does not move certificates that had already propagated.
        self._delays: List[Tuple[float, Optional[int], float]] = [(float("-inf"), None, propagation_delay)]
        self._first_bodies: Dict[int, bytes] = {}  # site -> first challenge-path body fetched
        self._origins: Dict[int, List[str]] = {}  # site -> origin servers, balanced in turn
        self._turns: Dict[int, int] = {}  # site -> requests balanced so far
        self.drip_interval = 0.5  # seconds per byte under the drip rule
        self._requests: List[EdgeRequest] = []
        self._handshakes: List[EdgeHandshake] = []
        self._contexts: Dict[Tuple[Any, ...], ssl.SSLContext] = {}
        self._lock = threading.RLock()
        self._stopping = threading.Event()
        self._servers: List[_Listener] = []
        self._tmpdir: Optional[str] = None

    def __repr__(self) -> str:
        return f"ImpervaEdge(address={self._address!r}, origin={self.origin!r})"

    # ----- lifecycle -------------------------------------------------------------------------

    def start(self) -> ImpervaEdge:
        if self._servers:
            raise RuntimeError("edge already started")
        reason = need_root()
        if reason is not None:
            raise RuntimeError(reason)
        self._stopping.clear()
        self._tmpdir = tempfile.mkdtemp(prefix="imperva-edge-")  # mode 0700: keys go here
        for _ in range(1 if self._wanted_address else 50):
            address = self._wanted_address or random_edge_address()
            try:
                web = _Listener((address, 80), self, tls=False)
            except OSError as error:
                if error.errno == errno.EADDRINUSE and not self._wanted_address:
                    continue
                raise
            try:
                secure = _Listener((address, 443), self, tls=True)
            except OSError as error:
                web.server_close()
                if error.errno == errno.EADDRINUSE and not self._wanted_address:
                    continue
                raise
            self._servers = [web, secure]
            self._address = address
            break
        else:
            raise RuntimeError("no free 127.77.x.y address for the edge")
        for server in self._servers:
            name = f"imperva-edge-{server.server_address[1]}"
            threading.Thread(
                target=server.serve_forever, kwargs={"poll_interval": 0.01}, name=name, daemon=True
            ).start()
        self.imperva.edge_address = self._address
        return self

    def stop(self) -> None:
        self._stopping.set()  # releases connections held by the timeout rule
        servers, self._servers = self._servers, []
        for server in servers:
            server.shutdown()
            server.server_close()
        if self._address is not None and self.imperva.edge_address == self._address:
            self.imperva.edge_address = None
        self._address = None
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None
        self._contexts.clear()

    def __enter__(self) -> ImpervaEdge:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def address(self) -> str:
        if self._address is None:
            raise RuntimeError("edge not started")
        return self._address

    # ----- configuration and inspection ------------------------------------------------------

    @staticmethod
    def _site_id(site: Union[int, Site]) -> int:
        return site.site_id if isinstance(site, Site) else int(site)

    def set_rule(self, site: Union[int, Site], rule: Optional[str]) -> None:
        if rule is not None and rule not in RULES:
            raise ValueError(f"unknown rule {rule!r}; use one of {RULES} or None")
        with self._lock:
            if rule is None:
                self._rules.pop(self._site_id(site), None)
            else:
                self._rules[self._site_id(site)] = rule

    def set_origins(self, site: Union[int, Site], origins: Optional[List[str]]) -> None:
        """The site's origin servers (base URLs), each request to the next one in turn, as a
        per-request balancer does; None: back to `origin`."""
        with self._lock:
            if origins:
                self._origins[self._site_id(site)] = list(origins)
            else:
                self._origins.pop(self._site_id(site), None)
            self._turns.pop(self._site_id(site), None)

    def _origin_for(self, site: Site) -> Optional[str]:
        with self._lock:
            pool = self._origins.get(site.site_id)
            if not pool:
                return self.origin
            turn = self._turns.get(site.site_id, 0)
            self._turns[site.site_id] = turn + 1
            return pool[turn % len(pool)]

    def clear_rules(self) -> None:
        with self._lock:
            self._rules.clear()
            self._tls_modes.clear()

    def set_tls_mode(self, site: Union[int, Site], mode: Optional[str]) -> None:
        """One of TLS_MODES for the site's handshakes before its upload propagates, or None."""
        if mode is not None and mode not in TLS_MODES:
            raise ValueError(f"unknown TLS mode {mode!r}; use one of {TLS_MODES} or None")
        with self._lock:
            if mode is None:
                self._tls_modes.pop(self._site_id(site), None)
            else:
                self._tls_modes[self._site_id(site)] = mode

    def set_propagation_delay(self, seconds: float, site: Union[int, Site, None] = None) -> None:
        """Uploads from now on reach the edge `seconds` after they were made (one site, or all;
        a site's own delay wins over the one for all)."""
        with self._lock:
            self._delays.append((time.monotonic(), None if site is None else self._site_id(site), seconds))

    @property
    def propagation_delay(self) -> float:
        """The delay for all sites now (setting it is set_propagation_delay(seconds))."""
        with self._lock:
            return [seconds for _, site, seconds in self._delays if site is None][-1]

    @propagation_delay.setter
    def propagation_delay(self, seconds: float) -> None:
        self.set_propagation_delay(seconds)

    def _delay_at(self, site_id: int, when: float) -> float:
        with self._lock:
            in_effect = [(site, seconds) for at, site, seconds in self._delays if at <= when]
        own = [seconds for site, seconds in in_effect if site == site_id]
        return own[-1] if own else [seconds for site, seconds in in_effect if site is None][-1]

    @property
    def requests(self) -> List[EdgeRequest]:
        with self._lock:
            return list(self._requests)

    @property
    def handshakes(self) -> List[EdgeHandshake]:
        with self._lock:
            return list(self._handshakes)

    def requests_for(
        self, host: Optional[str] = None, path_prefix: str = CHALLENGE_PREFIX, user_agent: str = ""
    ) -> List[EdgeRequest]:
        """Requests under `path_prefix` (the challenge path by default), for `host`, whose
        User-Agent contains `user_agent`."""
        return [
            r
            for r in self.requests
            if r.path.startswith(path_prefix)
            and (host is None or r.host == host.lower())
            and user_agent in r.user_agent
        ]

    def clear(self) -> None:
        with self._lock:
            self._requests.clear()
            self._handshakes.clear()

    @staticmethod
    def generated_certificate(key_type: str = "ECC") -> x509.Certificate:
        """Imperva's own certificate the edge serves for `key_type` ("ECC" or "RSA")."""
        return x509.load_pem_x509_certificate(_generated_pems(key_type)[0])

    # ----- what the edge serves ---------------------------------------------------------------

    def _site_for(self, host: Optional[str]) -> Optional[Site]:
        if not host:
            return None
        for site in list(self.imperva.sites.values()):
            if host in (d.lower().rstrip(".") for d in site.all_domains):
                return site
        return None

    def _propagated(self, site: Site, key_type: str) -> Optional[SlotMaterial]:
        """The slot's material the edge serves now: the newest change that has propagated."""
        now = time.monotonic()
        served: Optional[SlotMaterial] = None
        for at, material in self.imperva.slot_history(site.site_id).get(key_type, []):
            if at + self._delay_at(site.site_id, at) <= now:
                served = material
        return served

    def _context(self, key_type: str, material: Optional[SlotMaterial],
                 unparsable: bool = False) -> ssl.SSLContext:
        if material is None:
            cert_pem, key_pem = (_unparsable_pems if unparsable else _generated_pems)(key_type)
        else:
            cert_pem, key_pem = material.fullchain_pem, material.key_pem
        cache_key = (key_type, hashlib.sha256(cert_pem).hexdigest())
        with self._lock:
            context = self._contexts.get(cache_key)
            if context is not None:
                return context
            assert self._tmpdir is not None
            stem = Path(self._tmpdir) / cache_key[1][:16]
            cert_path, key_path = stem.with_suffix(".crt"), stem.with_suffix(".key")
            cert_path.write_bytes(cert_pem)
            key_path.touch(mode=0o600)
            key_path.write_bytes(key_pem)
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(str(cert_path), str(key_path))  # ssl loads from files only
            self._contexts[cache_key] = context
            return context

    def _choose(self, hello: ClientHello) -> Tuple[ssl.SSLContext, EdgeHandshake]:
        offered = hello.key_types
        site = self._site_for(hello.sni)
        for key_type in offered:  # ECC first, as Imperva prefers it for clients that take both
            material = self._propagated(site, key_type) if site is not None else None
            if material is not None:
                record = EdgeHandshake(hello.sni, offered, key_type, True, material.serial)
                return self._context(key_type, material), record
        key_type = offered[0] if offered else "ECC"
        serial = self.generated_certificate(key_type).serial_number
        with self._lock:
            mode = self._tls_modes.get(site.site_id) if site is not None else None
        record = EdgeHandshake(hello.sni, offered, key_type, False, serial)
        if mode == "no_generated":
            raise _NoCertificate(record)
        return self._context(key_type, None, mode == "unparsable"), record

    def _handshake(self, sock: socket.socket) -> Optional[ssl.SSLSocket]:
        sock.settimeout(HANDSHAKE_TIMEOUT)
        try:
            hello = _peek_client_hello(sock, HANDSHAKE_TIMEOUT)
        except (OSError, ValueError):
            return None
        try:
            context, record = self._choose(hello)
        except _NoCertificate as refused:  # a fatal handshake_failure alert, as a TLS server sends
            with self._lock:
                self._handshakes.append(refused.record)
            with contextlib.suppress(OSError):
                sock.recv(1 << 16)  # the ClientHello, read: closing on unread data would be a reset
                sock.sendall(b"\x15\x03\x03\x00\x02\x02\x28")
            return None
        with self._lock:
            self._handshakes.append(record)
        try:
            wrapped = context.wrap_socket(sock, server_side=True)
        except (OSError, ssl.SSLError):
            return None
        record.completed = True
        return wrapped

    # ----- HTTP ------------------------------------------------------------------------------

    def _serve(self, handler: _EdgeHandler) -> None:
        raw_host = handler.headers.get("Host") or ""
        host = raw_host.rsplit(":", 1)[0] if raw_host.count(":") == 1 else raw_host
        host = host.strip().lower().rstrip(".")
        site = self._site_for(host)
        scheme = "https" if handler.server.tls else "http"
        record = EdgeRequest(
            scheme=scheme,
            method=handler.command,
            host=host,
            path=handler.path,
            user_agent=handler.headers.get("User-Agent") or "",
            site_id=site.site_id if site is not None else None,
        )
        with self._lock:
            self._requests.append(record)
            rule = self._rules.get(site.site_id) if site is not None else None
        headers = {"X-Iinfo": _iinfo(), "X-CDN": "Imperva"}
        length = int(handler.headers.get("Content-Length") or 0)
        if 0 < length <= MAX_BODY:
            handler.rfile.read(length)

        if site is None:
            record.answer, record.status = "unknown_host", 503
            detail = "This site is not served by Imperva."
            page = ERROR_PAGE.format(title="Site not configured", detail=detail)
            handler.answer(503, page.encode(), {**headers, "Content-Type": "text/html"})
            return
        if scheme == "http" and (rule == "redirect_https" or site.redirect_http_to_https):
            record.answer, record.status = "redirect_https", 301
            location = f"https://{host}{handler.path}"
            handler.answer(301, b"", {**headers, "Location": location})
            return
        cookies = {
            "Set-Cookie": f"visid_incap_{site.site_id}={random.randint(10**9, 10**10)}; path=/",
        }
        if rule == "block":
            incident = _incident_id()
            record.answer, record.status, record.incident_id = "block", 403, incident
            page = BLOCK_PAGE.format(incident=incident)
            handler.answer(403, page.encode(), {**headers, **cookies, "Content-Type": "text/html"})
            return
        if rule == "jschallenge":
            record.answer, record.status = "jschallenge", 200
            handler.answer(200, CHALLENGE_PAGE.encode(), {**headers, **cookies, "Content-Type": "text/html"})
            return
        if rule == "timeout":
            record.answer = "timeout"
            handler.close_connection = True
            self._stopping.wait(self.hold_seconds)  # then hang up without a word
            return
        if rule == "cached" and handler.path.startswith(CHALLENGE_PREFIX):
            with self._lock:
                body = self._first_bodies.get(site.site_id, STALE_BODY)
            record.answer, record.status = "cached", 200
            handler.answer(200, body, {**headers, "Age": "3600", "Content-Type": "text/plain"})
            return
        self._proxy(handler, record, site, host, headers)

    def _proxy(
        self, handler: _EdgeHandler, record: EdgeRequest, site: Site, host: str, headers: Dict[str, str]
    ) -> None:
        record.answer = "proxied"
        chosen = self._origin_for(site)
        record.origin = chosen or ""
        drip = self.drip_interval if self._rules.get(site.site_id) == "drip" else 0.0
        try:
            if chosen is None:
                raise ConnectionError("no origin set")
            origin = urlsplit(chosen)
            connection = http.client.HTTPConnection(
                origin.hostname or "127.0.0.1", origin.port or 80, timeout=ORIGIN_TIMEOUT
            )
            try:
                forwarded = {
                    "Host": host,
                    "User-Agent": record.user_agent,
                    "Incap-Client-IP": handler.client_address[0],
                }
                connection.request(handler.command, origin.path.rstrip("/") + handler.path, headers=forwarded)
                response = connection.getresponse()
                body = response.read(MAX_BODY)
                status = response.status
                kept = {
                    name: value
                    for name, value in response.getheaders()
                    if name.lower() in ("content-type", "location", "last-modified")
                }
            finally:
                connection.close()
        except (OSError, http.client.HTTPException):
            record.answer, record.status = "origin_down", 503
            page = ERROR_PAGE.format(title="Origin unreachable", detail="Imperva could not reach the origin.")
            handler.answer(503, page.encode(), {**headers, "Content-Type": "text/html"})
            return
        if status == 200 and handler.path.startswith(CHALLENGE_PREFIX):
            with self._lock:
                self._first_bodies.setdefault(site.site_id, body)
        record.status = status
        handler.answer(status, body, {**kept, **headers}, drip)
