"""certificate.load: what a lineage's files hold, and the files it refuses before any upload."""
from __future__ import annotations

import dataclasses
import datetime as dt
import os
import re
import types
from pathlib import Path
from typing import Dict, List

import pytest
from certmaker import Chain, make_chain, make_self_signed, pkcs8_pem, traditional_pem, write_lineage
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.x509.oid import NameOID

from certbot_incapsula import certificate
from certbot_incapsula.certificate import CertificateError, LocalCertificate, load

NAMES = ["www.example.test", "example.test"]


@pytest.fixture(scope="module")
def ec_chain() -> Chain:
    return make_chain(NAMES, serial=0x1234ABCD)


@pytest.fixture(scope="module")
def rsa_chain() -> Chain:
    return make_chain(NAMES, "rsa")


def lineage(tmp_path: Path, chain: Chain, name: str = "live") -> Dict[str, str]:
    return write_lineage(tmp_path / name, chain)


def key_fragments(key_pem: bytes) -> List[str]:
    return [line for line in key_pem.decode().splitlines() if line and not line.startswith("-----")]


def refusal(fullchain: str, key: str, *key_pems: bytes) -> str:
    """The CertificateError message of load(); it must never quote key material."""
    with pytest.raises(CertificateError) as err:
        load(fullchain, key)
    message = str(err.value)
    for key_pem in key_pems:
        for fragment in key_fragments(key_pem):
            assert fragment not in message
    return message


# ----- what a good lineage holds --------------------------------------------------------------

def test_ecdsa_p256_lineage(tmp_path, ec_chain):
    paths = lineage(tmp_path, ec_chain)
    cert = load(paths["fullchain"], paths["privkey"])
    assert cert.key_type == "ECC" and cert.key_bits == 256
    assert cert.names == NAMES
    assert cert.serial == 0x1234ABCD and cert.serial_hex == "1234ABCD"
    assert cert.chain_length == 2
    assert cert.not_after == ec_chain.not_after and cert.not_after.tzinfo is not None
    assert cert.not_before < dt.datetime.now(dt.timezone.utc) < cert.not_after
    assert cert.expiration_ms == int(ec_chain.not_after.timestamp() * 1000)
    assert cert.fullchain_path == paths["fullchain"] and cert.key_path == paths["privkey"]
    assert cert.fullchain_pem == ec_chain.fullchain_pem and cert.key_pem == ec_chain.key_pem
    assert "Test ECDSA Intermediate" in cert.issuer and not cert.is_test_ca
    assert re.fullmatch(r"serial 1234ABCD, ECC key, expires \d{4}-\d\d-\d\d \d\d:\d\d UTC",
                        cert.describe())


def test_rsa_2048_lineage(tmp_path, rsa_chain):
    paths = lineage(tmp_path, rsa_chain)
    cert = load(paths["fullchain"], paths["privkey"])
    assert cert.key_type == "RSA" and cert.key_bits == 2048
    assert cert.names == NAMES and cert.serial == rsa_chain.serial


def test_sha1_fingerprint_is_imperva_format(tmp_path, ec_chain):
    paths = lineage(tmp_path, ec_chain)
    cert = load(paths["fullchain"], paths["privkey"])
    assert re.fullmatch(r"([0-9A-F]{2}:){19}[0-9A-F]{2}", cert.sha1_fingerprint)
    assert cert.sha1_fingerprint == ec_chain.leaf.fingerprint(hashes.SHA1()).hex(":").upper()


def test_input_hash_is_stable_distinct_and_holds_no_key(tmp_path, ec_chain):
    paths = lineage(tmp_path, ec_chain)
    first = load(paths["fullchain"], paths["privkey"])
    again = load(paths["fullchain"], paths["privkey"])
    assert first.input_hash == again.input_hash
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", first.input_hash)
    other = make_chain(NAMES)
    other_paths = lineage(tmp_path, other, "other")
    assert load(other_paths["fullchain"], other_paths["privkey"]).input_hash != first.input_hash
    for fragment in key_fragments(ec_chain.key_pem):
        assert fragment not in first.input_hash


def test_secrets_are_not_in_the_repr(tmp_path, ec_chain):
    paths = lineage(tmp_path, ec_chain)
    shown = repr(load(paths["fullchain"], paths["privkey"]))
    assert "PRIVATE" not in shown and not any(f in shown for f in key_fragments(ec_chain.key_pem))


def test_common_name_is_used_when_there_is_no_san(tmp_path):
    pem, key = make_self_signed(["Solo.Example.Test"])
    cert_pem = x509.load_pem_x509_certificate(pem)
    builder = (x509.CertificateBuilder().subject_name(cert_pem.subject).issuer_name(cert_pem.issuer)
               .public_key(cert_pem.public_key()).serial_number(7)
               .not_valid_before(cert_pem.not_valid_before_utc)
               .not_valid_after(cert_pem.not_valid_after_utc))
    private = serialization.load_pem_private_key(key, None)
    no_san = builder.sign(private, hashes.SHA256())  # type: ignore[arg-type]
    (tmp_path / "cert.pem").write_bytes(no_san.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "key.pem").write_bytes(key)
    cert = load(str(tmp_path / "cert.pem"), str(tmp_path / "key.pem"))
    assert cert.names == ["solo.example.test"] and cert.chain_length == 1


def test_only_certificates_are_kept_for_upload(tmp_path, ec_chain):
    # A combined file (certificate + key): only the certificates may travel as `certificate`.
    combined = tmp_path / "combined.pem"
    combined.write_bytes(b"# comment\n" + ec_chain.fullchain_pem + ec_chain.key_pem)
    key = tmp_path / "key.pem"
    key.write_bytes(ec_chain.key_pem)
    cert = load(str(combined), str(key))
    assert b"PRIVATE KEY" not in cert.fullchain_pem and b"comment" not in cert.fullchain_pem
    assert cert.fullchain_pem == ec_chain.fullchain_pem


@pytest.mark.parametrize("key_type", ["ecdsa", "rsa"])
def test_pkcs1_and_sec1_keys_are_accepted(tmp_path, key_type):
    chain = make_chain(NAMES, key_type)
    paths = lineage(tmp_path, chain)
    traditional = traditional_pem(chain.key)
    header = b"RSA PRIVATE KEY" if key_type == "rsa" else b"EC PRIVATE KEY"
    assert header in traditional
    Path(paths["privkey"]).write_bytes(traditional)
    cert = load(paths["fullchain"], paths["privkey"])
    assert cert.key_type == ("RSA" if key_type == "rsa" else "ECC")
    assert cert.key_pem == traditional


def test_crlf_files_are_read(tmp_path, ec_chain):
    (tmp_path / "fullchain.pem").write_bytes(ec_chain.fullchain_pem.replace(b"\n", b"\r\n"))
    (tmp_path / "privkey.pem").write_bytes(ec_chain.key_pem)
    cert = load(str(tmp_path / "fullchain.pem"), str(tmp_path / "privkey.pem"))
    assert cert.chain_length == 2 and cert.serial == ec_chain.serial


@pytest.mark.parametrize("issuer, test_ca", [
    ("CN=Pebble Intermediate CA 645fc5", True),
    ("CN=(STAGING) Ersatz Edamame E1,O=(STAGING) Let's Encrypt,C=US", True),
    ("CN=Fake LE Intermediate X1", True),
    ("CN=happy hacker fake CA", True),
    ("CN=E5,O=Let's Encrypt,C=US", False),
    ("CN=R10,O=Let's Encrypt,C=US", False),
])
def test_is_test_ca(tmp_path, ec_chain, issuer, test_ca):
    paths = lineage(tmp_path, ec_chain)
    cert = dataclasses.replace(load(paths["fullchain"], paths["privkey"]), issuer=issuer)
    assert cert.is_test_ca is test_ca


# ----- refusals ---------------------------------------------------------------------------------

def test_missing_files(tmp_path, ec_chain):
    paths = lineage(tmp_path, ec_chain)
    missing = str(tmp_path / "nope.pem")
    message = refusal(missing, paths["privkey"], ec_chain.key_pem)
    assert "certificate file" in message and "does not exist" in message and missing in message
    message = refusal(paths["fullchain"], missing, ec_chain.key_pem)
    assert "private key file" in message and "does not exist" in message


def test_a_directory_is_not_a_file(tmp_path, ec_chain):
    paths = lineage(tmp_path, ec_chain)
    message = refusal(str(tmp_path), paths["privkey"], ec_chain.key_pem)
    assert "is a directory" in message
    message = refusal(paths["fullchain"], str(tmp_path), ec_chain.key_pem)
    assert "is a directory" in message and "private key" in message


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_an_unreadable_file(tmp_path, ec_chain):
    paths = lineage(tmp_path, ec_chain)
    os.chmod(paths["privkey"], 0)
    message = refusal(paths["fullchain"], paths["privkey"], ec_chain.key_pem)
    assert "Cannot read the private key file" in message


@pytest.mark.parametrize("content", [b"", b"  \n\n"])
def test_empty_files(tmp_path, ec_chain, content):
    paths = lineage(tmp_path, ec_chain)
    Path(paths["fullchain"]).write_bytes(content)
    assert "is empty" in refusal(paths["fullchain"], paths["privkey"], ec_chain.key_pem)
    paths = lineage(tmp_path, ec_chain, "two")
    Path(paths["privkey"]).write_bytes(content)
    message = refusal(paths["fullchain"], paths["privkey"], ec_chain.key_pem)
    assert "private key file" in message and "is empty" in message


def test_not_pem(tmp_path, ec_chain):
    paths = lineage(tmp_path, ec_chain)
    Path(paths["fullchain"]).write_bytes(ec_chain.leaf.public_bytes(serialization.Encoding.DER))
    message = refusal(paths["fullchain"], paths["privkey"], ec_chain.key_pem)
    assert "no PEM certificate" in message and "fullchain.pem" in message
    Path(paths["fullchain"]).write_bytes(b"hello, world\n")
    assert "no PEM certificate" in refusal(paths["fullchain"], paths["privkey"])


@pytest.mark.parametrize("damage", ["body", "truncated"])
def test_damaged_pem(tmp_path, ec_chain, damage):
    paths = lineage(tmp_path, ec_chain)
    lines = ec_chain.leaf_pem.decode().splitlines()
    if damage == "body":
        lines[3] = "A" * len(lines[3])
    else:
        lines = [*lines[:4], lines[-1]]
    Path(paths["fullchain"]).write_text("\n".join(lines) + "\n" + ec_chain.chain_pem.decode())
    message = refusal(paths["fullchain"], paths["privkey"], ec_chain.key_pem)
    assert "damaged PEM certificate" in message


def test_key_that_is_not_pem(tmp_path, ec_chain):
    paths = lineage(tmp_path, ec_chain)
    Path(paths["privkey"]).write_bytes(b"not a key at all\n")
    message = refusal(paths["fullchain"], paths["privkey"])
    assert "is not a PEM private key" in message and "privkey.pem" in message


def test_key_file_that_holds_a_certificate(tmp_path, ec_chain):
    paths = lineage(tmp_path, ec_chain)
    message = refusal(paths["fullchain"], paths["fullchain"])
    assert "is not a PEM private key" in message


def test_damaged_key_is_not_quoted(tmp_path, ec_chain):
    paths = lineage(tmp_path, ec_chain)
    lines = ec_chain.key_pem.decode().splitlines()
    lines[1] = lines[1][:10] + "!!!" + lines[1][13:]
    Path(paths["privkey"]).write_text("\n".join(lines) + "\n")
    message = refusal(paths["fullchain"], paths["privkey"], ec_chain.key_pem)
    assert "is not a PEM private key" in message


def test_key_of_another_certificate(tmp_path, ec_chain):
    paths = lineage(tmp_path, ec_chain)
    other = make_chain(NAMES)
    Path(paths["privkey"]).write_bytes(other.key_pem)
    message = refusal(paths["fullchain"], paths["privkey"], other.key_pem, ec_chain.key_pem)
    assert "does not belong to the certificate" in message and "same certbot lineage" in message


def test_key_of_another_type(tmp_path, ec_chain, rsa_chain):
    paths = lineage(tmp_path, ec_chain)
    Path(paths["privkey"]).write_bytes(rsa_chain.key_pem)
    message = refusal(paths["fullchain"], paths["privkey"], rsa_chain.key_pem)
    assert "does not belong to the certificate" in message


def test_expired_certificate(tmp_path):
    chain = make_chain(NAMES, expired=True)
    paths = lineage(tmp_path, chain)
    message = refusal(paths["fullchain"], paths["privkey"], chain.key_pem)
    assert "expired on" in message and "renew" in message


def test_expiry_is_judged_at_the_given_time(tmp_path, ec_chain):
    paths = lineage(tmp_path, ec_chain)
    later = ec_chain.not_after + dt.timedelta(seconds=1)
    with pytest.raises(CertificateError, match="expired"):
        load(paths["fullchain"], paths["privkey"], now=later)
    # A naive time is read as UTC, not refused with a TypeError.
    with pytest.raises(CertificateError, match="expired"):
        load(paths["fullchain"], paths["privkey"], now=later.replace(tzinfo=None))
    earlier = (ec_chain.not_after - dt.timedelta(days=1)).replace(tzinfo=None)
    assert load(paths["fullchain"], paths["privkey"], now=earlier).serial == ec_chain.serial


def test_encrypted_pkcs8_key(tmp_path, ec_chain):
    paths = lineage(tmp_path, ec_chain)
    encrypted = pkcs8_pem(ec_chain.key, b"correct horse")
    assert b"BEGIN ENCRYPTED PRIVATE KEY" in encrypted
    Path(paths["privkey"]).write_bytes(encrypted)
    message = refusal(paths["fullchain"], paths["privkey"], encrypted, ec_chain.key_pem)
    assert "is encrypted" in message and "correct horse" not in message


def test_encrypted_traditional_key(tmp_path, rsa_chain):
    paths = lineage(tmp_path, rsa_chain)
    encrypted = rsa_chain.key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.BestAvailableEncryption(b"correct horse"))
    assert b"Proc-Type: 4,ENCRYPTED" in encrypted
    Path(paths["privkey"]).write_bytes(encrypted)
    message = refusal(paths["fullchain"], paths["privkey"], encrypted, rsa_chain.key_pem)
    assert "is encrypted" in message


def test_encrypted_key_behind_a_blank_line(tmp_path, ec_chain):
    # Not caught by the first-line check: the parser's "password needed" answer is.
    paths = lineage(tmp_path, ec_chain)
    encrypted = pkcs8_pem(ec_chain.key, b"pw")
    Path(paths["privkey"]).write_bytes(b"\n" + encrypted)
    message = refusal(paths["fullchain"], paths["privkey"], encrypted)
    assert "encrypted" in message


def test_rsa_key_larger_than_4096_bits(tmp_path):
    chain = make_chain(NAMES, "rsa", rsa_bits=4104)
    paths = lineage(tmp_path, chain)
    message = refusal(paths["fullchain"], paths["privkey"], chain.key_pem)
    assert "4104 bits" in message and "at most 4096" in message and "--rsa-key-size" in message


def test_ed25519_key(tmp_path):
    key = ed25519.Ed25519PrivateKey.generate()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, NAMES[0])])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(99)
            .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=9))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(NAMES[0])]), critical=False)
            .sign(key, None))
    key_pem = pkcs8_pem(key)  # type: ignore[arg-type]
    (tmp_path / "fullchain.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "privkey.pem").write_bytes(key_pem)
    message = refusal(str(tmp_path / "fullchain.pem"), str(tmp_path / "privkey.pem"), key_pem)
    assert "neither RSA nor ECDSA" in message and "--key-type" in message


# ----- cryptography < 42 -----------------------------------------------------------------

def test_utc_dates_without_the_utc_properties(ec_chain):
    # cryptography < 42 has only naive not_valid_before/after, in UTC.
    old = types.SimpleNamespace(not_valid_after=ec_chain.not_after.replace(tzinfo=None))
    value = certificate._utc(old, "not_valid_after")  # type: ignore[arg-type]
    assert value == ec_chain.not_after and value.tzinfo is not None
    new = types.SimpleNamespace(not_valid_after_utc=ec_chain.not_after)
    assert certificate._utc(new, "not_valid_after") == ec_chain.not_after  # type: ignore[arg-type]


def test_local_certificate_is_a_value(tmp_path, ec_chain):
    paths = lineage(tmp_path, ec_chain)
    cert = load(paths["fullchain"], paths["privkey"])
    assert isinstance(cert, LocalCertificate)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cert.serial = 1  # type: ignore[misc]


# ----- check(): what Imperva would flag, or what would leave a site worse off ------------------

def checked(fullchain: str, key: str, now: dt.datetime | None = None) -> str:
    """check()'s message for a lineage that load() accepts."""
    with pytest.raises(CertificateError) as err:
        certificate.check(load(fullchain, key), now=now)
    return str(err.value)


@pytest.mark.parametrize("key_type", ["ecdsa", "rsa"])
def test_a_proper_chain_passes(tmp_path, key_type):
    paths = lineage(tmp_path, make_chain(NAMES, key_type))
    certificate.check(load(paths["fullchain"], paths["privkey"]))


def test_a_chain_with_its_root_passes(tmp_path, ec_chain):
    paths = lineage(tmp_path, ec_chain)
    Path(paths["fullchain"]).write_bytes(ec_chain.fullchain_pem + ec_chain.root_pem)
    certificate.check(load(paths["fullchain"], paths["privkey"]))


def test_leaf_only_names_the_file_and_the_fullchain_beside_it(tmp_path, ec_chain):
    paths = lineage(tmp_path, ec_chain)  # cert.pem is certbot's leaf-only file
    message = checked(paths["cert"], paths["privkey"])
    assert message.startswith(f"The certificate file {paths['cert']} holds only the leaf "
                              "certificate"), message
    assert f"give certbot's fullchain.pem (--fullchain-path {paths['fullchain']}" in message
    assert "chainError" in message


def test_leaf_only_in_a_lone_file_shows_the_form(tmp_path, ec_chain):
    (tmp_path / "site.crt").write_bytes(ec_chain.leaf_pem)
    (tmp_path / "site.key").write_bytes(ec_chain.key_pem)
    message = checked(str(tmp_path / "site.crt"), str(tmp_path / "site.key"))
    assert "--fullchain-path .../fullchain.pem" in message


def test_the_path_shown_is_the_one_given(tmp_path, ec_chain):
    paths = lineage(tmp_path, ec_chain)
    cert = load(paths["cert"], paths["privkey"])
    with pytest.raises(CertificateError, match=r"/live/NAME/cert\.pem holds only the leaf"):
        certificate.check(cert, shown_path="/live/NAME/cert.pem")


def test_self_signed(tmp_path):
    pem, key = make_self_signed(NAMES)
    (tmp_path / "fullchain.pem").write_bytes(pem)
    (tmp_path / "privkey.pem").write_bytes(key)
    message = checked(str(tmp_path / "fullchain.pem"), str(tmp_path / "privkey.pem"))
    assert "is self-signed" in message and str(tmp_path / "fullchain.pem") in message


@pytest.mark.parametrize("damage", ["impostor", "other-chain", "reversed-tail"])
def test_a_broken_chain(tmp_path, ec_chain, rsa_chain, damage):
    from certmaker import impostor_of

    paths = lineage(tmp_path, ec_chain)
    tail = {"impostor": impostor_of(ec_chain.intermediate),  # same names, another key
            "other-chain": rsa_chain.chain_pem,
            "reversed-tail": ec_chain.root_pem + ec_chain.chain_pem}[damage]
    Path(paths["fullchain"]).write_bytes(ec_chain.leaf_pem + tail)
    message = checked(paths["fullchain"], paths["privkey"])
    assert "has a broken chain: certificate 2 did not issue the one before it" in message


def test_not_valid_yet(tmp_path):
    start = dt.datetime.now(dt.timezone.utc).replace(microsecond=0) + dt.timedelta(days=2)
    paths = lineage(tmp_path, make_chain(NAMES, start=start))
    message = checked(paths["fullchain"], paths["privkey"])
    assert f"is not valid before {start:%Y-%m-%d %H:%M} UTC" in message
    assert "validityError" in message


def test_expiring_within_a_day(tmp_path, ec_chain):
    paths = lineage(tmp_path, ec_chain)
    now = ec_chain.not_after - dt.timedelta(hours=23)
    message = checked(paths["fullchain"], paths["privkey"], now=now)
    assert "in less than a day: renew it first" in message
    certificate.check(load(paths["fullchain"], paths["privkey"]),
                      now=ec_chain.not_after - dt.timedelta(hours=25))


def test_expired_at_the_given_time(tmp_path, ec_chain):
    paths = lineage(tmp_path, ec_chain)
    message = checked(paths["fullchain"], paths["privkey"],
                      now=(ec_chain.not_after + dt.timedelta(seconds=1)).replace(tzinfo=None))
    assert "expired on" in message


def test_a_certificate_that_names_no_domain(tmp_path):
    chain = make_chain([])  # no SAN, no CN
    paths = lineage(tmp_path, chain)
    assert "names no domain" in checked(paths["fullchain"], paths["privkey"])


@pytest.mark.parametrize("key_type", ["ecdsa", "rsa"])
def test_signatures_are_checked_without_verify_directly_issued_by(ec_chain, rsa_chain, key_type):
    # cryptography < 40 has no verify_directly_issued_by: the signature is checked by hand.
    from certmaker import impostor_of

    chain = ec_chain if key_type == "ecdsa" else rsa_chain
    impostor = x509.load_pem_x509_certificate(impostor_of(chain.intermediate))

    def old(cert: x509.Certificate) -> types.SimpleNamespace:
        fields = ("issuer", "subject", "signature", "tbs_certificate_bytes",
                  "signature_hash_algorithm", "signature_algorithm_oid", "public_key")
        return types.SimpleNamespace(**{f: getattr(cert, f) for f in fields})

    assert certificate._issued_by(old(chain.leaf), chain.intermediate)  # type: ignore[arg-type]
    assert not certificate._issued_by(old(chain.leaf), impostor)  # type: ignore[arg-type]
    assert not certificate._issued_by(old(chain.intermediate), chain.intermediate)  # type: ignore[arg-type]


def test_replaced_reads_the_files_again(tmp_path: Path) -> None:
    """Issue 20: what a lineage's files hold now, compared with a certificate read before."""
    names = ["www.example.test"]
    paths = write_lineage(tmp_path / "live", make_chain(names))
    before = load(paths["fullchain"], paths["privkey"])
    assert certificate.replaced(before, paths["fullchain"], paths["privkey"]) is None
    renewed = make_chain(names)
    write_lineage(tmp_path / "live", renewed)
    assert certificate.replaced(before, paths["fullchain"], paths["privkey"]) == \
        f"now serial {renewed.serial:X}"
    os.unlink(paths["privkey"])
    gone = certificate.replaced(before, paths["fullchain"], paths["privkey"])
    assert gone is not None and gone.startswith("its files cannot be read now: ")
