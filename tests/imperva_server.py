"""A real HTTP test double of Imperva's v1 provisioning API, served on 127.0.0.1.

It enforces the contract in /work/shared/imperva-api.md: form bodies, header auth,
the `res` envelope, certificate validation and flags, paging, and injectable faults.

Run standalone (`--help` lists the options and the default test API id and key):
    python tests/imperva_server.py --site 101:www.example.test,example.test --site 103:nossl.test:nossl
It prints IMPERVA_URL=http://127.0.0.1:PORT, then one line per request on stderr, until Ctrl-C.
For pebble, certbot and this double together, see `make sandbox` (demo/sandbox.py).
"""

from __future__ import annotations

import argparse
import base64
import binascii
import datetime as dt
import errno
import hmac
import json
import random
import re
import signal
import socket
import struct
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Dict, TextIO
from urllib.parse import parse_qs, parse_qsl, urlencode, urlsplit

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

Json = Dict[str, Any]  # typing.Dict: runtime alias, stays importable on 3.8

PREFIX = "/api/prov/v1/"
UPLOAD = "sites/customCertificate/upload"
REMOVE = "sites/customCertificate/remove"
LIST = "sites/list"
STATUS = "sites/status"
VERIFY = "account/verify"
PERFORMANCE = "sites/performance/advanced"
ENDPOINTS = (UPLOAD, REMOVE, LIST, STATUS, VERIFY, PERFORMANCE)

ID_INFO = "13008"
REDACTED = "<redacted>"
FAULT_KINDS = (
    "429",
    "500",
    "503",
    "html200",
    "badjson",
    "res3015",
    "res4",
    "res_str",
    "timeout",
    "reset",
)
AUTH_TYPES = ("RSA", "ECC")
MAX_RSA_BITS = 4096
MAX_BODY = 16 * 1024 * 1024

# Query parameters that must never travel in a URL (normalised: lower case, "-" -> "_").
URL_FORBIDDEN = frozenset(
    {"api_id", "api_key", "x_api_id", "x_api_key", "certificate", "private_key", "passphrase"}
)
# Form fields and headers whose values must never be kept or shown.
SECRET_FIELDS = frozenset({"api_key", "x_api_key", "private_key", "passphrase"})
SECRET_HEADERS = frozenset({"x-api-key", "authorization", "proxy-authorization", "cookie"})

HTML_PAGE = (
    "<!DOCTYPE html><html><head><title>{title}</title></head><body>"
    "<h1>{title}</h1><p>Request unsuccessful. Incapsula incident ID: 0-1234567890</p>"
    "</body></html>"
)


@dataclass
class Site:
    site_id: int
    domain: str
    extra_domains: list[str] = field(default_factory=list)
    account_id: int = 1
    ssl: bool = True
    plan_custom_certs: bool = True
    display_name: str | None = None
    redirect_http_to_https: bool = False

    def __post_init__(self) -> None:
        if self.display_name is None:
            self.display_name = self.domain

    @property
    def all_domains(self) -> list[str]:
        return [self.domain, *self.extra_domains]


@dataclass(frozen=True)
class SlotMaterial:
    """What a slot's upload gave Imperva's edge to serve: the chain as uploaded and its key."""

    auth_type: str
    fullchain_pem: bytes
    key_pem: bytes = field(repr=False)  # PKCS#8, unencrypted: the edge double loads it into ssl
    serial: int


@dataclass
class Recorded:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    form: dict[str, str]
    content_type: str
    res: int | None
    fault: str | None
    time: float


@dataclass
class _Fault:
    suffix: str
    kind: str
    retry_after: int


class _Refusal(Exception):
    """An API error answer; raised from deep in validation, turned into JSON once."""

    def __init__(self, res: int, message: str, error: str | None = None, status: int = 200) -> None:
        super().__init__(message)
        self.res = res
        self.message = message
        self.error = error
        self.status = status


def _invalid(error: str) -> _Refusal:
    return _Refusal(2, "Invalid input", error)


def envelope(res: int, message: str, error: str | None = None, **extra: Any) -> Json:
    debug: Json = {"id-info": ID_INFO}
    if error is not None:
        debug["Error"] = error
    return {"res": res, "res_message": message, "debug_info": debug, **extra}


def _ms(when: dt.datetime) -> int:
    return int(when.timestamp() * 1000)


def _now_ms() -> int:
    return int(time.time() * 1000)


def _norm_param(name: str) -> str:
    return name.strip().lower().replace("-", "_")


def _b64(value: str, what: str) -> bytes:
    # Line breaks (as `base64` wraps) are harmless; a space is not: it is what a
    # "+" becomes when a client forgets to URL-encode the body.
    cleaned = value.replace("\r", "").replace("\n", "")
    try:
        return base64.b64decode(cleaned, validate=True)
    except (binascii.Error, ValueError):
        raise _invalid(f"{what} is not valid base64") from None


def _covered(domain: str, sans: list[str]) -> bool:
    wanted = domain.lower().rstrip(".")
    for san in sans:
        name = san.lower().rstrip(".")
        if name == wanted:
            return True
        # "*.x" covers exactly one extra label: a.x yes; x and a.b.x no.
        if name.startswith("*.") and "." in wanted:
            head, rest = wanted.split(".", 1)
            if head and rest == name[2:]:
                return True
    return False


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


def _chain_error(certs: list[x509.Certificate]) -> bool:
    if len(certs) == 1:
        leaf = certs[0]
        return not (leaf.issuer == leaf.subject and _issued_by(leaf, leaf))
    return not all(_issued_by(certs[i], certs[i + 1]) for i in range(len(certs) - 1))


def _spki(key: Any) -> bytes:
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    return bytes(key.public_bytes(serialization.Encoding.DER, spki))


def _load_key(data: bytes, passphrase: str | None) -> Any:
    if b"-----BEGIN" not in data or b"PRIVATE KEY-----" not in data:
        raise _invalid("private_key is not a PEM private key")
    encrypted = b"ENCRYPTED" in data
    if encrypted and not passphrase:
        raise _invalid("private_key is encrypted and no passphrase was given")
    password = passphrase.encode() if (encrypted and passphrase) else None
    try:
        return serialization.load_pem_private_key(data, password=password)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        if encrypted:
            raise _invalid("passphrase is incorrect for private_key") from None
        raise _invalid("private_key is not a PEM private key") from None


def _dns_sans(cert: x509.Certificate) -> list[str]:
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    return [str(n) for n in ext.value.get_values_for_type(x509.DNSName)]


def _form_site_id(form: dict[str, str]) -> int | None:
    try:
        return int(form.get("site_id", ""))
    except ValueError:
        return None


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    # Keep-alive handler threads would otherwise make server_close() wait for clients.
    block_on_close = False

    def __init__(self, address: tuple[str, int], imperva: ImpervaServer) -> None:
        self.imperva = imperva
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Client hang-ups are expected (timeouts, resets); anything else is a bug
        # in the double, worth one line but never a dump of request data.
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError)):
            return
        print(f"imperva_server: internal error: {type(exc).__name__}: {exc}", file=sys.stderr)


class _Handler(BaseHTTPRequestHandler):
    server: _HTTPServer
    protocol_version = "HTTP/1.1"
    timeout = 30  # idle keep-alive connections end on their own
    # Headers and body go out as two writes: without this, Nagle's algorithm and the client's
    # delayed ACK add about 40 ms to every answer.
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:
        # The default line holds the request line, i.e. any secret in a query string.
        pass

    def do_POST(self) -> None:
        self._handle()

    do_GET = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_HEAD = do_POST

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            parts: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline().strip():  # trailers
                        pass
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            raise ValueError("body too large")
        return self.rfile.read(length) if length > 0 else b""

    def _handle(self) -> None:
        imperva = self.server.imperva
        arrived = time.monotonic()
        split = urlsplit(self.path)
        content_type = self.headers.get("Content-Type", "")
        form: dict[str, str] | None
        try:
            form = _parse_form(self._read_body(), content_type)
        except ValueError:  # unreadable framing or oversized: answer res 2, then hang up
            self.close_connection = True
            form = None
        record = Recorded(
            method=self.command,
            path=split.path,
            query=imperva._redact_query(split.query),
            headers=imperva._redact_headers(self.headers.items()),
            form=imperva._redact_form(form or {}),
            content_type=content_type,
            res=None,
            fault=None,
            time=arrived,
        )
        fault = imperva._arrive(record)
        hook = imperva.on_arrival
        if hook is not None:  # a test's moment between a client's calls (a renewal, say)
            hook(split.path)
        if imperva.latency > 0:
            time.sleep(imperva.latency)
        redirect = imperva._redirect_for(split.path)
        if redirect is not None:  # answered by a proxy or a moved URL: nothing is acted on
            status, location = redirect
            record.fault = f"redirect{status}"
            imperva._log(record, form)
            self._send(status, b"", "text/html", {"Location": location})
            return
        if fault is not None:
            record.fault = fault.kind
            if fault.kind == "reset":
                self._reset()
                imperva._log(record, form)
                return
            if fault.kind == "timeout":
                # The client is expected to give up first; answer late, change nothing.
                time.sleep(fault.retry_after)
            elif fault.kind != "res_str":
                self._send_fault(fault)
                imperva._log(record, form)
                return
        commit = fault is None or fault.kind == "res_str"
        try:
            status, payload, headers = imperva._answer(
                self.command, split.path, split.query, self.headers, form, commit
            )
        except Exception as exc:  # a bug in the double: answer like Imperva's res 1, say what broke
            print(f"imperva_server: internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
            status, payload, headers = 500, envelope(1, "Unexpected error", type(exc).__name__), {}
        record.res = int(payload["res"])
        if fault is not None and fault.kind == "res_str":
            payload["res"] = str(payload["res"])
        imperva._log(record, form)
        self._send(status, json.dumps(payload).encode(), "application/json", headers)

    def _send(
        self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None
    ) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            self.close_connection = True

    def _send_fault(self, fault: _Fault) -> None:
        if fault.kind == "429":
            body = json.dumps(envelope(1, "Too many requests", "rate limit exceeded")).encode()
            self._send(429, body, "application/json", {"Retry-After": str(fault.retry_after)})
        elif fault.kind in ("500", "503"):
            title = "Internal Server Error" if fault.kind == "500" else "Service Unavailable"
            self._send(int(fault.kind), HTML_PAGE.format(title=title).encode(), "text/html; charset=utf-8")
        elif fault.kind == "html200":
            self._send(200, HTML_PAGE.format(title="Error").encode(), "text/html; charset=utf-8")
        elif fault.kind == "badjson":
            self._send(200, b'{"res": 0, "res_mes', "application/json")
        elif fault.kind == "res3015":
            body = json.dumps(envelope(3015, "Internal error, please try again", "internal error")).encode()
            self._send(200, body, "application/json")
        elif fault.kind == "res4":
            body = json.dumps(envelope(4, "Server not available or timed out", "timed out")).encode()
            self._send(200, body, "application/json")

    def _reset(self) -> None:
        # SO_LINGER with a zero timeout turns close() into a TCP RST: the client
        # sees a reset / remote disconnect instead of an answer.
        self.close_connection = True
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
        except OSError:
            pass


def _parse_form(body: bytes, content_type: str) -> dict[str, str] | None:
    """The form fields, or None when the body is not a usable form."""
    media = content_type.split(";", 1)[0].strip().lower()
    if not content_type and not body:
        # A bodiless POST (e.g. account/verify with no parameters) is an empty form.
        return {}
    if media != "application/x-www-form-urlencoded":
        return None
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return {key: values[0] for key, values in parse_qs(text, keep_blank_values=True).items()}


EDGE_NET = (127, 77)  # edges (imperva_edge.py) take 127.77.x.y


def random_edge_address() -> str:
    return f"{EDGE_NET[0]}.{EDGE_NET[1]}.{random.randint(0, 255)}.{random.randint(1, 254)}"


def unused_loopback_address() -> str:
    """A 127.77.x.y on which nothing listens on ports 80 and 443: an edge that is not reachable.
    Checked by binding both ports as root; without root nothing but root can listen there, and
    binding port 0 only checks that the address is local."""
    for _ in range(50):
        address = random_edge_address()
        try:
            with socket.socket() as web, socket.socket() as tls:
                web.bind((address, 80))
                tls.bind((address, 443))
        except PermissionError:
            with socket.socket() as probe:
                probe.bind((address, 0))
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                continue
            raise
        return address
    raise RuntimeError("no unused 127.77.x.y address found")


class _Catch(BaseHTTPRequestHandler):
    def setup(self) -> None:
        super().setup()
        catcher: Catcher = self.server.catcher  # type: ignore[attr-defined]
        catcher._arrived()

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def handle(self) -> None:
        catcher: Catcher = self.server.catcher  # type: ignore[attr-defined]
        self.connection.settimeout(2)
        data = b""
        try:
            while len(data) < MAX_BODY:
                chunk = self.connection.recv(65536)
                if not chunk:
                    break
                data += chunk
                if b"\r\n\r\n" in data and len(data) >= _framed_length(data):
                    break
        except OSError:
            pass
        catcher._received(data)
        try:
            body = b'{"res": 0, "res_message": "OK"}'
            self.connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                                    b"Content-Length: %d\r\nConnection: close\r\n\r\n%s"
                                    % (len(body), body))
        except OSError:
            pass


def _framed_length(data: bytes) -> int:
    head, _, _ = data.partition(b"\r\n\r\n")
    match = re.search(rb"(?im)^content-length:\s*(\d+)", head)
    return len(head) + 4 + (int(match.group(1)) if match else 0)


class Catcher:
    """A plain-http server on a loopback address of its own (127.66.x.y) that records every
    connection and every byte that reaches it, and answers like Imperva's OK: where a redirect
    test points the API, to see that nothing (no key, no private key) ever arrives."""

    def __init__(self) -> None:
        self.connections = 0
        self._data: list[bytes] = []  # private: what arrived may hold a key, never shown
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._url = ""

    def start(self) -> Catcher:
        for _ in range(50):
            address = f"127.66.{random.randint(0, 255)}.{random.randint(1, 254)}"
            try:
                httpd = ThreadingHTTPServer((address, 0), _Catch)
            except OSError as error:
                if error.errno == errno.EADDRINUSE:
                    continue
                raise
            break
        else:
            raise RuntimeError("no free 127.66.x.y address")
        httpd.daemon_threads = True
        httpd.catcher = self  # type: ignore[attr-defined]
        self._httpd = httpd
        host, port = httpd.server_address[:2]
        self._url = f"http://{host}:{port}"
        threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.01},
                         daemon=True).start()
        return self

    def stop(self) -> None:
        httpd, self._httpd = self._httpd, None
        if httpd is not None:
            httpd.shutdown()
            httpd.server_close()

    def __enter__(self) -> Catcher:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """http://127.66.x.y:PORT (kept after stop(), for the assertions)."""
        assert self._url, "catcher not started"
        return self._url

    def _arrived(self) -> None:
        with self._lock:
            self.connections += 1

    def _received(self, data: bytes) -> None:
        with self._lock:
            self._data.append(data)

    @property
    def bytes_received(self) -> int:
        with self._lock:
            return sum(len(data) for data in self._data)

    def received(self, needle: bytes) -> bool:
        """Whether `needle` (a key, say) arrived; the data itself is never shown."""
        with self._lock:
            return any(needle in data for data in self._data)

    def __repr__(self) -> str:
        return f"Catcher(url={self._url!r}, connections={self.connections})"


class ImpervaServer:
    """The API double. Configure sites, start(), point a client at `url`."""

    def __init__(
        self,
        api_id: str = "12345",
        api_key: str = "test-key-0123456789abcdef",
        *,
        account_id: int = 1,
        permissions: bool = True,
        coverage_flag_name: str = "coverageError",
        omit_identity: bool = False,
        omit_input_hash: bool = False,
        omit_auth_type: bool = False,
        list_without_ssl: bool = False,
        sub_accounts: tuple[int, ...] = (),
        latency: float = 0.0,
    ) -> None:
        self.api_id = api_id
        self._api_key = api_key  # underscore: keep it out of casual reprs and dumps
        self.account_id = account_id
        self.permissions = permissions
        self.coverage_flag_name = coverage_flag_name
        self.omit_identity = omit_identity
        self.omit_input_hash = omit_input_hash
        # The contract's worst case for two key types: the shown certificate without authType.
        self.omit_auth_type = omit_auth_type
        # A parent account's key also reaches its sub-accounts' sites; account_id narrows a list.
        self.sub_accounts = set(sub_accounts)
        # The contract's worst case: sites/list items without ssl.custom_certificate.
        self.list_without_ssl = list_without_ssl
        self.latency = latency
        # Imperva creates new API keys disabled: every call with this key is refused (res 9418).
        self.key_disabled = False
        # Misbehaviour on purpose: answer uploads with res 0 but keep what the site held, so the
        # client's read-back is what catches it.
        self.drop_uploads = False
        # Called with each request's path as it arrives, before it is answered: a test runs
        # something there (e.g. a renewal replacing the lineage's files) between two calls.
        self.on_arrival: Callable[[str], None] | None = None
        # Misbehaviour on purpose: every sites/list page is the first one, whatever page_num says.
        self.ignore_page_num = False
        self.sites: dict[int, Site] = {}
        self.revoked_serials: set[int] = set()
        # Imperva checks revocation itself (OCSP, CRLs): a test names revoked certificates by
        # serial, or by a rule on the leaf (e.g. "every certificate but the first one").
        self.revoked: Callable[[x509.Certificate], bool] | None = None
        self.requests: list[Recorded] = []
        self.log_stream: TextIO | None = None  # main() sets stderr: one line per request
        self._held: dict[int, dict[str, Json]] = {}  # site_id -> slot -> record, oldest first
        # site_id -> slot -> every change as (time.monotonic(), material, or None for a removal),
        # oldest first: the edge double (imperva_edge.py) serves what had propagated at a time.
        self._slot_history: dict[int, dict[str, list[tuple[float, SlotMaterial | None]]]] = {}
        # The loopback address of the edge double serving these sites; the `dns` entries of
        # sites/status and sites/list point at it (A records) while it runs, else at
        # `idle_address`, where nothing listens (never a name needing real DNS).
        self.edge_address: str | None = None
        self.idle_address = unused_loopback_address()
        self.dns_target: str | None = None  # a CNAME target for every domain (e.g. xxxx.x.incapdns.net)
        self._faults: list[_Fault] = []
        self._redirects: dict[str, tuple[int, str]] = {}  # endpoint suffix -> (status, Location)
        self._lock = threading.RLock()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        url, sites = self._url_or_none(), sorted(self.sites)
        return f"ImpervaServer(url={url!r}, api_id={self.api_id!r}, sites={sites})"

    # ----- lifecycle -------------------------------------------------------

    def start(self, port: int = 0) -> ImpervaServer:
        if self._httpd is not None:
            raise RuntimeError("server already started")
        self._httpd = _HTTPServer(("127.0.0.1", port), self)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.01},  # stop() waits up to one poll; tests stop often
            name="imperva-double",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        httpd, thread = self._httpd, self._thread
        self._httpd = self._thread = None
        if httpd is not None:
            httpd.shutdown()
            httpd.server_close()
        if thread is not None:
            thread.join(timeout=5)

    def __enter__(self) -> ImpervaServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _url_or_none(self) -> str | None:
        if self._httpd is None:
            return None
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    @property
    def url(self) -> str:
        url = self._url_or_none()
        if url is None:
            raise RuntimeError("server not started")
        return url

    # ----- configuration and inspection -------------------------------------

    def add_site(self, site: Site) -> Site:
        with self._lock:
            self.sites[site.site_id] = site
            self._held.pop(site.site_id, None)  # a new site starts with no certificate
            self._slot_history.pop(site.site_id, None)
        return site

    def inject(self, path_suffix: str, kind: str, count: int = 1, retry_after: int = 1) -> None:
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; use one of {FAULT_KINDS}")
        if count < 0:
            raise ValueError("count must be >= 0")
        with self._lock:
            self._faults.extend(_Fault(path_suffix, kind, retry_after) for _ in range(count))

    def redirect(self, path_suffix: str, status: int | None, location: str = "") -> None:
        """Answer every call whose path ends with `path_suffix` with `status` (a 3xx) and
        `Location: location`, as a proxy or a moved API would, acting on nothing; None stops it."""
        with self._lock:
            if status is None:
                self._redirects.pop(path_suffix, None)
            elif not 300 <= status < 400:
                raise ValueError(f"a redirect is a 3xx status, not {status}")
            else:
                self._redirects[path_suffix] = (status, location)

    def _redirect_for(self, path: str) -> tuple[int, str] | None:
        with self._lock:
            for suffix, answer in self._redirects.items():
                if path.endswith(suffix):
                    return answer
        return None

    def clear(self) -> None:
        with self._lock:
            self.requests.clear()
            self._faults.clear()
            self._redirects.clear()

    def calls(self, path_suffix: str | None = None) -> list[Recorded]:
        with self._lock:
            return [r for r in self.requests if path_suffix is None or r.path.endswith(path_suffix)]

    def uploads(self, site_id: int | None = None) -> list[Recorded]:
        """Uploads that took effect: res 0 and no state-freezing fault."""
        return [
            r
            for r in self.calls(UPLOAD)
            if r.res == 0
            and r.fault in (None, "res_str")
            and (site_id is None or _form_site_id(r.form) == site_id)
        ]

    def console(self, endpoint: str, form: dict[str, str]) -> Json:
        """A call through the double's own HTTP API with its own key, as Imperva's console or
        another tool would make it behind the plugin's back; the answer is returned as is."""
        body = urlencode(form).encode()
        request = urllib.request.Request(
            self.url + PREFIX + endpoint, data=body, method="POST",
            headers={"x-API-Id": self.api_id, "x-API-Key": self._api_key,
                     "Content-Type": "application/x-www-form-urlencoded"})
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(request, timeout=10) as response:
            answer: Json = json.loads(response.read())
        return answer

    def console_upload(self, site_id: int, fullchain_pem: bytes, key_pem: bytes,
                       auth_type: str = "ECC") -> Json:
        """Someone else puts a certificate on the site; fails loudly if the double refuses it."""
        answer = self.console(UPLOAD, {
            "site_id": str(site_id), "auth_type": auth_type,
            "certificate": base64.b64encode(fullchain_pem).decode(),
            "private_key": base64.b64encode(key_pem).decode()})
        if answer.get("res") != 0:
            raise AssertionError(f"the double refused the console upload: {answer}")
        return answer

    def held(self, site_id: int) -> dict[str, Any] | None:
        with self._lock:
            slots = self._held.get(site_id)
            if not slots:
                return None
            return self._shown(list(slots.values())[-1])

    def held_slots(self, site_id: int) -> dict[str, dict[str, Any]]:
        """Every slot's full record (identity fields included, whatever the omit flags)."""
        with self._lock:
            return {slot: dict(record) for slot, record in self._held.get(site_id, {}).items()}

    def slot_history(self, site_id: int) -> dict[str, list[tuple[float, SlotMaterial | None]]]:
        """Per slot, every change as (monotonic time, material or None for a removal), oldest first."""
        with self._lock:
            return {slot: list(changes) for slot, changes in self._slot_history.get(site_id, {}).items()}

    def _shown(self, record: Json) -> Json:
        shown = dict(record)
        if self.omit_identity:
            shown.pop("serialNumber", None)
            shown.pop("fingerPrint", None)
        if self.omit_input_hash:
            shown.pop("inputHash", None)
        if self.omit_auth_type:
            shown.pop("authType", None)
        return shown

    def _reachable(self, account_id: int) -> bool:
        return account_id == self.account_id or account_id in self.sub_accounts

    # ----- request plumbing (called from handler threads) -------------------

    def _arrive(self, record: Recorded) -> _Fault | None:
        with self._lock:
            self.requests.append(record)
            for index, fault in enumerate(self._faults):
                if record.path.endswith(fault.suffix):
                    return self._faults.pop(index)
        return None

    def _scrub(self, value: str) -> str:
        # Belt and braces: the key must not survive under any unexpected name.
        return value.replace(self._api_key, REDACTED) if self._api_key else value

    def _redact_headers(self, items: Any) -> dict[str, str]:
        return {
            name: REDACTED if name.lower() in SECRET_HEADERS else self._scrub(value) for name, value in items
        }

    def _redact_form(self, form: dict[str, str]) -> dict[str, str]:
        return {k: REDACTED if _norm_param(k) in SECRET_FIELDS else self._scrub(v) for k, v in form.items()}

    def _redact_query(self, query: str) -> str:
        if not query:
            return ""
        parts = []
        for piece in query.split("&"):
            name = piece.split("=", 1)[0]
            try:
                decoded = parse_qsl(name + "=", keep_blank_values=True)[0][0]
            except IndexError:
                decoded = name
            parts.append(f"{name}={REDACTED}" if _norm_param(decoded) in SECRET_FIELDS else piece)
        return self._scrub("&".join(parts))

    def _log(self, record: Recorded, form: dict[str, str] | None) -> None:
        stream = self.log_stream
        if stream is None:
            return
        raw = (form or {}).get("site_id")
        # Only a plain number is echoed: the log shows nothing a client could smuggle in.
        site = "-" if raw is None else (raw if re.fullmatch(r"\d{1,12}", raw) else "?")
        outcome = f"res={record.res}" if record.res is not None else "res=-"
        fault = f" fault={record.fault}" if record.fault else ""
        print(
            f"{record.method} {record.path} site_id={site} {outcome}{fault}",
            file=stream,
            flush=True,
        )

    def _authorized(self, headers: Any) -> bool:
        given_id = headers.get("x-API-Id")
        given_key = headers.get("x-API-Key")
        if given_id is None or given_key is None:
            return False
        # compare_digest: no timing hints, even in a test double.
        return hmac.compare_digest(given_id.encode(), self.api_id.encode()) and hmac.compare_digest(
            given_key.encode(), self._api_key.encode()
        )

    def _answer(
        self,
        method: str,
        path: str,
        query: str,
        headers: Any,
        form: dict[str, str] | None,
        commit: bool,
    ) -> tuple[int, Json, dict[str, str]]:
        endpoint = path[len(PREFIX) :] if path.startswith(PREFIX) else ""
        if endpoint not in ENDPOINTS:
            return 404, envelope(1, "Unknown path", f"no such endpoint: {path}"), {}
        if method != "POST":
            return 405, envelope(1, "Method not allowed", "use POST"), {"Allow": "POST"}
        try:
            names = {_norm_param(name) for name, _ in parse_qsl(query, keep_blank_values=True)}
            if names & URL_FORBIDDEN:
                message = "credentials or key material in the URL are refused"
                raise _Refusal(2, message, message)
            if not self._authorized(headers):
                return (
                    401,
                    {
                        "res": 9411,
                        "res_message": "Authentication parameters missing or incorrect",
                        "debug_info": {"id-info": ID_INFO},
                    },
                    {},
                )
            if self.key_disabled:
                raise _Refusal(9418, "Disabled API Key", "the API key is disabled")
            if form is None:
                message = "Invalid input: form body required"
                raise _Refusal(2, message, "body must be application/x-www-form-urlencoded")
            handler = {
                UPLOAD: self._upload,
                REMOVE: self._remove,
                LIST: self._list,
                STATUS: self._status,
                VERIFY: self._verify,
                PERFORMANCE: self._performance,
            }[endpoint]
            return 200, handler(form, commit), {}
        except _Refusal as refusal:
            return refusal.status, envelope(refusal.res, refusal.message, refusal.error), {}

    # ----- endpoints ----------------------------------------------------------

    def _site(self, form: dict[str, str]) -> Site:
        site_id = _form_site_id(form)
        with self._lock:
            site = self.sites.get(site_id) if site_id is not None else None
        if site is None or not self._reachable(site.account_id):
            error = "site_id missing" if "site_id" not in form else "site_id unknown or not in this account"
            raise _Refusal(9413, "Unknown/unauthorized site_id", error)
        return site

    def _require_permission(self) -> None:
        if not self.permissions:
            raise _Refusal(9415, "Operation not allowed", "the API key lacks the required permission")

    @staticmethod
    def _auth_type(form: dict[str, str]) -> str:
        auth_type = form.get("auth_type") or "RSA"
        if auth_type not in AUTH_TYPES:
            raise _invalid(f"auth_type must be RSA or ECC, not {auth_type[:20]!r}")
        return auth_type

    def _upload(self, form: dict[str, str], commit: bool) -> Json:
        site = self._site(form)
        self._require_permission()
        if not site.ssl:
            raise _Refusal(4205, "Site does not have SSL", "SSL is not enabled on this site")
        if not site.plan_custom_certs:
            raise _Refusal(9414, "Feature not permitted", "custom certificates are not in the account's plan")

        if not form.get("certificate"):
            raise _invalid("certificate is missing")
        cert_data = _b64(form["certificate"], "certificate")
        try:
            certs = x509.load_pem_x509_certificates(cert_data)
        except ValueError:
            raise _invalid("certificate is not PEM certificates") from None
        if not form.get("private_key"):
            raise _invalid("private_key is missing")
        key = _load_key(_b64(form["private_key"], "private_key"), form.get("passphrase"))
        auth_type = self._auth_type(form)
        leaf = certs[0]
        if _spki(key.public_key()) != _spki(leaf.public_key()):
            raise _invalid("private_key does not match the certificate's public key")
        if isinstance(key, ec.EllipticCurvePrivateKey):
            needed = "ECC"
        elif isinstance(key, rsa.RSAPrivateKey):
            needed = "RSA"
        else:
            raise _invalid("private_key type is not supported (RSA or EC only)")
        if auth_type != needed:
            raise _invalid(f"auth_type {auth_type} does not match the {needed} private key")
        if isinstance(key, rsa.RSAPrivateKey) and key.key_size > MAX_RSA_BITS:
            raise _invalid(f"RSA key of {key.key_size} bits is above the {MAX_RSA_BITS}-bit limit")

        now = dt.datetime.now(dt.timezone.utc)
        sans = _dns_sans(leaf)
        with self._lock:
            rule = self.revoked
            revoked = leaf.serial_number in self.revoked_serials or bool(rule and rule(leaf))
        details: Json = {
            "active": True,
            "expirationDate": _ms(leaf.not_valid_after_utc),
            "revocationError": revoked,
            "validityError": not (leaf.not_valid_before_utc <= now <= leaf.not_valid_after_utc),
            "chainError": _chain_error(certs),
            self.coverage_flag_name: not all(_covered(d, sans) for d in site.all_domains),
        }
        fingerprint = leaf.fingerprint(hashes.SHA1()).hex(":").upper()  # Imperva's own format
        record: Json = {
            **details,
            "serialNumber": format(leaf.serial_number, "X"),
            "fingerPrint": f"SHA1 Fingerprint={fingerprint}",
            "authType": auth_type,
            "uploadedAt": _now_ms(),
        }
        if "input_hash" in form:
            record["inputHash"] = form["input_hash"]
        if commit and not self.drop_uploads:
            pkcs8, plain = serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            material = SlotMaterial(
                auth_type=auth_type,
                fullchain_pem=b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs),
                key_pem=key.private_bytes(serialization.Encoding.PEM, pkcs8, plain),
                serial=leaf.serial_number,
            )
            with self._lock:
                slots = self._held.setdefault(site.site_id, {})
                slots.pop(auth_type, None)  # re-insert: the newest slot is shown
                slots[auth_type] = record
                history = self._slot_history.setdefault(site.site_id, {}).setdefault(auth_type, [])
                history.append((time.monotonic(), material))
        debug = {"details": details, "id-info": ID_INFO}
        return {"res": 0, "res_message": "OK", "debug_info": debug}

    def _remove(self, form: dict[str, str], commit: bool) -> Json:
        site = self._site(form)
        self._require_permission()
        auth_type = self._auth_type(form)
        if commit:
            with self._lock:
                if self._held.get(site.site_id, {}).pop(auth_type, None) is not None:
                    history = self._slot_history.setdefault(site.site_id, {}).setdefault(auth_type, [])
                    history.append((time.monotonic(), None))
        return envelope(0, "OK")

    def _site_status(self, site: Site) -> Json:
        with self._lock:
            slots = self._held.get(site.site_id)
            current = self._shown(list(slots.values())[-1]) if slots else None
        return {
            "site_id": site.site_id,
            "domain": site.domain,
            "display_name": site.display_name or site.domain,
            "account_id": site.account_id,
            "status": "fully-configured",
            "active": "active",
            "dns": self._dns(site),
            "ssl": {"custom_certificate": current} if current else {},
        }

    def _dns(self, site: Site) -> list[Json]:
        # Imperva always shows one entry per domain of the site: a CNAME to xxxx.x.incapdns.net for
        # a subdomain, A addresses for an apex. On loopback only an address can reach the edge
        # double, so every domain gets an A entry: the edge's, or an address where nothing listens.
        # `dns_target` set: CNAME entries to it instead, as Imperva shows for a subdomain.
        if self.dns_target:
            return [{"dns_record_name": name, "set_type_to": "CNAME", "set_data_to": [self.dns_target]}
                    for name in site.all_domains]
        address = self.edge_address or self.idle_address
        return [{"dns_record_name": name, "set_type_to": "A", "set_data_to": [address]}
                for name in site.all_domains]

    def _status(self, form: dict[str, str], commit: bool) -> Json:
        return {**envelope(0, "OK"), **self._site_status(self._site(form))}

    def _number(self, form: dict[str, str], name: str, default: int) -> int:
        raw = form.get(name)
        if raw is None or raw == "":
            return default
        try:
            return int(raw)
        except ValueError:
            raise _invalid(f"{name} must be a number") from None

    def _check_account(self, form: dict[str, str]) -> int | None:
        """The (sub-)account asked for, or None for the key's own account and all below it."""
        raw = form.get("account_id")
        if raw is None:
            return None
        if not raw.strip().isdigit() or not self._reachable(int(raw)):
            raise _Refusal(9403, "Unknown/unauthorized account_id", "account_id unknown or not accessible")
        return int(raw)

    def _list(self, form: dict[str, str], commit: bool) -> Json:
        page_size = min(100, max(1, self._number(form, "page_size", 50)))
        page_num = self._number(form, "page_num", 0)
        if page_num < 0:
            raise _invalid("page_num must be >= 0")
        if self.ignore_page_num:
            page_num = 0
        account = self._check_account(form)
        with self._lock:
            mine = sorted(
                (
                    s
                    for s in self.sites.values()
                    if (s.account_id == account if account is not None else self._reachable(s.account_id))
                ),
                key=lambda s: s.site_id,
            )
        page = mine[page_num * page_size : (page_num + 1) * page_size]
        items = [self._site_status(s) for s in page]
        if self.list_without_ssl:
            for item in items:
                item.pop("ssl", None)
        return {**envelope(0, "OK"), "sites": items}

    def _verify(self, form: dict[str, str], commit: bool) -> Json:
        account = self._check_account(form)
        return {
            **envelope(0, "OK"),
            "account_id": self.account_id if account is None else account,
            "account_name": "Test account",
            "plan_name": "Enterprise",
        }

    def _performance(self, form: dict[str, str], commit: bool) -> Json:
        site = self._site(form)
        self._require_permission()
        param = form.get("param", "")
        if param != "redirect_http_to_https":
            raise _invalid(f"param {param[:40]!r} is not supported")
        value = form.get("value", "")
        if value not in ("true", "false"):
            raise _invalid("value must be true or false")
        if commit:
            with self._lock:
                site.redirect_http_to_https = value == "true"
        return envelope(0, "OK")


SITE_SPEC = "ID:DOMAIN[,DOMAIN...][:nossl]"


def _parse_site(spec: str) -> Site:
    site_id, _, rest = spec.partition(":")
    domains, _, option = rest.partition(":")
    names = [d.strip() for d in domains.split(",") if d.strip()]
    if not site_id.strip().isdigit() or not names or option not in ("", "nossl"):
        raise argparse.ArgumentTypeError(
            f"--site wants {SITE_SPEC}, e.g. 101:www.example.test,example.test; got {spec!r}"
        )
    return Site(int(site_id), names[0], names[1:], ssl=option != "nossl")


def main(argv: list[str] | None = None) -> int:
    defaults = ImpervaServer()  # not started: only its default credentials are read
    parser = argparse.ArgumentParser(
        description=(
            "Imperva v1 API test double on 127.0.0.1: sites/list, sites/status, account/verify,\n"
            "sites/customCertificate/upload and /remove, sites/performance/advanced.\n"
            "Prints IMPERVA_URL=http://127.0.0.1:PORT on stdout, then one line per request on\n"
            "stderr (never a key or a certificate), until Ctrl-C or SIGTERM."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "credentials it accepts (sent as x-API-Id / x-API-Key headers), unless --api-id and\n"
            "--api-key say otherwise; published test values, never use them for anything real:\n"
            f"  API id   {defaults.api_id}\n"
            f"  API key  {defaults._api_key}\n"
            "\n"
            "example:\n"
            "  %(prog)s --site 101:www.example.test,example.test \\\n"
            "      --site 102:shop.example.test --site 103:nossl.example.test:nossl\n"
        ),
    )
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default 0: a free one)")
    parser.add_argument(
        "--site",
        type=_parse_site,
        action="append",
        default=[],
        metavar=SITE_SPEC,
        help="a site of the account (repeatable): its id, its main domain, the other domains it "
        "serves; ':nossl' makes a site without SSL, whose uploads are refused with res 4205. "
        "Default: no sites",
    )
    parser.add_argument(
        "--latency", type=float, default=0.0, help="seconds added to every answer (default 0)"
    )
    parser.add_argument(
        "--api-id", default=defaults.api_id, help=f"the API id to accept (default {defaults.api_id})"
    )
    parser.add_argument(
        "--api-key", default=None, help="the API key to accept (default: the test key below)"
    )
    parser.add_argument(
        "--account-id", type=int, default=1, help="the account the sites belong to (default 1)"
    )
    parser.add_argument(
        "--coverage-flag-name",
        default="coverageError",
        help="the flag set when a certificate misses a site's domain (default coverageError; "
        "hostnameMismatchError is the other name seen in Imperva's answers)",
    )
    args = parser.parse_args(argv)

    kwargs: dict[str, Any] = {
        "account_id": args.account_id,
        "coverage_flag_name": args.coverage_flag_name,
    }
    if args.api_key is not None:
        kwargs["api_key"] = args.api_key
    server = ImpervaServer(args.api_id, latency=args.latency, **kwargs)
    for site in args.site:
        site.account_id = args.account_id
        server.add_site(site)
    server.log_stream = sys.stderr
    server.start(args.port)
    print(f"IMPERVA_URL={server.url}", flush=True)

    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    try:
        while not stopping.wait(0.5):  # short waits keep Ctrl-C responsive
            pass
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
