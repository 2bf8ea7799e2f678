"""docs/monitoring.md's snippets are the ones that work: each marked `<!-- tested: NAME -->` is
run (the Nagios command line), fed to the real tool (node_exporter, promtool), or compared with
what a run produced here (the plugin's output, the metrics file), numbers aside."""
from __future__ import annotations

import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from certmaker import make_chain
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "monitoring.md"
UNIT = ROOT / "contrib" / "systemd" / "certbot-incapsula-sync.service"
INSTALLED = "/usr/local/bin/certbot-incapsula"
COMMAND = str(Path(sys.executable).parent / "certbot-incapsula")
METRICS_DIR = "/var/lib/prometheus/node-exporter"


def snippet(name: str) -> str:
    found = re.search(rf"<!-- tested: {name} -->\n```[a-z]*\n(.*?)```", DOC.read_text(), re.S)
    assert found, f"docs/monitoring.md has no snippet {name}"
    return found.group(1)


def numbers_aside(text: str) -> str:
    return re.sub(r"-?\d+(?:\.\d+)?(?:e[+-]?\d+)?", "N", text)


def tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        reason = f"{name} is not installed (apt-get install prometheus prometheus-node-exporter)"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; CI is set, so this is a failure, not a skip", pytrace=False)
        pytest.skip(reason)
    return found


def issue(runner, pebble, imperva, credentials) -> None:
    hook = " ".join([runner.executable("certbot-incapsula"), "deploy", "--credentials",
                     str(credentials), "--api-url", imperva.url, "--allow-staging", "--edge-wait", "0"])
    runner.run("certonly", "-a", "webroot", "-w", pebble.webroot, "-d", "www.example.test",
               "-d", "example.test", "--deploy-hook", hook)


def test_the_nagios_command_definition_runs_and_prints_the_documented_lines(
        certbot_runner, pebble, imperva, credentials):
    issue(certbot_runner, pebble, imperva, credentials)
    definitions = snippet("nagios-command")
    command_line = re.search(r"^\s*command_line\s+(.+)$", definitions, re.M).group(1)
    _, *arguments = re.search(r"^\s*check_command\s+(\S+)$", definitions, re.M).group(1).split("!")
    for number, value in enumerate(arguments, 1):  # as Nagios expands $ARGn$
        command_line = command_line.replace(f"${'ARG'}{number}$", value)
    argv = [COMMAND if word == INSTALLED else word.replace("/etc/letsencrypt", str(certbot_runner.config_dir))
            for word in shlex.split(command_line)]
    assert argv[:4] == [COMMAND, "status", "--nagios", "--config-dir"] and "$" not in command_line

    ok = certbot_runner.program(argv)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert numbers_aside(ok.stdout) == numbers_aside(snippet("nagios-output"))
    other = make_chain(["www.example.test", "example.test"])
    imperva.console_upload(101, other.fullchain_pem, other.key_pem)
    drifted = certbot_runner.program(argv)
    assert drifted.returncode == 1, drifted.stdout + drifted.stderr
    assert numbers_aside(drifted.stdout) == numbers_aside(snippet("nagios-output-drifted"))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def scrape(url: str, deadline: float) -> str:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    while True:
        try:
            with opener.open(url, timeout=5) as answer:
                return str(answer.read().decode())
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_the_metrics_file_node_exporter_and_the_alert_rule_are_the_documented_ones(
        certbot_runner, pebble, imperva, imperva_edge, credentials, tmp_path):
    node_exporter, promtool = tool("prometheus-node-exporter"), tool("promtool")
    issue(certbot_runner, pebble, imperva, credentials)
    # The unit's commented example lines are the documented ones.
    commented = [line[1:] for line in UNIT.read_text().splitlines()
                 if line.startswith(("#Environment=\"METRICS=", "#ReadWritePaths="))]
    assert commented == snippet("unit-metrics-lines").splitlines()
    path = re.search(r"--prometheus-file (\S+)\"", commented[0]).group(1)
    directory = tmp_path / "node-exporter"
    directory.mkdir()
    metrics = Path(path.replace(METRICS_DIR, str(directory)))
    result = certbot_runner.incapsula("status", "--config-dir", str(certbot_runner.config_dir),
                                      "--edge-wait", "5", "--prometheus-file", str(metrics))
    assert result.returncode == 0, result.stdout + result.stderr
    written = metrics.read_text()
    assert numbers_aside(written) == numbers_aside(snippet("prometheus-file"))

    # A real node_exporter with the documented flag (on a loopback port of the test's own).
    flag = shlex.split(snippet("node-exporter-flag"))
    assert flag[0] == "prometheus-node-exporter"
    port = free_port()
    argv = [node_exporter, *(word.replace(METRICS_DIR, str(directory)) for word in flag[1:]),
            f"--web.listen-address=127.0.0.1:{port}"]
    with subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as exporter:
        try:
            exposed = scrape(f"http://127.0.0.1:{port}/metrics", time.monotonic() + 20)
        finally:
            exporter.terminate()
            exporter.wait(timeout=10)
    assert ('certbot_incapsula_in_sync{key_type="ECC",lineage="www.example.test",site_id="101"} 1'
            in exposed.splitlines())
    assert "node_textfile_scrape_error 0" in exposed.splitlines()

    # The alert rule, on a series with the labels of the file just written, scraped every
    # minute: expiry at day 20; 15 days left at day 5 (quiet), 13 at day 7 (firing for an hour).
    (site,) = [s for f in text_string_to_metric_families(written) for s in f.samples
               if s.name == "certbot_incapsula_certificate_expiry_timestamp_seconds"
               and s.labels["where"] == "site"]
    labels = ",".join(f'{k}="{v}"' for k, v in sorted(site.labels.items()))
    (tmp_path / "rules.yml").write_text(snippet("alert-rule"))
    expected = "\n".join(f"              {k}: {v}" for k, v in sorted(site.labels.items()))
    (tmp_path / "test.yml").write_text(f"""\
rule_files: [rules.yml]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'certbot_incapsula_certificate_expiry_timestamp_seconds{{{labels}}}'
        values: '{20 * 86400}x11000'
    alert_rule_test:
      - eval_time: 5d
        alertname: ImpervaCertificateExpiresSoon
        exp_alerts: []
      - eval_time: 7d
        alertname: ImpervaCertificateExpiresSoon
        exp_alerts:
          - exp_labels:
              severity: warning
{expected}
            exp_annotations:
              summary: "www.example.test on Imperva site 101 (site) expires within 14 days"
""")
    checked = subprocess.run([promtool, "test", "rules", "test.yml"], cwd=tmp_path, capture_output=True,
                             text=True, timeout=60, check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS" in checked.stdout + checked.stderr
