"""Issue 5: the end-to-end flow against the certbot that users have (an old release, a distro's,
another Python), not the main venv's.

Skipped unless INCAPSULA_CERTBOT names a certbot executable; scripts/compat.sh builds each target
environment, installs the plugin there from the wheel and sets it. pytest, the pebble harness and
the Imperva test double run here, in the main venv; certbot (and certbot-incapsula-status, and the
import check) run as subprocesses in the target's own Python.

Optional: INCAPSULA_CERTBOT_VERSION=X.Y.Z asserts the certbot is that release (so an install
step that upgraded it is caught); INCAPSULA_PYTHON is the target's python (default: the one
in certbot's #! line).
"""
from __future__ import annotations

import base64
import functools
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import List, Optional, Tuple

import pytest
from acme_env import Certbot
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa

CERTBOT = os.environ.get("INCAPSULA_CERTBOT", "")
NAME = "www.example.test"
NAMES = ["-d", NAME, "-d", "example.test"]
RENEW = ("renew", "--no-random-sleep-on-renew")

pytestmark = pytest.mark.skipif(
    not CERTBOT,
    reason="INCAPSULA_CERTBOT is not set: these tests run against another certbot than the main "
           "venv's (scripts/compat.sh sets it for each target); the main venv's certbot is "
           "covered by test_e2e_core.py")


# --- the target certbot --------------------------------------------------------------------


def _parse_version(text: str) -> Tuple[int, ...]:
    match = re.search(r"certbot (\d+)\.(\d+)\.(\d+)", text)
    assert match, f"no certbot version in {text!r}"
    return tuple(int(part) for part in match.groups())


@functools.lru_cache(maxsize=None)
def certbot_version() -> Tuple[int, ...]:
    # Old certbots print the version on stderr, new ones on stdout.
    result = subprocess.run([CERTBOT, "--version"], capture_output=True, text=True, timeout=120,
                            stdin=subprocess.DEVNULL, check=False)
    assert result.returncode == 0, f"{CERTBOT} --version: {result.returncode}\n{result.stderr}"
    return _parse_version(result.stdout + result.stderr)


@functools.lru_cache(maxsize=None)
def certbot_help() -> str:
    result = subprocess.run([CERTBOT, "--help", "all"], capture_output=True, text=True,
                            timeout=120, stdin=subprocess.DEVNULL, check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout


def supports(flag: str) -> bool:
    return flag in certbot_help()


def target_python() -> str:
    """The interpreter that runs this certbot: INCAPSULA_PYTHON, else certbot's #! line."""
    if os.environ.get("INCAPSULA_PYTHON"):
        return os.environ["INCAPSULA_PYTHON"]
    with open(CERTBOT, "rb") as handle:
        first = handle.readline().decode(errors="replace")
    assert first.startswith("#!"), f"{CERTBOT} is not a script with a #! line: set INCAPSULA_PYTHON"
    words = first[2:].split()
    if Path(words[0]).name == "env":  # #!/usr/bin/env python3
        found = shutil.which(words[1])
        assert found, first
        return found
    return words[0]


def status_exe() -> Optional[str]:
    """certbot-incapsula-status of the same install: beside certbot in a venv, /usr/local/bin
    for a `pip install --break-system-packages` beside Debian's /usr/bin/certbot."""
    for folder in (Path(CERTBOT).parent, Path("/usr/local/bin")):
        candidate = folder / "certbot-incapsula-status"
        if os.access(candidate, os.X_OK):
            return str(candidate)
    return None


@pytest.fixture
def certbot(pebble, tmp_path: Path) -> Certbot:
    return Certbot(pebble, tmp_path / "certbot", certbot_exe=CERTBOT)


def leaf(certbot: Certbot) -> x509.Certificate:
    return x509.load_pem_x509_certificate((certbot.live(NAME) / "cert.pem").read_bytes())


def issue(certbot: Certbot, pebble, plugin_args: List[str], *extra: str):
    return certbot.run("run", "-a", "webroot", "-w", pebble.webroot, *plugin_args, *NAMES, *extra)


def assert_uploaded_current(certbot: Certbot, imperva, auth_type: str) -> None:
    """Exactly one upload since the last clear(), to site 101, of the lineage's current files."""
    uploads = imperva.uploads()
    assert [int(u.form["site_id"]) for u in uploads] == [101]
    assert uploads[0].form["auth_type"] == auth_type
    fullchain = (certbot.live(NAME) / "fullchain.pem").read_bytes()
    assert base64.b64decode(uploads[0].form["certificate"]) == fullchain
    held = imperva.held(101)
    assert held is not None and held["serialNumber"] == format(leaf(certbot).serial_number, "X")


def assert_renewal_conf_names_the_plugin(certbot: Certbot, credentials: Path) -> str:
    conf = certbot.renewal_conf(NAME)
    assert re.search(r"^installer = incapsula$", conf, re.M), conf
    assert f"incapsula_credentials = {credentials}" in conf, conf
    assert re.search(r"^incapsula_credentials = /\S+$", conf, re.M), conf
    return conf


# --- the tests -------------------------------------------------------------------------------


def test_certbot_version_and_plugin_listed(certbot: Certbot) -> None:
    version = certbot_version()
    expected = os.environ.get("INCAPSULA_CERTBOT_VERSION")
    if expected:
        assert ".".join(map(str, version)) == expected, "the plugin install changed certbot"
    result = certbot.run("plugins")
    assert "* incapsula" in result.stdout
    assert "Upload certificates to Imperva Cloud WAF (Incapsula) sites" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr


def test_plugin_module_imports_without_side_effects(tmp_path: Path) -> None:
    """certbot imports every plugin's module on every command: it must import cleanly, print
    nothing, write nothing and leave the heavy modules (API client, crypto checks) unloaded."""
    code = (
        "import sys\n"
        "import certbot_incapsula.installer as m\n"
        "heavy = sorted(n for n in sys.modules if n.startswith('certbot_incapsula.')\n"
        "               and n != 'certbot_incapsula.installer')\n"
        "print(m.Installer.description)\n"
        "print(','.join(heavy) or '-')\n"
    )
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path / "home"),
           "LANG": "C.UTF-8", "PYTHONWARNINGS": "ignore::DeprecationWarning"}
    result = subprocess.run([target_python(), "-X", "importtime", "-c", code], cwd=workdir, env=env,
                            capture_output=True, text=True, timeout=120, check=False,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.splitlines() == [
        "Upload certificates to Imperva Cloud WAF (Incapsula) sites", "-"], result.stdout
    other = [line for line in result.stderr.splitlines() if not line.startswith("import time:")]
    # pkg_resources' deprecation notice from old certbots is certbot's, not the plugin's.
    other = [line for line in other if "pkg_resources" not in line]
    assert other == [], "\n".join(other)
    assert list(workdir.iterdir()) == []
    assert not (tmp_path / "home").exists()
    own = [line for line in result.stderr.splitlines() if "certbot_incapsula" in line]
    sys.stderr.write("\n".join(own) + "\n")


def test_ecdsa_run_renew_renew_not_due_and_install(certbot: Certbot, pebble, imperva, plugin_args,
                                                   credentials: Path) -> None:
    if not supports("--key-type"):
        pytest.skip(f"certbot {certbot_version()} has no --key-type: ECDSA cannot be asked for")
    issue(certbot, pebble, plugin_args, "--key-type", "ecdsa")
    assert isinstance(leaf(certbot).public_key(), ec.EllipticCurvePublicKey)
    assert_uploaded_current(certbot, imperva, "ECC")
    conf = assert_renewal_conf_names_the_plugin(certbot, credentials)
    assert imperva._api_key not in conf

    # A forced renewal uploads the new certificate (certbot calls renew_deploy).
    first = leaf(certbot).serial_number
    imperva.clear()
    certbot.run(*RENEW, "--force-renewal")
    assert leaf(certbot).serial_number != first
    assert_uploaded_current(certbot, imperva, "ECC")
    assert_renewal_conf_names_the_plugin(certbot, credentials)  # renew rewrites the config

    # Nothing due: certbot only calls generic_updates; Imperva holds the current one, no upload.
    imperva.clear()
    result = certbot.run(*RENEW)
    assert result.returncode == 0
    assert imperva.uploads() == []
    assert "Traceback" not in result.stdout + result.stderr

    # install re-uploads the same certificate, and leaves the renewal config as it was.
    imperva.clear()
    before = certbot.renewal_conf(NAME)
    result = certbot.run("install", "--cert-name", NAME, *plugin_args)
    assert_uploaded_current(certbot, imperva, "ECC")
    assert "Imperva site 101 (www.example.test): uploaded" in result.stdout
    assert certbot.renewal_conf(NAME) == before
    assert_renewal_conf_names_the_plugin(certbot, credentials)

    # The status command of the same install reads the lineage with the target's libraries.
    exe = status_exe()
    if exe is None:
        pytest.fail(f"certbot-incapsula-status not found beside {CERTBOT} nor in /usr/local/bin")
    status = subprocess.run([exe, "--config-dir", str(certbot.config_dir), "--json"],
                            capture_output=True, text=True, timeout=120, check=False,
                            env=certbot.environment(), stdin=subprocess.DEVNULL)
    assert status.returncode == 0, status.stdout + status.stderr
    rows = json.loads(status.stdout)
    assert [(row["lineage"], row["site"], row["state"]) for row in rows] == [(NAME, 101, "in sync")]


def test_rsa_run_uploads_with_rsa_auth_type(certbot: Certbot, pebble, imperva, plugin_args) -> None:
    # certbot < 2.0 issues RSA by default; --key-type exists from 1.10.
    extra = ["--key-type", "rsa"] if supports("--key-type") else []
    issue(certbot, pebble, plugin_args, *extra)
    assert isinstance(leaf(certbot).public_key(), rsa.RSAPublicKey)
    assert_uploaded_current(certbot, imperva, "RSA")
    assert "key_type = ecdsa" not in certbot.renewal_conf(NAME)


RECIPES = ["reconfigure", "renew-with-installer", "edit-renewal-conf"]


@pytest.mark.parametrize("recipe", RECIPES)
def test_attach_the_plugin_to_a_certonly_lineage(recipe: str, certbot: Certbot, pebble, imperva,
                                                 plugin_args, credentials: Path) -> None:
    """An existing certonly lineage: `install` uploads but does not make renewals use the
    plugin. What does: `reconfigure` (certbot >= 2.3); on any certbot, a *forced* renewal that
    names the installer (a renewal that is not due leaves the config as it was), or the
    installer's lines added by hand right below [renewalparams]."""
    if recipe == "reconfigure" and certbot_version() < (2, 3, 0):
        pytest.skip(f"certbot {'.'.join(map(str, certbot_version()))} has no reconfigure "
                    "(certbot >= 2.3): the renew-with-installer and edit-renewal-conf recipes are "
                    "the ones for it")
    certbot.run("certonly", "-a", "webroot", "-w", pebble.webroot, *NAMES)
    assert imperva.requests == []
    before = certbot.renewal_conf(NAME)
    assert "installer = incapsula" not in before

    certbot.run("install", "--cert-name", NAME, *plugin_args)
    assert len(imperva.uploads(101)) == 1
    assert certbot.renewal_conf(NAME) == before, "install changed the renewal config"

    imperva.clear()
    if recipe == "reconfigure":
        certbot.run("reconfigure", "--cert-name", NAME, *plugin_args)
        assert imperva.uploads() == []  # a test run only: nothing is deployed
    elif recipe == "edit-renewal-conf":
        path = certbot.config_dir / "renewal" / f"{NAME}.conf"
        lines = ["installer = incapsula", f"incapsula_credentials = {credentials}",
                 f"incapsula_api_url = {imperva.url}", "incapsula_allow_staging = True",
                 "incapsula_edge_wait = 0"]  # no edge here (the pre-flight says so and goes on)
        # Below the section header: after the [[webroot_map]] subsection a line would land in it.
        path.write_text(before.replace("[renewalparams]\n", "[renewalparams]\n" + "\n".join(lines)
                                       + "\n", 1))
    else:
        # Not forced, a renewal that is not due would leave the renewal config as it is.
        serial = leaf(certbot).serial_number
        certbot.run(*RENEW, "--cert-name", NAME, "--force-renewal", *plugin_args)
        assert leaf(certbot).serial_number != serial
        assert_uploaded_current(certbot, imperva, auth_type_of(certbot))
    assert_renewal_conf_names_the_plugin(certbot, credentials)

    # From now on a plain renewal uploads.
    imperva.clear()
    certbot.run(*RENEW, "--force-renewal")
    assert_uploaded_current(certbot, imperva, auth_type_of(certbot))


def test_preflight_only_before_an_order(edge_pebble, imperva_edge, imperva, credentials,
                                        tmp_path: Path) -> None:
    """Issue 20: the pre-flight hooks the moment certbot orders (Client._get_order_and_authorizations
    on every target): a block rule stops a run before the order, a not-due run is not probed and
    installs, a due renew is probed. Needs root (the edge double)."""
    from test_e2e_edge import CA, PROBE, pebble_log_since, pebble_log_size

    edge_pebble.set_edge_address(imperva_edge.address)
    imperva_edge.origin = edge_pebble.origin_url
    certbot = Certbot(edge_pebble, tmp_path / "certbot", certbot_exe=CERTBOT)
    args = ["-i", "incapsula", "--incapsula-credentials", str(credentials), "--incapsula-api-url",
            imperva.url, "--incapsula-allow-staging", "--incapsula-edge-wait", "0"]
    stopped = "Imperva pre-flight: the CA would not get the challenge file through Imperva's edge"

    imperva_edge.set_rule(101, "block")
    offset = pebble_log_size(edge_pebble)
    result = certbot.run("run", "-a", "webroot", "-w", edge_pebble.webroot, *args, *NAMES, check=False)
    assert result.returncode == 1 and stopped in result.stdout + result.stderr, result.stderr
    assert "POST /order-plz" not in pebble_log_since(edge_pebble, offset)
    assert imperva_edge.requests_for(user_agent=CA) == []

    imperva_edge.set_rule(101, None)
    issue(certbot, edge_pebble, args)
    assert len(imperva.uploads(101)) == 1

    imperva_edge.clear()
    imperva_edge.set_rule(101, "block")
    offset = pebble_log_size(edge_pebble)
    result = issue(certbot, edge_pebble, args)  # not due: kept and installed, exit 0
    assert "Imperva pre-flight" not in result.stdout + result.stderr
    assert imperva_edge.requests_for(user_agent=PROBE) == []
    assert "POST /order-plz" not in pebble_log_since(edge_pebble, offset)

    result = certbot.run(*RENEW, "--force-renewal", check=False)
    assert result.returncode == 1 and stopped in result.stdout + result.stderr, result.stderr
    assert "installer = incapsula" in certbot.renewal_conf(NAME)  # the installer stays


def auth_type_of(certbot: Certbot) -> str:
    return "ECC" if isinstance(leaf(certbot).public_key(), ec.EllipticCurvePublicKey) else "RSA"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
