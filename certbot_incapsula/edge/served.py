"""The certificate a site's edge serves to clients of one key type, compared with the expected
one, and the wait after an upload until it does. Python's ssl cannot limit the signature
algorithms a client offers in TLS 1.3, so the handshake is capped at TLS 1.2, where the cipher
suites (aECDSA or aRSA only) decide which certificate a server can send. Knows nothing of certbot.
"""
from __future__ import annotations

import hashlib
import socket
import ssl
import time
from dataclasses import dataclass
from typing import Callable, Optional, Union

from cryptography import x509
from cryptography.hazmat.backends import default_backend
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from certbot_incapsula.edge.where import KEY_TYPES, EdgeError, is_timeout
from certbot_incapsula.held import normal_fingerprint

_CIPHERS = {"ECC": "aECDSA", "RSA": "aRSA"}

# EdgeResult.outcome
SERVES = "serves"
STALE = "stale"
UNREACHABLE = "unreachable"
OFF = "off"


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
        if is_timeout(error):
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


def matches(cert: x509.Certificate, expected: Union[x509.Certificate, str]) -> bool:
    """Whether `cert` is `expected`: a certificate, or a SHA-1 or SHA-256 fingerprint in hex
    (colons, case and Imperva's "SHA1 Fingerprint=" prefix do not matter)."""
    der = cert.public_bytes(Encoding.DER)
    if isinstance(expected, x509.Certificate):
        return der == expected.public_bytes(Encoding.DER)
    wanted = normal_fingerprint(expected)
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
