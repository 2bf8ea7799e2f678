"""What the world sees through a site's Imperva edge: the challenge path before the CA is asked,
and the certificate the edge serves after an upload (issue 12).

Knows nothing of certbot or its options; the standard library and `cryptography` only.

- `edge_addresses(status, name)`: where the site's DNS must point, from the `dns` entries of a
  sites/status answer or a sites/list item (A: the addresses; CNAME: the target, resolved).
- `probe_challenge_path(name, address, webroot)`: writes a random file under the webroot's
  `.well-known/acme-challenge/`, fetches it as the CA would (port 80 of the edge, `Host: NAME`, up to
  10 redirects to ports 80/443, TLS not verified), compares the body, always deletes the file,
  and says what answered and what to fix.
- `served_certificate(name, address, key_type)`: the leaf the edge serves to an SNI client that
  offers only ECDSA ("ECC") or only RSA ("RSA"). Python's ssl cannot limit the signature
  algorithms a client offers in TLS 1.3, so the handshake is capped at TLS 1.2, where the cipher
  suites (aECDSA or aRSA only) decide which certificate a server can send.
- `wait_for_edge(...)`: retries that with backoff until the expected leaf is served or the wait is
  over; a wait of 0 does no network work at all.
"""
from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import http.client
import ipaddress
import os
import re
import secrets
import socket
import ssl
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, List, Mapping, Optional, Sequence, Tuple, Union
from urllib.parse import urljoin, urlsplit

from cryptography import x509
from cryptography.hazmat.backends import default_backend
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

CHALLENGE_PATH = "/.well-known/acme-challenge/"
MAX_REDIRECTS = 10  # as Let's Encrypt's validation follows
REDIRECT_STATUSES = (301, 302, 303, 307, 308)
MAX_BODY = 64 * 1024
USER_AGENT = "certbot-incapsula-preflight"
KEY_TYPES = ("ECC", "RSA")
_CIPHERS = {"ECC": "aECDSA", "RSA": "aRSA"}
_INCIDENT = re.compile(r"Incapsula incident ID:?\s*([0-9A-Za-z]+(?:-[0-9A-Za-z]+)*)")

# ProbeResult.outcome
OK = "ok"
IMPERVA_BLOCK = "imperva_block"
IMPERVA_CHALLENGE = "imperva_challenge"
ORIGIN_404 = "origin_404"
CACHED = "cached"
TIMEOUT = "timeout"  # accepted the connection, no complete answer in time: the CA fails too
OTHER = "other"
WEBROOT = "webroot"  # the probe could not be written
SEVERAL_ORIGINS = "several_origins"  # some answers carried the file, others were a 404
REFUSED = "refused"  # not checked: the connection was refused
UNREACHED = "unreached"  # not checked: no DNS answer, no route, no connection in time
NOT_CHECKED = (REFUSED, UNREACHED)

# EdgeResult.outcome
SERVES = "serves"
STALE = "stale"
UNREACHABLE = "unreachable"
OFF = "off"


class EdgeError(Exception):
    """The edge could not be reached or read; str() is one line naming the edge and the cause.
    `kind` is "refused", "timeout", "tls", "unparsable" or "other"."""

    def __init__(self, message: str, kind: str = "other") -> None:
        super().__init__(message)
        self.kind = kind


class EdgeLookupError(EdgeError):
    """A site's `dns` entries name an edge host that does not resolve."""


# ----- where the edge is ---------------------------------------------------------------------


def edge_addresses(status: Mapping[str, Any], name: Optional[str] = None) -> List[str]:
    """The edge addresses from the `dns` entries of a sites/status answer or sites/list item.

    With `name`, the entries for that record name are used when there are any (else all). `A`
    (and `AAAA`) entries give their addresses; a `CNAME` target (e.g. xxxx.x.incapdns.net) is
    resolved with getaddrinfo. An empty list when the site has no `dns` entries; EdgeLookupError
    when it has some but none gives an address."""
    entries = [e for e in status.get("dns") or [] if isinstance(e, Mapping)]
    if name is not None:
        wanted = name.lower().rstrip(".")
        mine = [e for e in entries if str(e.get("dns_record_name", "")).lower().rstrip(".") == wanted]
        entries = mine or entries
    found: List[str] = []
    unresolved: List[str] = []
    for entry in entries:
        kind = str(entry.get("set_type_to", "")).upper()
        data = entry.get("set_data_to") or []
        for item in [data] if isinstance(data, str) else data:
            item = str(item).strip().rstrip(".")
            if kind in ("A", "AAAA"):
                try:
                    found.append(str(ipaddress.ip_address(item)))
                except ValueError:
                    unresolved.append(item)
            elif kind == "CNAME":
                try:
                    infos = socket.getaddrinfo(item, 80, type=socket.SOCK_STREAM)
                except (socket.gaierror, UnicodeError):
                    unresolved.append(item)
                    continue
                found.extend(str(info[4][0]) for info in infos)
    if not found and unresolved:
        raise EdgeLookupError(
            f"Imperva's edge {', '.join(unresolved)} (from the site's DNS entries) does not resolve",
            "other",
        )
    return list(dict.fromkeys(found))  # in order, without repeats


# ----- the challenge path ----------------------------------------------------------------------


@dataclass(frozen=True)
class ProbeResult:
    name: str
    address: str
    outcome: str  # OK, IMPERVA_BLOCK, ..., SEVERAL_ORIGINS; REFUSED or UNREACHED: not checked
    message: str  # one line: the name, what answered, the fix
    status: Optional[int] = None  # HTTP status of the last answer
    incident_id: Optional[str] = None  # Imperva's block page's incident ID
    url: str = ""  # the last URL fetched (after redirects)
    redirects: int = 0
    tries: Tuple[ProbeResult, ...] = ()  # each fetch, when the name was fetched several times

    @property
    def ok(self) -> bool:
        return self.outcome == OK

    @property
    def checked(self) -> bool:
        """False when the edge could not be reached from this host: no proof either way."""
        return self.outcome not in NOT_CHECKED

    @property
    def text(self) -> str:
        """The message without the name in front."""
        return self.message.split(": ", 1)[1] if ": " in self.message else self.message


class _NotReached(Exception):
    """This host could not reach the server at all (DNS, refused, no route, no connection in
    time): the CA, on the internet, may well reach it."""

    def __init__(self, message: str, outcome: str = UNREACHED) -> None:
        super().__init__(message)
        self.outcome = outcome


class _NoAnswer(Exception):
    """The server accepted the connection but its answer was not complete by the deadline;
    `status` when the headers had come."""

    def __init__(self, status: Optional[int] = None) -> None:
        super().__init__(status)
        self.status = status


def _host_problem(host: str) -> Optional[str]:
    """Why `host` (a URL's host name) can be no DNS name, or None: an empty label or one over
    63 characters cannot even be put in a DNS query, so no resolver, the CA's included, finds it."""
    with contextlib.suppress(ValueError):
        ipaddress.ip_address(host)
        return None
    labels = host[:-1].split(".") if host.endswith(".") else host.split(".")
    if any(not label for label in labels):
        return "has an empty label"
    if any(len(label) > 63 for label in labels):
        return "has a label over 63 characters"
    try:
        encoded = host.encode("idna")
    except UnicodeError:
        return "is no valid host name"
    if len(encoded) > 253:
        return "is over 253 characters"
    return None


def _resolve(host: str, port: int, deadline: float) -> List[str]:
    """The addresses of `host`, as the CA would look them up (DNS), within the deadline."""
    found: List[List[str]] = []
    failed: List[BaseException] = []

    def lookup() -> None:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            found.append(list(dict.fromkeys(str(info[4][0]) for info in infos)))
        except (OSError, UnicodeError) as error:
            failed.append(error)

    worker = threading.Thread(target=lookup, daemon=True)  # getaddrinfo has no timeout of its own
    worker.start()
    worker.join(max(deadline - time.monotonic(), 0))
    if found and found[0]:
        return found[0]
    if failed or found:
        raise _NotReached(f"{host} does not resolve from this host")
    raise _NotReached(f"the DNS lookup of {host} did not answer in time")


def _connect(addresses: Sequence[str], port: int, deadline: float, who: str) -> socket.socket:
    """A connection to the first of `addresses` that takes one; _NotReached when none does."""
    refused = False
    last: Optional[str] = None
    for address in addresses:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        try:
            return socket.create_connection((address, port), timeout=remaining)
        except ConnectionRefusedError:
            refused = True
        except OSError as error:
            last = "no connection in time" if _is_timeout(error) else (error.strerror or str(error))
    if refused:
        raise _NotReached(f"{who} refused the connection on port {port}", REFUSED)
    raise _NotReached(f"{who} could not be reached on port {port} ({last or 'no time left'})")


def _get(addresses: Sequence[str], url: str, deadline: float, who: str) -> Tuple[int, Any, bytes]:
    """GET `url` from the first of `addresses` that answers, everything (connection, TLS,
    headers, body) by `deadline`: a timer cuts the connection then, however slowly it drips."""
    parts = urlsplit(url)
    host = (parts.hostname or "").encode("idna").decode("ascii")  # checked by _host_problem
    port = parts.port or (443 if parts.scheme == "https" else 80)
    sock: socket.socket = _connect(addresses, port, deadline, who)
    cut = threading.Event()

    def cut_off() -> None:
        cut.set()
        with contextlib.suppress(OSError):
            # socket.socket's own shutdown, also on a TLS socket: it wakes a read blocked in
            # another thread without touching the TLS object that read uses.
            socket.socket.shutdown(sock, socket.SHUT_RDWR)

    timer = threading.Timer(max(deadline - time.monotonic(), 0), cut_off)
    timer.daemon = True
    timer.start()
    headers_done = False
    try:
        sock.settimeout(max(deadline - time.monotonic(), 0.001))
        if parts.scheme == "https":
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE  # as the CA: a redirect to https is not verified
            sock = context.wrap_socket(sock, server_hostname=host or None)
        connection = http.client.HTTPConnection(host, port)
        connection.sock = sock
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        host_header = host if port in (80, 443) else f"{host}:{port}"
        headers = {"Host": host_header, "User-Agent": USER_AGENT, "Accept": "*/*", "Connection": "close"}
        connection.request("GET", path, headers=headers)
        response = connection.getresponse()
        headers_done = True
        body = response.read(MAX_BODY)
        if cut.is_set() or time.monotonic() >= deadline:
            raise _NoAnswer(response.status)
        return response.status, response.headers, body
    except (OSError, http.client.HTTPException) as error:
        if cut.is_set() or _is_timeout(error) or time.monotonic() >= deadline:
            raise _NoAnswer(response.status if headers_done else None) from None
        raise
    finally:
        timer.cancel()
        with contextlib.suppress(OSError):
            sock.close()


def _is_timeout(error: BaseException) -> bool:
    timed_out = getattr(error, "errno", None) == errno.ETIMEDOUT
    return timed_out or isinstance(error, (socket.timeout, TimeoutError))


def _prepare_probe(webroot: Path) -> Tuple[Path, List[Path]]:
    """The challenge directory, made if missing (0755, like certbot's webroot plugin); returns it
    and the directories made, which are removed afterwards."""
    if not webroot.is_dir():
        raise FileNotFoundError(errno.ENOENT, "no such directory", str(webroot))
    made: List[Path] = []
    for directory in (webroot / ".well-known", webroot / ".well-known" / "acme-challenge"):
        if not directory.is_dir():
            directory.mkdir()
            made.append(directory)
            os.chmod(directory, 0o755)  # noqa: S103 - the origin's server may run as another user
    return webroot / ".well-known" / "acme-challenge", made


@contextlib.contextmanager
def challenge_directory(webroot: Union[str, Path]) -> Iterator[Path]:
    """The webroot's challenge directory while the block runs; the directories made for it are
    removed after (when empty): several probes of one webroot at once share it this way."""
    directory, made = _prepare_probe(Path(webroot))
    try:
        yield directory
    finally:
        _remove_made(made)


def _remove_made(made: List[Path]) -> None:
    for made_dir in reversed(made):
        try:
            made_dir.rmdir()
        except OSError:
            pass  # not empty any more: someone else (certbot) uses it now


def probe_challenge_path(
    name: str,
    address: str,
    webroot: Union[str, Path],
    *,
    timeout: float = 10.0,
    site: Optional[str] = None,
    attempts: int = 1,
) -> ProbeResult:
    """Fetch a fresh probe file from `webroot` as the CA would, through the edge at `address`,
    `attempts` times at once (a balancer spreads requests that arrive together over its origin
    servers), each fetch within `timeout` seconds, redirects included.

    `site` names the Imperva site in the messages (e.g. "site 101"). The probe file (and any
    directory made for it) is always removed. With several attempts the result sums them up
    (SEVERAL_ORIGINS when some carried the file and others were the origin's 404) and `tries`
    holds each one."""
    site_label = site or "the Imperva site"
    edge = f"Imperva's edge {address}"
    root = Path(webroot)

    def result(outcome: str, message: str, **extra: Any) -> ProbeResult:
        return ProbeResult(name, address, outcome, f"{name}: {message}", **extra)

    try:
        directory, made = _prepare_probe(root)
    except OSError as error:
        return result(WEBROOT, f"cannot write a probe file under the webroot -w {root}: "
                      f"{error.strerror or error}")
    token = secrets.token_urlsafe(32)  # the shape of an ACME token
    content = f"certbot-incapsula pre-flight {secrets.token_urlsafe(16)}".encode()
    probe = directory / token
    try:
        try:
            descriptor = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            with os.fdopen(descriptor, "wb") as handle:
                handle.write(content)
            os.chmod(probe, 0o644)  # whatever the umask: the origin's server must read it
        except OSError as error:
            return result(WEBROOT, f"cannot write a probe file under the webroot -w {root}: "
                          f"{error.strerror or error}")

        def once(_: int) -> ProbeResult:
            return _probe(name, address, token, content, timeout, root, site_label, edge, result)

        if attempts <= 1:
            return once(0)
        with ThreadPoolExecutor(max_workers=attempts) as pool:
            tries = list(pool.map(once, range(attempts)))
        return summed(tries, edge, root, site_label)
    finally:
        try:
            probe.unlink()
        except OSError:
            pass  # already gone, or never written
        _remove_made(made)


def several_origins_text(carried: int, missing: int, edge: str, root: Union[str, Path],
                         site_label: str) -> str:
    """What to say when some answers carried the probe file and others were a 404."""
    return (f"{carried} of {carried + missing} answers through {edge} carried the probe file and "
            f"{missing} were a 404: {site_label} has several origin servers and this host's webroot "
            f"-w {root} is on only one of them. Serve {CHALLENGE_PATH} from one directory shared by "
            f"every origin server, or have the others proxy or redirect it to this host, or make "
            f"them standby servers, or use dns-01 (see docs/several-servers.md)")


def summed(tries: Sequence[ProbeResult], edge: str, root: Union[str, Path], site_label: str) -> ProbeResult:
    """One result for several fetches of one name: a failure the CA would meet wins."""
    first = tries[0]
    passed = [one for one in tries if one.ok]
    failed = [one for one in tries if one.checked and not one.ok]
    if passed and failed and all(one.outcome == ORIGIN_404 for one in failed):
        text = several_origins_text(len(passed), len(failed), edge, root, site_label)
        return dataclasses.replace(failed[0], outcome=SEVERAL_ORIGINS, message=f"{first.name}: {text}",
                                   tries=tuple(tries))
    if failed:
        chosen = failed[0]
        if passed:  # said, so that nobody reads a flaky answer as a settled one
            chosen = dataclasses.replace(chosen, message=f"{chosen.message} ({len(passed)} of "
                                         f"{len(tries)} answers carried the file)")
        return dataclasses.replace(chosen, tries=tuple(tries))
    chosen = passed[0] if passed else first
    return dataclasses.replace(chosen, tries=tuple(tries))


def _probe(
    name: str,
    address: str,
    token: str,
    content: bytes,
    timeout: float,
    root: Path,
    site_label: str,
    edge: str,
    result: Callable[..., ProbeResult],
) -> ProbeResult:
    exception = f"add a WAF/bot-protection exception for {CHALLENGE_PATH} on {site_label}"
    first_host = name.lower().rstrip(".")
    url = f"http://{name}{CHALLENGE_PATH}{token}"
    deadline = time.monotonic() + timeout  # one for the whole fetch, every redirect included
    redirects = 0
    while True:
        parts = urlsplit(url)
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:  # a port that is no number
            port = -1
        host = (parts.hostname or "").rstrip(".") if parts.hostname else ""
        if parts.scheme not in ("http", "https") or port not in (80, 443) or not host:
            return result(OTHER, f"{edge} redirects the challenge path to {url}, which the CA does not "
                          f"follow (http or https on ports 80 and 443 only): let {CHALLENGE_PATH} through "
                          f"on {site_label}", redirects=redirects, url=url)
        problem = _host_problem(host)
        if problem is not None:
            return result(OTHER, f"{edge} redirects the challenge path to {url}, whose host {problem}: "
                          f"no DNS lookup can find it, so the CA cannot follow it either; fix that "
                          f"redirect on {site_label} or at the origin", redirects=redirects, url=url)
        # The name itself goes to the edge Imperva names for it; a new host, as the CA finds it.
        who = edge if host == first_host else host
        try:
            addresses = [address] if host == first_host else _resolve(host, port, deadline)
            if host != first_host:
                who = f"{host} ({', '.join(addresses)})"
            status, headers, body = _get(addresses, url, deadline, who)
        except _NotReached as error:
            where = "" if host == first_host else f" after {edge} redirected the challenge path to {url}"
            return result(error.outcome, f"{error}{where}", url=url, redirects=redirects)
        except _NoAnswer as error:
            what = (f"no answer from {who} within {timeout:g} s" if error.status is None else
                    f"{who} sent HTTP {error.status} but not the whole answer within {timeout:g} s")
            return result(TIMEOUT, f"{what} after it accepted the connection (a CA waits about as "
                          f"long): check that {site_label} lets {CHALLENGE_PATH} through to an origin "
                          "that is up", url=url, redirects=redirects, status=error.status)
        except ssl.SSLError as error:
            return result(OTHER, f"the TLS handshake with {who} failed after a redirect to {url} "
                          f"({error.reason or error})", url=url, redirects=redirects)
        except (OSError, http.client.HTTPException) as error:
            return result(OTHER, f"{who} closed the connection without a usable answer "
                          f"({type(error).__name__}): check that {site_label} lets {CHALLENGE_PATH} "
                          "through to the origin", url=url, redirects=redirects)
        location = headers.get("Location")
        if status in REDIRECT_STATUSES and location:
            if redirects >= MAX_REDIRECTS:
                return result(OTHER, f"{edge} redirects the challenge path more than {MAX_REDIRECTS} times: "
                              "fix the redirect loop", status=status, url=url, redirects=redirects)
            try:
                url = urljoin(url, location.strip())
            except ValueError:  # e.g. an unbalanced [ in the host
                return result(OTHER, f"{edge} redirects the challenge path to {location.strip()!r}, "
                              "which is no URL the CA can follow", status=status, redirects=redirects)
            redirects += 1
            continue
        break

    extra = {"status": status, "url": url, "redirects": redirects}
    if status == 200 and body.strip() == content:
        return result(OK, f"the challenge path reaches the webroot through {edge}", **extra)
    text = body.decode("utf-8", "replace")
    incident = _INCIDENT.search(text)
    if incident is not None:
        return result(IMPERVA_BLOCK, f"{edge} blocked the request (HTTP {status}, Incapsula incident ID: "
                      f"{incident.group(1)}): {exception}", incident_id=incident.group(1), **extra)
    if "_Incapsula_Resource" in text:
        return result(IMPERVA_CHALLENGE, f"{edge} answered with a JavaScript challenge (HTTP {status}) "
                      f"that the CA cannot pass: {exception}", **extra)
    if status == 404:
        return result(ORIGIN_404, f"the origin answered 404 through {edge}: the webroot -w {root} is not "
                      f"where the origin serves {name} from", **extra)
    if status == 200:
        return result(CACHED, f"{edge} answered with another body (a cached or stale answer): exclude "
                      f"{CHALLENGE_PATH} from caching on {site_label}", **extra)
    return result(OTHER, f"{edge} answered HTTP {status} instead of the file: check that {site_label} "
                  f"serves {name} and lets {CHALLENGE_PATH} through to the webroot -w {root}", **extra)


# ----- the certificate the edge serves -----------------------------------------------------------


def _key_type(key_type: str) -> str:
    normal = {"ECDSA": "ECC", "EC": "ECC"}.get(key_type.upper(), key_type.upper())
    if normal not in KEY_TYPES:
        raise ValueError(f"key type {key_type!r} is neither ECC nor RSA")
    return normal


def served_certificate(
    name: str, address: str, key_type: str, *, timeout: float = 10.0, port: int = 443
) -> x509.Certificate:
    """The leaf the edge at `address` serves to an SNI client (`name`) offering only `key_type`
    ("ECC" or "RSA"). Not verified: the caller compares it. EdgeError when there is none."""
    kind = _key_type(key_type)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.maximum_version = ssl.TLSVersion.TLSv1_2  # so the cipher suites choose the certificate
    context.set_ciphers(_CIPHERS[kind])
    edge = f"Imperva's edge {address}"
    try:
        with socket.create_connection((address, port), timeout=timeout) as raw:
            with context.wrap_socket(raw, server_hostname=name) as tls:
                der = tls.getpeercert(binary_form=True)
    except ConnectionRefusedError:
        raise EdgeError(f"{edge} refused the connection on port {port}", "refused") from None
    except ssl.SSLError as error:
        raise EdgeError(f"{edge} offers no {kind} certificate for {name} "
                        f"(TLS handshake failed: {error.reason or error})", "tls") from None
    except OSError as error:
        if _is_timeout(error):
            raise EdgeError(f"no answer from {edge} on port {port} within {timeout:g} s", "timeout") from None
        raise EdgeError(f"{edge} on port {port}: {error.strerror or error}", "other") from None
    if not der:
        raise EdgeError(f"{edge} sent no certificate for {name}", "tls")
    try:
        cert = x509.load_der_x509_certificate(der, default_backend())
        describe(cert, strict=True)  # some fields are parsed only when first read
    except ValueError as error:
        raise EdgeError(f"{edge} sent an {kind} certificate for {name} that cannot be parsed "
                        f"({str(error)[:80]})", "unparsable") from None
    return cert


def _normal_fingerprint(value: str) -> str:
    text = value.split("=", 1)[1] if "=" in value else value  # Imperva's "SHA1 Fingerprint=AA:BB..."
    return re.sub(r"[\s:]", "", text).lower()


def is_fingerprint(value: str) -> bool:
    """Whether `value` is a SHA-1 or SHA-256 fingerprint in hex (as `matches` takes it)."""
    return re.fullmatch(r"[0-9a-f]{40}|[0-9a-f]{64}", _normal_fingerprint(str(value))) is not None


def matches(cert: x509.Certificate, expected: Union[x509.Certificate, str]) -> bool:
    """Whether `cert` is `expected`: a certificate, or a SHA-1 or SHA-256 fingerprint in hex
    (colons, case and Imperva's "SHA1 Fingerprint=" prefix do not matter)."""
    der = cert.public_bytes(Encoding.DER)
    if isinstance(expected, x509.Certificate):
        return der == expected.public_bytes(Encoding.DER)
    wanted = _normal_fingerprint(expected)
    if len(wanted) == 40:
        return hashlib.sha1(der).hexdigest() == wanted  # noqa: S324 - Imperva's own identifier
    if len(wanted) == 64:
        return hashlib.sha256(der).hexdigest() == wanted
    raise ValueError("the expected fingerprint is neither SHA-1 nor SHA-256 hex")


def _issuer(cert: x509.Certificate) -> str:
    names = cert.issuer.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else cert.issuer.rfc4514_string()


def describe(cert: x509.Certificate, *, strict: bool = False) -> str:
    """"serial 1A2B (issued by X)": how the messages name a certificate the edge served; one
    whose fields cannot be read is "a certificate that cannot be parsed" (ValueError if strict)."""
    try:
        return f"serial {cert.serial_number:X} (issued by {_issuer(cert)})"
    except ValueError:
        if strict:
            raise
        return "a certificate that cannot be parsed"


@dataclass(frozen=True)
class EdgeResult:
    name: str
    address: str
    key_type: str
    outcome: str  # SERVES, STALE, UNREACHABLE, OFF
    message: str  # one line
    elapsed: float = 0.0  # seconds from the first attempt to the outcome
    attempts: int = 0
    served: Optional[x509.Certificate] = None  # the last leaf the edge served, if any
    error: Optional[str] = None  # the last failure, for UNREACHABLE

    @property
    def ok(self) -> bool:
        return self.outcome == SERVES


def wait_for_edge(
    name: str,
    address: str,
    key_type: str,
    expected: Union[x509.Certificate, str],
    wait_seconds: float,
    *,
    timeout: float = 10.0,
    max_failures: int = 3,
    first_backoff: float = 0.5,
    max_backoff: float = 8.0,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    deadline: Optional[float] = None,
) -> EdgeResult:
    """Until the edge serves `expected` to `key_type` clients of `name`, or the wait is over:
    `wait_seconds` from now, or `deadline` (a `clock()` time) when given, shared by every site of
    one check so that N sites end together, not N waits apart.

    Tries at once, then after 0.5 s, 1 s, 2 s... (at most `max_backoff`), the last try at the
    deadline; each try ends by the deadline (1 s at least). A failed handshake (no certificate of
    this key type yet) is the propagation being waited for: tried again until the deadline. Only
    `max_failures` refused connections or timeouts in a row end it early as UNREACHABLE. A wait
    of 0 (or less) returns OFF without any network work."""
    kind = _key_type(key_type)
    edge = f"Imperva's edge {address}"
    if wait_seconds <= 0:
        return EdgeResult(name, address, kind, OFF, f"{name}: edge check off")
    start = clock()
    deadline = start + wait_seconds if deadline is None else deadline
    backoff = first_backoff
    attempts = failures = 0
    served: Optional[x509.Certificate] = None
    error: Optional[EdgeError] = None
    elapsed = 0.0
    while True:
        attempts += 1
        try:
            budget = min(timeout, max(deadline - clock(), 1.0))
            served = served_certificate(name, address, kind, timeout=budget)
            error, failures = None, 0
        except EdgeError as failure:
            error = failure
            # Nobody there (refused, or no answer): a few in a row end the wait early.
            failures = failures + 1 if failure.kind in ("refused", "timeout") else 0
        elapsed = clock() - start
        if error is None and served is not None and matches(served, expected):
            message = f"{name}: {edge} serves it to {kind} clients (after {elapsed:.0f} s)"
            return EdgeResult(name, address, kind, SERVES, message, elapsed, attempts, served)
        remaining = deadline - clock()
        if failures >= max_failures or remaining <= 0:
            break
        sleep(min(backoff, remaining))
        backoff = min(backoff * 2, max_backoff)
    if error is None and served is not None:
        message = (f"{name}: {edge} still serves {describe(served)} to {kind} clients after "
                   f"{elapsed:.0f} s (Imperva may still be propagating)")
        return EdgeResult(name, address, kind, STALE, message, elapsed, attempts, served)
    if error is not None and error.kind in ("tls", "unparsable"):
        message = (f"{name}: {edge} still serves no usable {kind} certificate after "
                   f"{elapsed:.0f} s ({error}; Imperva may still be propagating)")
        return EdgeResult(name, address, kind, STALE, message, elapsed, attempts, None, str(error))
    message = f"{name}: {edge} not reachable for {kind} clients: {error}"
    return EdgeResult(name, address, kind, UNREACHABLE, message, elapsed, attempts, served, str(error))
