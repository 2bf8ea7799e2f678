"""Certificate factories for the tests: a small root -> intermediate -> leaf PKI.

Everything is made in memory with `cryptography`; nothing touches a real CA.
"""

from __future__ import annotations

import datetime as dt
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Union

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

PrivateKey = Union[rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey]  # runtime alias: 3.8-safe

KEY_TYPES = ("ecdsa", "rsa")


@dataclass
class Chain:
    leaf_pem: bytes
    chain_pem: bytes  # the intermediate only, like certbot's chain.pem
    fullchain_pem: bytes  # leaf + intermediate, like certbot's fullchain.pem
    key_pem: bytes  # PKCS#8, unencrypted, like certbot's privkey.pem
    serial: int
    not_after: dt.datetime  # timezone-aware UTC
    leaf: x509.Certificate
    # Extras beyond certbot's lineage, handy for negative tests.
    key: PrivateKey
    intermediate: x509.Certificate
    root_pem: bytes


@dataclass
class _Authority:
    root: x509.Certificate
    root_key: PrivateKey
    intermediate: x509.Certificate
    intermediate_key: PrivateKey


# CAs are cached per key type: keygen is the slow part, and a shared CA is what
# a real lineage looks like anyway (many leaves, one issuer).
_authorities: dict[str, _Authority] = {}
_lock = threading.Lock()


def new_key(key_type: str = "ecdsa", rsa_bits: int = 2048) -> PrivateKey:
    if key_type == "ecdsa":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=rsa_bits)
    raise ValueError(f"unknown key_type {key_type!r}; use one of {KEY_TYPES}")


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "certbot-incapsula tests"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _cn(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0)


def _ca_cert(
    subject: x509.Name,
    key: PrivateKey,
    issuer: x509.Name,
    signer: PrivateKey,
    path_length: int,
) -> x509.Certificate:
    now = _now()
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(signer, hashes.SHA256())
    )


def _authority(key_type: str) -> _Authority:
    with _lock:
        found = _authorities.get(key_type)
        if found is not None:
            return found
        label = "ECDSA" if key_type == "ecdsa" else "RSA"
        root_key = new_key(key_type)
        root_name = _name(f"Test {label} Root")
        root = _ca_cert(root_name, root_key, root_name, root_key, path_length=1)
        inter_key = new_key(key_type)
        inter = _ca_cert(_name(f"Test {label} Intermediate"), inter_key, root_name, root_key, 0)
        found = _Authority(root, root_key, inter, inter_key)
        _authorities[key_type] = found
        return found


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def pkcs8_pem(key: PrivateKey, passphrase: bytes | None = None) -> bytes:
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase) if passphrase else serialization.NoEncryption()
    )
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)


def traditional_pem(key: PrivateKey) -> bytes:
    """PKCS#1 for RSA ("BEGIN RSA PRIVATE KEY"), SEC1 for EC ("BEGIN EC PRIVATE KEY")."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )


def _leaf_builder(
    names: list[str],
    key: PrivateKey,
    issuer: x509.Name,
    start: dt.datetime,
    end: dt.datetime,
    serial: int,
) -> x509.CertificateBuilder:
    builder = (
        x509.CertificateBuilder()
        .subject_name(_cn(names[0]) if names else x509.Name([]))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    )
    if names:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False
        )
    return builder


def _validity(days: int, expired: bool, start: dt.datetime | None = None) -> tuple[dt.datetime, dt.datetime]:
    now = _now()
    if start is not None:
        return start, start + dt.timedelta(days=days)
    if expired:
        end = now - dt.timedelta(days=1)
        return end - dt.timedelta(days=days), end
    return now - dt.timedelta(hours=1), now + dt.timedelta(days=days)


def make_chain(
    names: list[str],
    key_type: str = "ecdsa",
    *,
    days: int = 90,
    expired: bool = False,
    serial: int | None = None,
    rsa_bits: int = 2048,
    start: dt.datetime | None = None,
) -> Chain:
    """A leaf for `names` (DNS SANs, CN = first name) issued by a cached intermediate.

    The CA keys use the same algorithm as the leaf, so RSA chains exercise
    PKCS#1 v1.5 signature checks and ECDSA chains ECDSA ones. `start` sets notBefore (a
    certificate not valid yet); `days` then counts from it.
    """
    authority = _authority(key_type)
    key = new_key(key_type, rsa_bits)
    start, end = _validity(days, expired, start)
    leaf_serial = serial if serial is not None else x509.random_serial_number()
    leaf = _leaf_builder(names, key, authority.intermediate.subject, start, end, leaf_serial).sign(
        authority.intermediate_key, hashes.SHA256()
    )
    leaf_pem = _pem(leaf)
    chain_pem = _pem(authority.intermediate)
    return Chain(
        leaf_pem=leaf_pem,
        chain_pem=chain_pem,
        fullchain_pem=leaf_pem + chain_pem,
        key_pem=pkcs8_pem(key),
        serial=leaf_serial,
        not_after=leaf.not_valid_after_utc,
        leaf=leaf,
        key=key,
        intermediate=authority.intermediate,
        root_pem=_pem(authority.root),
    )


def make_self_signed(names: list[str], key_type: str = "ecdsa", *, days: int = 90) -> tuple[bytes, bytes]:
    """A self-signed leaf: (cert PEM, PKCS#8 key PEM)."""
    key = new_key(key_type)
    start, end = _validity(days, expired=False)
    subject = _cn(names[0])
    builder = _leaf_builder(names, key, subject, start, end, x509.random_serial_number())
    cert = builder.sign(key, hashes.SHA256())
    return _pem(cert), pkcs8_pem(key)


def impostor_of(cert: x509.Certificate) -> bytes:
    """A CA cert with `cert`'s exact subject and issuer names but a different key.

    Names line up, signatures do not: only a real signature check catches it.
    """
    key = new_key("rsa" if isinstance(cert.public_key(), rsa.RSAPublicKey) else "ecdsa")
    return _pem(_ca_cert(cert.subject, key, cert.issuer, key, path_length=0))


def write_lineage(dirpath: str | os.PathLike[str], chain: Chain) -> dict[str, str]:
    """Write certbot's four lineage files; privkey.pem is 0600 like certbot's."""
    directory = Path(dirpath)
    directory.mkdir(parents=True, exist_ok=True)
    contents = {
        "cert": ("cert.pem", chain.leaf_pem),
        "chain": ("chain.pem", chain.chain_pem),
        "fullchain": ("fullchain.pem", chain.fullchain_pem),
        "privkey": ("privkey.pem", chain.key_pem),
    }
    paths: dict[str, str] = {}
    for label, (filename, data) in contents.items():
        path = directory / filename
        mode = 0o600 if label == "privkey" else 0o644
        # Open with the final mode so the key is never briefly world-readable.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(path, mode)  # O_CREAT's mode is ignored for an existing file
        paths[label] = str(path)
    return paths
