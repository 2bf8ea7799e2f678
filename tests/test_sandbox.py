"""What a newcomer runs by hand (issue 13): `make sandbox`'s demo/sandbox.py, `make demo`'s
demo/demo.py and the Imperva double's own command line, each run as the user runs it."""
from __future__ import annotations

import base64
import os
import re
import shlex
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from acme_env import Pebble, pebble_available
from certmaker import make_chain
from conftest import TEST_API_KEY

ROOT = Path(__file__).resolve().parent.parent
SANDBOX = ROOT / "demo" / "sandbox.py"
DEMO = ROOT / "demo" / "demo.py"
DOUBLE = ROOT / "tests" / "imperva_server.py"

needs_pebble = pytest.mark.skipif(not pebble_available() and not os.environ.get("CI"),
                                  reason="pebble not installed (apt-get install pebble)")


def user_env(tmp: Path) -> dict[str, str]:
    """The user's environment, with temp files under `tmp` (so leftovers show) and no personal
    certbot cli.ini or proxy in the way."""
    tmp.mkdir(exist_ok=True)
    env = dict(os.environ, TMPDIR=str(tmp), XDG_CONFIG_HOME=str(tmp.parent / "xdg"))
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    return env


# ----- the Imperva double's command line -------------------------------------------------------


def test_double_help_documents_its_options_and_test_credentials() -> None:
    result = subprocess.run([sys.executable, str(DOUBLE), "--help"], capture_output=True, text=True,
                            timeout=30, check=True)
    for expected in ("--site ID:DOMAIN[,DOMAIN...][:nossl]", "--port", "--api-id", "--api-key",
                     "--latency", "--account-id", "--coverage-flag-name", "API id   12345",
                     f"API key  {TEST_API_KEY}", "103:nossl.example.test:nossl"):
        assert expected in result.stdout, expected


def test_double_bad_site_option_is_one_clear_line() -> None:
    result = subprocess.run([sys.executable, str(DOUBLE), "--site", "101:www.example.test:ssl"],
                            capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 2
    assert "--site wants ID:DOMAIN[,DOMAIN...][:nossl]" in result.stderr
    assert "got '101:www.example.test:ssl'" in result.stderr
    assert "Traceback" not in result.stderr


def test_double_nossl_site_is_listed_and_refuses_uploads() -> None:
    proc = subprocess.Popen([sys.executable, str(DOUBLE), "--site", "101:www.example.test,example.test",
                             "--site", "103:nossl.example.test:nossl"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip().split("=", 1)[1]
        auth = {"x-API-Id": "12345", "x-API-Key": TEST_API_KEY}
        listed = requests.post(url + "/api/prov/v1/sites/list", data={}, headers=auth, timeout=10).json()
        assert [site["domain"] for site in listed["sites"]] == ["www.example.test", "nossl.example.test"]
        chain = make_chain(["nossl.example.test"])
        answer = requests.post(url + "/api/prov/v1/sites/customCertificate/upload", headers=auth, timeout=10,
                               data={"site_id": "103", "auth_type": "ECC",
                                     "certificate": base64.b64encode(chain.fullchain_pem).decode(),
                                     "private_key": base64.b64encode(chain.key_pem).decode()}).json()
        assert answer["res"] == 4205
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
    assert proc.returncode == 0
    assert err.splitlines()[-1].endswith("customCertificate/upload site_id=103 res=4205")


# ----- the sandbox ----------------------------------------------------------------------------


def _proc_stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()  # the fields after "pid (comm)"


def children_of(pid: int) -> dict[int, str]:
    """{child pid: its start time}: the pair names a process even if the pid is reused later."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _proc_stat(int(entry.name))
            if fields is not None and fields[1] == str(pid):  # field 4, ppid
                found[int(entry.name)] = fields[19]  # field 22, starttime
    return found


def still_running(pid: int, started: str) -> bool:
    fields = _proc_stat(pid)
    return fields is not None and fields[19] == started and fields[0] != "Z"


class Sandbox:
    """demo/sandbox.py as `make sandbox` runs it, in its own process group like a shell job."""

    def __init__(self, tmp_path: Path) -> None:
        self.env = user_env(tmp_path / "tmp")
        self.tmp = Path(self.env["TMPDIR"])
        self.output_path = tmp_path / "sandbox.out"
        with open(self.output_path, "wb") as out:
            self.proc = subprocess.Popen([sys.executable, str(SANDBOX)], stdin=subprocess.DEVNULL,
                                         stdout=out, stderr=subprocess.STDOUT, env=self.env,
                                         start_new_session=True)

    def output(self) -> str:
        return self.output_path.read_text()

    def wait_for_banner(self, timeout: float = 60) -> list[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            lines = self.output().splitlines()
            if any(line.startswith("certbot-incapsula-status ") for line in lines):
                return lines
            assert self.proc.poll() is None, f"the sandbox exited early:\n{self.output()}"
            time.sleep(0.1)
        raise AssertionError(f"no lines to paste after {timeout} s:\n{self.output()}")

    def stop(self, signum: int) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signum)
        self.proc.wait(timeout=30)


def paste(lines: list[str], prefix: str) -> str:
    [line] = [line for line in lines if line.startswith(prefix)]
    return line


@needs_pebble
def test_sandbox_answers_its_own_pasted_lines_and_leaves_nothing_on_ctrl_c(tmp_path: Path) -> None:
    sandbox = Sandbox(tmp_path)
    try:
        lines = sandbox.wait_for_banner()
        export = paste(lines, "export REQUESTS_CA_BUNDLE=")
        run = paste(lines, "certbot --config ")
        status = paste(lines, "certbot-incapsula-status --config-dir ")
        cli_ini = Path(shlex.split(run)[2])
        base = cli_ini.parent
        assert base.parent == sandbox.tmp and base.name.startswith("incapsula-sandbox-")
        credentials = base / "incapsula.ini"
        assert stat.S_IMODE(credentials.stat().st_mode) == 0o600
        assert f"incapsula-credentials = {credentials}" in cli_ini.read_text()
        servers = children_of(sandbox.proc.pid)
        assert len(servers) == len(Pebble.PROCESSES)  # pebble, its DNS stub, the webroot's server

        # What the user does in another shell, line for line.
        shell = ["bash", "-c", f"set -e\n{export}\n{run}\n{status}"]
        result = subprocess.run(shell, cwd=tmp_path, env=user_env(tmp_path / "shell-tmp"),
                                stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=180,
                                check=False)
        output = result.stdout + result.stderr
        assert result.returncode == 0, output
        assert "Imperva site 101 (www.example.test): uploaded" in output
        assert re.search(r"^www\.example\.test +site 101 \(www\.example\.test\) +IN SYNC", output, re.M)
        assert (base / "certbot" / "config" / "live" / "www.example.test" / "privkey.pem").exists()
        assert "POST /api/prov/v1/sites/customCertificate/upload site_id=101 res=0" in sandbox.output()
        assert TEST_API_KEY not in output + sandbox.output()
    finally:
        sandbox.stop(signal.SIGINT)  # a Ctrl-C in its terminal hits the whole foreground group

    assert sandbox.proc.returncode == 0, sandbox.output()
    assert f"sandbox stopped: servers down, {base} removed" in sandbox.output()
    assert not any(still_running(pid, started) for pid, started in servers.items())
    for pid in servers:  # each server led its own process group: nothing of it is left either
        with pytest.raises(ProcessLookupError):
            os.killpg(pid, 0)
    assert list(sandbox.tmp.iterdir()) == []  # no directory, no key, no credentials left


@needs_pebble
def test_sandbox_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    sandbox = Sandbox(tmp_path)
    try:
        sandbox.wait_for_banner()
        servers = children_of(sandbox.proc.pid)
        assert len(servers) == len(Pebble.PROCESSES)
    finally:
        sandbox.stop(signal.SIGTERM)
    assert sandbox.proc.returncode == 0, sandbox.output()
    assert not any(still_running(pid, started) for pid, started in servers.items())
    assert list(sandbox.tmp.iterdir()) == []


# ----- the demo -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], Path]:
    """`make demo`'s script, run once for the tests below: about 10-15 s (six certbot runs)."""
    if not pebble_available() and not os.environ.get("CI"):
        pytest.skip("pebble not installed (apt-get install pebble)")
    env = user_env(tmp_path_factory.mktemp("demo") / "tmp")
    result = subprocess.run([sys.executable, str(DEMO)], stdin=subprocess.DEVNULL, capture_output=True,
                            text=True, env=env, timeout=300, check=False)
    return result, Path(env["TMPDIR"])


def test_demo_shows_flag_drift_repair_and_status_and_leaves_nothing(demo_run) -> None:
    result, tmp = demo_run
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    step1 = out[out.index("\n1. "):out.index("\n2. ")]
    assert re.search(r"WARNING .*(coverageError|does not cover)", step1), step1
    drifted = re.search(r"site 102 \(shop\.example\.test\) +DRIFTED", out)
    repaired = re.search(r"Imperva site 102 \(shop\.example\.test\): repaired \(", out)
    assert drifted and repaired and drifted.start() < repaired.start(), out
    in_sync = re.search(r"site 102 \(shop\.example\.test\) +IN SYNC", out[repaired.end():])
    assert in_sync, out
    # The last step (the blocked run of the edge part reads it too): a renew with everything in
    # sync reads the account's listing once, no more.
    last_step = re.findall(r"\n\d+\. [^\n]*\n(?:   [^\n]*\n)*", out)[-1]
    assert last_step.endswith("   Imperva API calls: sites/list\n"), last_step
    assert TEST_API_KEY not in out + result.stderr
    assert list(tmp.iterdir()) == []  # its directory, private keys and credentials are gone


def test_demo_coverage_warning_names_the_missing_domain_once(demo_run) -> None:
    result, _ = demo_run
    step1 = result.stdout[result.stdout.index("\n1. "):result.stdout.index("\n2. ")]
    warnings = [line for line in step1.splitlines()[2:] if re.search("cover", line, re.I)]
    assert len(warnings) == 1, warnings
    # example.test on its own, not as part of www.example.test (the site's label).
    assert re.search(r"(?<![\w.])example\.test", warnings[0]), warnings


def test_demo_shows_the_edge_path_and_a_run_stopped_by_a_block_rule(demo_run) -> None:
    result, _ = demo_run
    out = result.stdout
    if os.geteuid() != 0:
        assert "Not root: no Imperva edge double" in out
        pytest.skip("the demo shows the edge only as root (ports 80 and 443)")
    assert re.search(r"Imperva's edge \(test double\): 127\.77\.\d+\.\d+ ports 80 and 443", out)
    step1 = out[out.index("\n1. "):out.index("\n2. ")]
    assert "the CA: www.example.test -> proxied 200" in step1  # CA -> edge -> origin
    assert re.search(r"serves it to ECC clients \(after \d s\)", step1)
    step2 = out[out.index("\n2. "):out.index("\n3. ")]
    assert re.search(r"shop\.example\.test: Imperva's edge \S+ blocked the request \(HTTP 403, Incapsula "
                     r"incident ID: [\d-]+\): add a WAF/bot-protection exception", step2), step2
    assert "(exit status 1)" in step2 and "the CA:" not in step2  # stopped before the CA was asked
