"""The shipped systemd units (contrib/systemd): systemd itself accepts them, they say what the
README promises (sync twice a day at a random time, a missed run made up at boot), the sync
service is confined (`systemd-analyze security` rates it 3.0 or less), and its command line, run
as the unit runs it, still syncs and writes the metrics file.

No test starts the unit under systemd: these machines have no systemd as PID 1. The confined
command line runs here with the unit's environment, a umask of 0077, no new privileges and
no writable-and-executable memory (what NoNewPrivileges=, UMask= and MemoryDenyWriteExecute=
impose); the mount, namespace, address-family and system-call confinement is systemd's to apply.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import pytest
from certmaker import make_chain
from cryptography import x509

UNITS = Path(__file__).resolve().parent.parent / "contrib" / "systemd"
SERVICE, TIMER = "certbot-incapsula-sync.service", "certbot-incapsula-sync.timer"
INSTALLED = "/usr/local/bin/certbot-incapsula"  # where the README's recipe links the command
COMMAND = str(Path(sys.executable).parent / "certbot-incapsula")
MAX_EXPOSURE = 3.0
SYSTEMD_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"  # systemd's default
METRICS_DIR = "/var/lib/prometheus/node-exporter"


def unit(name: str, text: str | None = None) -> Dict[str, Dict[str, List[str]]]:
    """section -> directive -> its values in order (a directive may repeat, as in systemd)."""
    sections: Dict[str, Dict[str, List[str]]] = {}
    current: Dict[str, List[str]] = {}
    for line in (text if text is not None else (UNITS / name).read_text()).splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def analyze() -> str:
    found = shutil.which("systemd-analyze")
    if found is None:
        reason = "systemd-analyze is not installed (apt-get install systemd)"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; CI is set, so this is a failure, not a skip", pytrace=False)
        pytest.skip(reason)
    return found


def test_units_run_sync_twice_a_day_with_a_random_delay():
    service, timer = unit(SERVICE), unit(TIMER)
    assert service["Service"]["Type"] == ["oneshot"]
    assert service["Service"]["ExecStart"] == [f"{INSTALLED} sync --config-dir /etc/letsencrypt $METRICS"]
    assert {key: values for key, values in timer["Timer"].items()} == {
        "OnCalendar": ["*-*-* 00,12:00:00"], "RandomizedDelaySec": ["43200"], "Persistent": ["true"]}
    assert timer["Install"]["WantedBy"] == ["timers.target"]


def test_systemd_analyze_verify_accepts_the_units(tmp_path):
    # verify checks that ExecStart's program exists: point it at this venv's command.
    for name in (SERVICE, TIMER):
        (tmp_path / name).write_text((UNITS / name).read_text().replace(INSTALLED, COMMAND))
    result = subprocess.run([analyze(), "verify", str(tmp_path / SERVICE), str(tmp_path / TIMER)],
                            capture_output=True, text=True, timeout=60, check=False)
    ours = [line for line in (result.stdout + result.stderr).splitlines() if "certbot-incapsula" in line]
    assert result.returncode == 0 and ours == [], result.stdout + result.stderr


def exposure(path: Path) -> float:
    result = subprocess.run([analyze(), "security", "--offline=true", str(path)],
                            capture_output=True, text=True, timeout=60, check=False)
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert found, result.stdout + result.stderr
    return float(found.group(1))


def test_the_sync_service_is_confined_to_an_exposure_of_3_or_less(tmp_path):
    figure = exposure(UNITS / SERVICE)
    assert figure <= MAX_EXPOSURE, f"systemd-analyze security rates the sync service {figure}"
    # With the metrics example switched on too.
    (tmp_path / SERVICE).write_text(with_metrics((UNITS / SERVICE).read_text()))
    assert exposure(tmp_path / SERVICE) <= MAX_EXPOSURE


def with_metrics(text: str) -> str:
    """The unit with its commented metrics example switched on, as docs/monitoring.md says."""
    on = re.sub(r"^#(Environment=\"METRICS=.*|ReadWritePaths=.*)$", r"\1", text, flags=re.M)
    assert on.count("\nReadWritePaths=") == 2 and on.count("\nEnvironment=") == 2, on
    return on


def command_line(text: str) -> tuple[List[str], Dict[str, str]]:
    """(argv, environment) as systemd makes them: Environment= assignments in order (a later one
    wins), then ExecStart with "$VAR" split at whitespace into zero or more words."""
    service = unit(SERVICE, text)["Service"]
    env: Dict[str, str] = {}
    for assignment in service.get("Environment", []):
        for item in shlex.split(assignment):
            name, _, value = item.partition("=")
            env[name] = value
    (exec_start,) = service["ExecStart"]
    argv: List[str] = []
    for word in shlex.split(exec_start):
        if word.startswith("$") and not word.startswith("${"):
            argv += env.get(word[1:], "").split()
        else:
            argv.append(word)
    return argv, env


_LIBC = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
PR_SET_NO_NEW_PRIVS, PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 38, 65, 1


def confined() -> None:
    """In the child: what UMask=0077, NoNewPrivileges= and MemoryDenyWriteExecute= impose."""
    os.umask(0o077)
    if _LIBC.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "PR_SET_NO_NEW_PRIVS")
    # Linux 6.3 and later; older kernels leave this one to systemd alone.
    _LIBC.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0)


def test_the_confined_command_line_repairs_a_site_and_writes_metrics(certbot_runner, pebble, imperva,
                                                                     credentials, tmp_path):
    from prometheus_client.parser import text_string_to_metric_families

    hook = " ".join([certbot_runner.executable("certbot-incapsula"), "deploy", "--credentials",
                     str(credentials), "--api-url", imperva.url, "--allow-staging", "--edge-wait", "0"])
    certbot_runner.run("certonly", "-a", "webroot", "-w", pebble.webroot, "-d", "www.example.test",
                       "--deploy-hook", hook)
    live = certbot_runner.live("www.example.test") / "cert.pem"
    serial = format(x509.load_pem_x509_certificate(live.read_bytes()).serial_number, "X")
    # Older and covering no more than the lineage's: drifted, so sync repairs it (a better one
    # would be left alone as "newer on site").
    other = make_chain(["www.example.test"], days=30)
    imperva.console_upload(101, other.fullchain_pem, other.key_pem)

    metrics_dir = tmp_path / "node-exporter"
    metrics_dir.mkdir()
    text = with_metrics((UNITS / SERVICE).read_text())
    for installed, here in ((INSTALLED, COMMAND), ("/etc/letsencrypt", str(certbot_runner.config_dir)),
                            (METRICS_DIR, str(metrics_dir))):
        text = text.replace(installed, here)
    argv, env = command_line(text)
    assert argv == [COMMAND, "sync", "--config-dir", str(certbot_runner.config_dir),
                    "--prometheus-file", str(metrics_dir / "certbot-incapsula.prom")]
    result = subprocess.run(argv, env={"PATH": SYSTEMD_PATH, **env}, cwd="/", preexec_fn=confined,
                            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120,
                            check=False)
    certbot_runner.outputs.append(result.stdout + result.stderr)  # the secrets scan reads it
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Imperva site 101 (www.example.test): repaired" in result.stdout
    assert imperva.held(101)["serialNumber"] == serial
    metrics = metrics_dir / "certbot-incapsula.prom"
    assert metrics.stat().st_mode & 0o777 == 0o644  # node_exporter, another user, reads it
    values = {(s.name, s.labels.get("site_id")): s.value
              for family in text_string_to_metric_families(metrics.read_text()) for s in family.samples}
    assert values[("certbot_incapsula_in_sync", "101")] == 1
    assert values[("certbot_incapsula_last_run_success", None)] == 1
    state = certbot_runner.config_dir / "incapsula" / "state.json"
    assert state.stat().st_mode & 0o077 == 0  # the records stay the owner's
