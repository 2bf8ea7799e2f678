"""Reads and checks the certificate and key files that certbot wrote, before anything is uploaded.

Knows nothing of certbot or Imperva's API: it answers what the files hold (names, serial,
fingerprint, expiry, key type) and refuses files Imperva must not receive.
Works with `cryptography` 3.0 (old distro certbots) and later: there are no *_utc properties
before 42, and 3.0 requires the backend argument.
"""
from __future__ import annotations

import datetime
import hashlib
import os
import re
from dataclasses import dataclass, field
from typing import List, Optional

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.backends import default_backend
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

# Imperva documents RSA keys "smaller than 4096"; larger ones are refused here, before upload.
MAX_RSA_BITS = 4096

_PEM_CERT = re.compile(
    rb"-----BEGIN CERTIFICATE-----\r?\n.+?\r?\n-----END CERTIFICATE-----", re.DOTALL
)
# A certificate this close to its end is not worth replacing a site's certificate with.
MIN_REMAINING = datetime.timedelta(days=1)

# Issuer words that the staging and test CAs use (Let's Encrypt staging, pebble, Boulder's test CA).
_TEST_ISSUER_WORDS = ("(STAGING)", "STAGING", "FAKE LE", "PEBBLE", "HAPPY HACKER")


class CertificateError(ValueError):
    """A certificate or key file that must not be uploaded; the message says what to fix."""


@dataclass(frozen=True)
class LocalCertificate:
    """What a certbot lineage's files hold, as needed to upload and to compare with Imperva."""

    fullchain_path: str
    key_path: str
    names: List[str]
    serial: int
    sha1_fingerprint: str  # "AA:BB:..." as Imperva shows it after "SHA1 Fingerprint="
    not_before: datetime.datetime
    not_after: datetime.datetime
    issuer: str
    key_type: str  # Imperva's auth_type: "RSA" or "ECC"
    key_bits: int
    chain_length: int  # certificates in fullchain, leaf included
    input_hash: str
    fullchain_pem: bytes = field(repr=False)
    key_pem: bytes = field(repr=False)

    @property
    def serial_hex(self) -> str:
        return format(self.serial, "X")

    @property
    def expiration_ms(self) -> int:
        return int(self.not_after.timestamp() * 1000)

    @property
    def is_test_ca(self) -> bool:
        issuer = self.issuer.upper()
        return any(word in issuer for word in _TEST_ISSUER_WORDS)

    def describe(self) -> str:
        return (
            f"serial {self.serial_hex}, {self.key_type} key, expires "
            f"{self.not_after:%Y-%m-%d %H:%M} UTC"
        )


def _utc(cert: x509.Certificate, attr: str) -> datetime.datetime:
    # cryptography < 42 has no *_utc properties; its naive datetimes are UTC.
    value = getattr(cert, attr + "_utc", None)
    if value is None:
        value = getattr(cert, attr).replace(tzinfo=datetime.timezone.utc)
    return value  # type: ignore[no-any-return]


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        raise CertificateError(f"The {what} file {path} does not exist.") from None
    except IsADirectoryError:
        raise CertificateError(f"The {what} path {path} is a directory, not a file.") from None
    except OSError as exc:
        raise CertificateError(f"Cannot read the {what} file {path}: {exc.strerror}.") from None
    if not data.strip():
        raise CertificateError(f"The {what} file {path} is empty.")
    return data


def _dns_names(cert: x509.Certificate) -> List[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        san = None
    names = [n.lower() for n in san.value.get_values_for_type(x509.DNSName)] if san else []
    if not names:
        common = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
        names = [str(c.value).lower() for c in common]
    return names


def _cert_blocks(data: bytes) -> List[bytes]:
    return list(_PEM_CERT.findall(data))


def parse_certificates(data: bytes, path: str = "<data>") -> List[x509.Certificate]:
    """All certificates of a PEM bundle, in order (leaf first for certbot's fullchain)."""
    blocks = _cert_blocks(data)
    if not blocks:
        raise CertificateError(
            f"{path} holds no PEM certificate: point certbot at its fullchain.pem."
        )
    certs = []
    for block in blocks:
        try:
            certs.append(x509.load_pem_x509_certificate(block, default_backend()))
        except ValueError:
            raise CertificateError(f"{path} holds a damaged PEM certificate.") from None
    return certs


def chain_input_hash(certs: List[x509.Certificate]) -> str:
    """A stable, non-secret identity of what is uploaded: sha256 over the chain's DER."""
    digest = hashlib.sha256()
    for cert in certs:
        digest.update(cert.public_bytes(serialization.Encoding.DER))
    return "sha256:" + digest.hexdigest()


def sha1_fingerprint(cert: x509.Certificate) -> str:
    raw = cert.fingerprint(hashes.SHA1())  # noqa: S303 - Imperva identifies certificates by SHA-1
    return ":".join(f"{b:02X}" for b in raw)


def _load_key(data: bytes, path: str) -> object:
    if b"ENCRYPTED" in data.split(b"\n", 1)[0] or b"Proc-Type: 4,ENCRYPTED" in data:
        raise CertificateError(
            f"The private key {path} is encrypted: certbot-incapsula uploads only unencrypted "
            "keys (as certbot writes them); give it certbot's privkey.pem."
        )
    try:
        return serialization.load_pem_private_key(data, password=None, backend=default_backend())
    except TypeError:
        raise CertificateError(
            f"The private key {path} is encrypted: give certbot-incapsula an unencrypted key."
        ) from None
    except (ValueError, Exception):
        # Never echo the parser's text: it may quote part of the key.
        raise CertificateError(
            f"{path} is not a PEM private key: point certbot-incapsula at certbot's privkey.pem."
        ) from None


def load(fullchain_path: str, key_path: str,
         now: Optional[datetime.datetime] = None) -> LocalCertificate:
    """Reads and checks a lineage's fullchain and key; raises CertificateError with the fix."""
    chain_data = _read(fullchain_path, "certificate")
    key_data = _read(key_path, "private key")
    certs = parse_certificates(chain_data, fullchain_path)
    leaf = certs[0]
    key = _load_key(key_data, key_path)

    if isinstance(key, rsa.RSAPrivateKey):
        key_type, bits = "RSA", key.key_size
        if bits > MAX_RSA_BITS:
            raise CertificateError(
                f"The RSA key {key_path} has {bits} bits; Imperva takes RSA keys of at most "
                f"{MAX_RSA_BITS} bits. Renew with --rsa-key-size 2048 (or --key-type ecdsa)."
            )
    elif isinstance(key, ec.EllipticCurvePrivateKey):
        key_type, bits = "ECC", key.curve.key_size
    else:
        raise CertificateError(
            f"The key {key_path} is neither RSA nor ECDSA, the only types Imperva takes: "
            "renew with --key-type ecdsa or --key-type rsa."
        )

    pub = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    if key.public_key().public_bytes(der, pub) != leaf.public_key().public_bytes(der, pub):  # type: ignore[attr-defined]
        raise CertificateError(
            f"The private key {key_path} does not belong to the certificate {fullchain_path}: "
            "use the privkey.pem of the same certbot lineage."
        )

    now = now or datetime.datetime.now(datetime.timezone.utc)
    if now.tzinfo is None:
        now = now.replace(tzinfo=datetime.timezone.utc)  # naive means UTC, as cryptography < 42
    not_after = _utc(leaf, "not_valid_after")
    if not_after <= now:
        raise CertificateError(
            f"The certificate {fullchain_path} expired on {not_after:%Y-%m-%d %H:%M} UTC: "
            "renew it (certbot renew --cert-name NAME) before uploading it."
        )

    return LocalCertificate(
        fullchain_path=fullchain_path,
        key_path=key_path,
        names=_dns_names(leaf),
        serial=leaf.serial_number,
        sha1_fingerprint=sha1_fingerprint(leaf),
        not_before=_utc(leaf, "not_valid_before"),
        not_after=not_after,
        issuer=leaf.issuer.rfc4514_string(),
        key_type=key_type,
        key_bits=bits,
        chain_length=len(certs),
        input_hash=chain_input_hash(certs),
        # Only the certificates travel: never whatever else the file holds (a key, say).
        fullchain_pem=b"\n".join(_cert_blocks(chain_data)) + b"\n",
        key_pem=key_data,
    )


def replaced(cert: LocalCertificate, fullchain_path: str, key_path: str) -> Optional[str]:
    """None while the files (a lineage's live/ links, say) still hold `cert`; else, in a few
    words, what they hold now: a renewal may replace them while `cert` is being acted on."""
    try:
        now = load(os.path.realpath(fullchain_path), os.path.realpath(key_path))
    except CertificateError as exc:
        return f"its files cannot be read now: {exc}"
    if now.input_hash == cert.input_hash:
        return None
    return f"now serial {now.serial_hex}"


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    """Whether `issuer` signed `cert`: names and signature."""
    if cert.issuer != issuer.subject:
        return False
    verify = getattr(cert, "verify_directly_issued_by", None)  # cryptography >= 40
    try:
        if verify is not None:
            verify(issuer)
            return True
        key = issuer.public_key()
        algorithm = cert.signature_hash_algorithm
        if isinstance(key, rsa.RSAPublicKey) and algorithm is not None and \
                cert.signature_algorithm_oid != x509.SignatureAlgorithmOID.RSASSA_PSS:
            key.verify(cert.signature, cert.tbs_certificate_bytes, padding.PKCS1v15(), algorithm)
        elif isinstance(key, ec.EllipticCurvePublicKey) and algorithm is not None:
            key.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(algorithm))
        # Another signature scheme on an old cryptography: the names match, Imperva checks the rest.
        return True
    except InvalidSignature:
        return False
    except (ValueError, TypeError, UnsupportedAlgorithm):
        # The names match and the scheme is one this cryptography cannot check: Imperva will.
        return True


def _fullchain_hint(path: str) -> str:
    # certbot's cert.pem (live/) or certN.pem (archive/) has its fullchain right beside it.
    match = re.fullmatch(r"cert(\d*)\.pem", os.path.basename(path))
    beside = os.path.join(os.path.dirname(path), f"fullchain{match.group(1)}.pem") if match else ""
    shown = beside if beside and os.path.exists(beside) else ".../fullchain.pem"
    return (f"give certbot's fullchain.pem (--fullchain-path {shown}, or --fullchain for "
            "certbot-incapsula deploy)")


def check(cert: LocalCertificate, now: Optional[datetime.datetime] = None,
          shown_path: Optional[str] = None) -> None:
    """What Imperva would flag or what would leave a site worse off, refused before any upload:
    a missing or broken chain, a self-signed certificate, a certificate not valid yet or about to
    expire, one that names no domain. Raises CertificateError naming the file (`shown_path`, as
    the user gave it, else the file read) and the fix."""
    path = shown_path or cert.fullchain_path
    certs = parse_certificates(cert.fullchain_pem, path)
    leaf = certs[0]
    if leaf.issuer == leaf.subject and _issued_by(leaf, leaf):
        raise CertificateError(
            f"The certificate {path} is self-signed: Imperva would flag it (chainError) and "
            "browsers would not trust it. Obtain a certificate from a CA (certbot) and give its "
            "fullchain.pem.")
    if len(certs) == 1:
        raise CertificateError(
            f"The certificate file {path} holds only the leaf certificate, without the "
            f"intermediate certificate(s) browsers need (Imperva would flag chainError): "
            f"{_fullchain_hint(path)}.")
    for position, (child, parent) in enumerate(zip(certs, certs[1:]), start=2):
        if not _issued_by(child, parent):
            raise CertificateError(
                f"The certificate file {path} has a broken chain: certificate {position} did not "
                f"issue the one before it (out of order, or from another chain): "
                f"{_fullchain_hint(path)}.")
    if not cert.names:
        raise CertificateError(
            f"The certificate {path} names no domain (no DNS name in its subject alternative "
            "names or common name): no Imperva site could serve it.")
    now = now or datetime.datetime.now(datetime.timezone.utc)
    if now.tzinfo is None:
        now = now.replace(tzinfo=datetime.timezone.utc)
    if cert.not_before > now:
        raise CertificateError(
            f"The certificate {path} is not valid before {cert.not_before:%Y-%m-%d %H:%M} UTC: "
            "Imperva would flag it (validityError) and browsers would refuse it until then. "
            "Upload it after that time (or check this machine's clock).")
    if cert.not_after <= now:
        raise CertificateError(
            f"The certificate {path} expired on {cert.not_after:%Y-%m-%d %H:%M} UTC: "
            "renew it (certbot renew --cert-name NAME) before uploading it.")
    if cert.not_after - now < MIN_REMAINING:
        raise CertificateError(
            f"The certificate {path} expires on {cert.not_after:%Y-%m-%d %H:%M} UTC, in less "
            "than a day: renew it first (certbot renew --cert-name NAME --force-renewal).")
