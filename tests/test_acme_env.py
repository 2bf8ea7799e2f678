"""The harness itself: real certbot gets a real certificate from pebble through http-01."""

from __future__ import annotations

import os
from pathlib import Path

from acme_env import Certbot, Pebble
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_private_key

NAMES = ("www.example.test", "example.test")
LIVE_FILES = ("cert.pem", "chain.pem", "fullchain.pem", "privkey.pem")


def issue(pebble: Pebble, certbot: Certbot) -> Path:
    args = ["certonly", "-a", "webroot", "-w", pebble.webroot]
    for name in NAMES:
        args += ["-d", name]
    # Explicit: certbot < 2.0 defaulted to RSA 2048, 2.0 and later to ECDSA P-256.
    certbot.run(*args, "--key-type", "ecdsa", "--elliptic-curve", "secp256r1")
    return certbot.live(NAMES[0])


def leaf(live: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate((live / "cert.pem").read_bytes())


def dns_names(cert: x509.Certificate) -> list[str]:
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return sorted(san.get_values_for_type(x509.DNSName))


def test_certonly_issues_a_real_certificate(pebble: Pebble, certbot_runner: Certbot) -> None:
    live = issue(pebble, certbot_runner)

    for name in LIVE_FILES:
        assert (live / name).is_file(), name
    fullchain = x509.load_pem_x509_certificates((live / "fullchain.pem").read_bytes())
    assert len(fullchain) == 2  # leaf + pebble's intermediate, no root
    cert, intermediate = fullchain
    assert cert == leaf(live)

    assert dns_names(cert) == sorted(NAMES)

    key = load_pem_private_key((live / "privkey.pem").read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert isinstance(key.curve, ec.SECP256R1)
    assert cert.public_key() == key.public_key()

    # Signed by this pebble run's hierarchy, not just any PEM.
    cert.verify_directly_issued_by(intermediate)
    intermediate.verify_directly_issued_by(x509.load_pem_x509_certificate(pebble.root_pem()))
    assert f"server = {pebble.directory_url}" in certbot_runner.renewal_conf(NAMES[0])


def test_forced_renewal_gives_a_new_serial(pebble: Pebble, certbot_runner: Certbot) -> None:
    live = issue(pebble, certbot_runner)
    first = leaf(live)

    certbot_runner.run("renew", "--force-renewal", "--no-random-sleep-on-renew")

    second = leaf(live)
    assert second.serial_number != first.serial_number
    assert os.readlink(live / "cert.pem").endswith("cert2.pem")
    assert dns_names(second) == sorted(NAMES)
    # PEBBLE_AUTHZREUSE=0: the renewal validated both names again over http-01.
    assert certbot_runner.log_text().count("http-01 challenge for") == 2 * len(NAMES)
