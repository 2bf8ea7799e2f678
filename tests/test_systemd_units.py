"""The shipped systemd units (contrib/systemd): systemd itself accepts them, and they say what the
README promises (sync twice a day at a random time, a missed run made up at boot)."""
from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNITS = Path(__file__).resolve().parent.parent / "contrib" / "systemd"
SERVICE, TIMER = "certbot-incapsula-sync.service", "certbot-incapsula-sync.timer"
INSTALLED = "/usr/local/bin/certbot-incapsula"  # where the README's recipe links the command


def unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    parser.read_string((UNITS / name).read_text())
    return parser


def test_units_run_sync_twice_a_day_with_a_random_delay():
    service, timer = unit(SERVICE), unit(TIMER)
    assert service["Service"]["Type"] == "oneshot"
    assert service["Service"]["ExecStart"] == f"{INSTALLED} sync"
    assert dict(timer["Timer"]) == {"OnCalendar": "*-*-* 00,12:00:00", "RandomizedDelaySec": "43200",
                                    "Persistent": "true"}
    assert timer["Install"]["WantedBy"] == "timers.target"


def test_systemd_analyze_verify_accepts_the_units(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (it comes with systemd)")
    # verify checks that ExecStart's program exists: point it at this venv's command.
    for name in (SERVICE, TIMER):
        text = (UNITS / name).read_text()
        (tmp_path / name).write_text(text.replace(INSTALLED, str(Path(sys.executable).parent
                                                                 / "certbot-incapsula")))
    result = subprocess.run([analyze, "verify", str(tmp_path / SERVICE), str(tmp_path / TIMER)],
                            capture_output=True, text=True, timeout=60, check=False)
    ours = [line for line in (result.stdout + result.stderr).splitlines() if "certbot-incapsula" in line]
    assert result.returncode == 0 and ours == [], result.stdout + result.stderr
