"""End to end, issue 11: the `certbot-incapsula` command as certbot's deploy hook, lego's run hook,
by hand, from a timer (`sync`) and for monitors (`status`). Real certbot, lego and pebble, and the
Imperva test double, on loopback; the secrets scan reads every command's output."""
from __future__ import annotations

import base64
import os
import subprocess
import sys
import sysconfig
from importlib.metadata import version
from pathlib import Path

import pytest
from acme_env import find_executable
from certmaker import make_chain, write_lineage
from conftest import write_credentials
from cryptography import x509

NAMES = ["-d", "www.example.test", "-d", "example.test"]
RENEW_NOW = ["renew", "--force-renewal", "--no-random-sleep-on-renew"]
COMMAND = str(Path(sys.executable).parent / "certbot-incapsula")  # the venv's, like the tests' certbot


def serial(pem_path: Path) -> str:
    """The serial of the first certificate in a PEM file, as Imperva shows it."""
    return format(x509.load_pem_x509_certificate(pem_path.read_bytes()).serial_number, "X")


def hook(runner, imperva, credentials, *extra: str) -> str:
    """The deploy command as an ACME client's hook line (pebble is a test CA: --allow-staging; no
    Imperva edge runs here: --edge-wait 0, remembered for sync and status too)."""
    return " ".join([runner.executable("certbot-incapsula"), "deploy", "--credentials",
                     str(credentials), "--api-url", imperva.url, "--allow-staging", "--edge-wait", "0",
                     *extra])


def one_error_line(result: subprocess.CompletedProcess) -> str:
    """A failed command's reason: exit 1 or 2, no traceback, one `error:` line on stderr."""
    assert result.returncode in (1, 2), result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("certbot-incapsula: error:")]
    assert len(errors) == 1, result.stderr
    return errors[0]


@pytest.fixture
def lego() -> str:
    found = find_executable("lego")
    if found is None:
        reason = "lego not installed (apt-get install lego): the lego run-hook test needs it"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; CI is set, so this is a failure, not a skip", pytrace=False)
        pytest.skip(reason)
    return found


@pytest.fixture
def hand_made(certbot_runner, tmp_path):
    """A certificate from another client: certmaker's CA, which is no test CA by name."""
    chain = make_chain(["www.example.test", "example.test"])
    paths = write_lineage(tmp_path / "elsewhere", chain)
    certbot_runner.key_files.append(Path(paths["privkey"]))
    return chain, paths


def test_certbot_deploy_hook_failure_is_reported_sync_repairs_and_renew_uploads(
        certbot_runner, pebble, imperva, credentials):
    config = str(certbot_runner.config_dir)
    imperva.sites[101].ssl = False  # Imperva refuses the first upload (res 4205)
    issued = certbot_runner.run("certonly", "-a", "webroot", "-w", pebble.webroot, *NAMES,
                                "--deploy-hook", hook(certbot_runner, imperva, credentials))
    # certbot reports the hook's one-line reason (its own exit status stays 0).
    assert "Hook 'deploy-hook' reported error code 1" in issued.stderr, issued.stderr
    assert "Hook 'deploy-hook' ran with error output" in issued.stderr
    assert ("certbot-incapsula: error: Imperva: 1 of 1 site(s) failed. site 101: Site 101 does not "
            "have SSL enabled") in issued.stderr
    assert "Traceback" not in issued.stdout + issued.stderr
    assert imperva.uploads() == []
    live = certbot_runner.live("www.example.test")
    first = serial(live / "cert.pem")
    remembered = certbot_runner.config_dir / "incapsula" / "lineages" / "www.example.test.conf"
    assert f"acme_server = {pebble.directory_url}\n" in remembered.read_text()  # from certbot's

    imperva.sites[101].ssl = True
    repaired = certbot_runner.incapsula("sync", "--config-dir", config)  # remembered settings
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    assert "Imperva site 101 (www.example.test): repaired" in repaired.stdout
    assert imperva.held(101)["serialNumber"] == first
    again = certbot_runner.incapsula("sync", "--config-dir", config)
    assert again.returncode == 0 and "www.example.test: in sync" in again.stdout
    assert len(imperva.uploads()) == 1

    renewed = certbot_runner.run(*RENEW_NOW)  # the renewal config runs the same hook
    second = serial(live / "cert.pem")
    assert second != first and imperva.held(101)["serialNumber"] == second
    assert [int(u.form["site_id"]) for u in imperva.uploads()] == [101, 101]
    assert "Imperva site 101 (www.example.test): uploaded" in renewed.stdout
    assert "error" not in renewed.stderr.lower(), renewed.stderr

    status = certbot_runner.incapsula("status", "--config-dir", config)
    assert status.returncode == 0, status.stdout + status.stderr
    assert f"www.example.test  site 101 (www.example.test)  IN SYNC  serial {second}" in status.stdout


def test_lego_run_hook_uploads_legos_certificate(certbot_runner, pebble, imperva, credentials, lego):
    lego_dir = certbot_runner.base_dir / "lego"
    # One name: lego polls each validation for 5 s, one name after the other.
    command = [lego, "--server", pebble.directory_url, "--accept-tos", "--email", "a@example.test",
               "--domains", "shop.example.test", "--http", "--http.webroot", pebble.webroot,
               "--path", str(lego_dir), "run", "--run-hook",
               hook(certbot_runner, imperva, credentials, "--config-dir", str(certbot_runner.config_dir))]
    result = certbot_runner.program(command, env={"LEGO_CA_CERTIFICATES": pebble.ca_bundle})
    key = lego_dir / "certificates" / "shop.example.test.key"
    if key.exists():
        certbot_runner.key_files.append(key)
    assert result.returncode == 0, result.stdout + result.stderr + pebble.log_tail()
    assert "Imperva site 102 (shop.example.test): uploaded" in result.stdout
    bundle = lego_dir / "certificates" / "shop.example.test.crt"  # LEGO_CERT_PATH: leaf and chain
    assert imperva.held(102)["serialNumber"] == serial(bundle)
    (upload,) = imperva.uploads()
    assert int(upload.form["site_id"]) == 102
    assert base64.b64decode(upload.form["certificate"]) == bundle.read_bytes()

    # The old status command, now an alias, finds the lego lineage with no other flag.
    status = certbot_runner.status()
    assert status.returncode == 0, status.stdout + status.stderr
    assert f"shop.example.test  site 102 (shop.example.test)  IN SYNC  serial {serial(bundle)}" \
        in status.stdout


def test_deploy_by_hand_with_the_default_credentials_path(certbot_runner, imperva, credentials,
                                                          hand_made):
    chain, paths = hand_made
    config = certbot_runner.config_dir
    config.mkdir(parents=True)
    write_credentials(config / "incapsula.ini", imperva.api_id, imperva._api_key)
    result = certbot_runner.incapsula("deploy", "--fullchain", paths["fullchain"], "--key",
                                      paths["privkey"], "--config-dir", str(config),
                                      "--api-url", imperva.url, "--edge-wait", "0")  # no edge here
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Imperva site 101 (www.example.test) chosen for www.example.test, example.test" \
        in result.stdout
    assert "Imperva site 101 (www.example.test): uploaded" in result.stdout
    assert imperva.held(101)["serialNumber"] == format(chain.serial, "X")
    remembered = (config / "incapsula" / "lineages" / "www.example.test.conf").read_text()
    assert f"fullchain = {paths['fullchain']}" in remembered
    assert f"incapsula_credentials = {config / 'incapsula.ini'}" in remembered

    imperva.clear()
    synced = certbot_runner.incapsula("sync", "--quiet", "--config-dir", str(config))
    assert synced.returncode == 0 and synced.stdout == synced.stderr == ""  # for cron
    assert imperva.uploads() == []


def test_deploy_cert_name_refuses_a_lineage_from_a_staging_ca(certbot_runner, imperva, credentials,
                                                              tmp_path):
    config = certbot_runner.config_dir
    name = "www.example.test"
    paths = write_lineage(config / "live" / name, make_chain(["www.example.test", "example.test"]))
    certbot_runner.key_files.append(Path(paths["privkey"]))
    (config / "renewal").mkdir()
    staging = "https://acme-staging-v02.api.letsencrypt.org/directory"
    (config / "renewal" / f"{name}.conf").write_text(
        f"fullchain = {paths['fullchain']}\nprivkey = {paths['privkey']}\n"
        f"[renewalparams]\nserver = {staging}\n")
    args = ["deploy", "--cert-name", name, "--config-dir", str(config),
            "--credentials", str(credentials), "--api-url", imperva.url]
    refused = certbot_runner.incapsula(*args)
    assert "comes from a staging or test CA" in one_error_line(refused)
    assert "(--allow-staging)" in refused.stderr
    assert imperva.uploads() == [] and not (config / "incapsula" / "lineages").exists()
    allowed = certbot_runner.incapsula(*args, "--allow-staging")
    assert allowed.returncode == 0, allowed.stdout + allowed.stderr
    assert [int(u.form["site_id"]) for u in imperva.uploads()] == [101]
    remembered = (config / "incapsula" / "lineages" / f"{name}.conf").read_text()
    assert f"acme_server = {staging}\n" in remembered and "incapsula_allow_staging = true" in remembered


def test_deploy_ignores_a_foreign_pythonpath_and_modules_in_the_working_directory(
        certbot_runner, imperva, credentials, hand_made, tmp_path):
    chain, paths = hand_made
    # Another Python's packages, as old certbot snaps put on PYTHONPATH for their hooks.
    foreign = tmp_path / "snap-site-packages"
    for package in ("requests", "cryptography", "certbot", "configobj"):
        (foreign / package).mkdir(parents=True)
        (foreign / package / "__init__.py").write_text(
            f"raise ImportError('{package} of another Python')\n")
    here = tmp_path / "cwd"
    here.mkdir()
    for module in ("json", "requests", "argparse", "configobj", "logging"):
        (here / f"{module}.py").write_text(f"raise RuntimeError('{module}.py of the cwd')\n")
    # The trailing colon is an empty entry: Python reads it as the current directory. The
    # command's own site-packages, named too, must stay (Python lists it only once).
    pythonpath = f"{foreign}:{sysconfig.get_path('purelib')}:"
    result = certbot_runner.incapsula(
        "deploy", "--fullchain", paths["fullchain"], "--key", paths["privkey"],
        "--credentials", str(credentials), "--api-url", imperva.url,
        "--config-dir", str(certbot_runner.config_dir),
        env={"PYTHONPATH": pythonpath}, cwd=here)
    assert result.returncode == 0, result.stdout + result.stderr
    assert imperva.held(101)["serialNumber"] == format(chain.serial, "X")


def test_deploy_errors_are_one_line(certbot_runner, imperva, credentials, hand_made, tmp_path):
    _, paths = hand_made
    config = ["--config-dir", str(certbot_runner.config_dir)]
    account = ["--credentials", str(credentials), "--api-url", imperva.url]
    files = ["--fullchain", paths["fullchain"], "--key", paths["privkey"]]

    nothing = certbot_runner.incapsula("deploy", *account, *config)
    assert "which certificate?" in one_error_line(nothing)
    half = certbot_runner.incapsula("deploy", "--fullchain", paths["fullchain"], *account, *config)
    assert "--fullchain and --key go together" in one_error_line(half)
    missing = tmp_path / "missing.ini"
    no_credentials = certbot_runner.incapsula("deploy", *files, "--credentials", str(missing),
                                              "--api-url", imperva.url, *config)
    assert str(missing) in one_error_line(no_credentials)
    malformed = certbot_runner.incapsula("deploy", *files, *account, *config, "--site-id", "10a")
    assert "--site-id: '10a' is not a site id" in one_error_line(malformed)
    unknown = certbot_runner.incapsula("deploy", *files, *account, *config, "--site-id", "999")
    assert "Imperva does not know site 999 for this API key: check --site-id" in one_error_line(unknown)
    assert "--incapsula-" not in unknown.stdout + unknown.stderr  # the command's own flags
    not_a_dir = tmp_path / "a-file"
    not_a_dir.write_text("")
    unwritable = certbot_runner.incapsula("deploy", *files, *account, "--config-dir", str(not_a_dir))
    assert f"cannot write {not_a_dir}/incapsula/lineages/www.example.test.conf" \
        in one_error_line(unwritable)
    assert imperva.uploads() == []

    empty = str(tmp_path / "empty-config")
    none = certbot_runner.incapsula("sync", "--config-dir", empty)
    assert none.returncode == 2 and "no lineage in" in one_error_line(none)


@pytest.mark.parametrize("subcommand", ["deploy", "sync", "status", "check"])
def test_help_of_each_subcommand_shows_examples(subcommand):
    result = subprocess.run([COMMAND, subcommand, "--help"], capture_output=True, text=True,
                            check=True, timeout=60)
    assert "example" in result.stdout
    assert f"certbot-incapsula {subcommand}" in result.stdout.split("example", 1)[1]


def test_version():
    result = subprocess.run([COMMAND, "--version"], capture_output=True, text=True, check=True,
                            timeout=60)
    assert result.stdout.strip() == f"certbot-incapsula {version('certbot-incapsula')}"


def test_paths_with_hash_comma_quotes_and_spaces_survive_deploy_sync_and_status(
        certbot_runner, imperva, tmp_path):
    """Issue 20: the remembered paths are read back exactly, so sync and status find the files."""
    odd = tmp_path / 'odd #1, "q" \'x\''
    chain = make_chain(["www.example.test", "example.test"])
    paths = write_lineage(odd / "lineage dir", chain)
    certbot_runner.key_files.append(Path(paths["privkey"]))
    credentials = write_credentials(odd / "incapsula, #2.ini", imperva.api_id, imperva._api_key)
    config = ["--config-dir", str(certbot_runner.config_dir)]
    deployed = certbot_runner.incapsula("deploy", "--fullchain", paths["fullchain"], "--key",
                                        paths["privkey"], "--credentials", str(credentials),
                                        "--api-url", imperva.url, "--edge-wait", "0", *config)
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    assert imperva.held(101)["serialNumber"] == format(chain.serial, "X")

    # Someone removes the certificate: sync must find the files and the credentials again.
    imperva.console("sites/customCertificate/remove", {"site_id": "101", "auth_type": "ECC"})
    assert imperva.held(101) is None
    synced = certbot_runner.incapsula("sync", *config)
    assert synced.returncode == 0, synced.stdout + synced.stderr
    assert "Imperva site 101 (www.example.test): repaired" in synced.stdout
    assert imperva.held(101)["serialNumber"] == format(chain.serial, "X")

    status = certbot_runner.incapsula("status", *config)
    assert status.returncode == 0, status.stdout + status.stderr
    assert f"www.example.test  site 101 (www.example.test)  IN SYNC  serial {chain.serial:X}" \
        in status.stdout
