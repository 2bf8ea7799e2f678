"""End to end, issue 18: `status --nagios` and `--prometheus-file` on states made with real certbot,
pebble and the Imperva double (and its edge), read back with a parser of the monitoring-plugins
guidelines' grammar and with the Prometheus client's own text parser."""
from __future__ import annotations

import re
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from certmaker import make_chain
from cryptography import x509
from prometheus_client.parser import text_string_to_metric_families

NAMES = ["-d", "www.example.test", "-d", "example.test"]

# The monitoring-plugins guidelines: "TEXT | 'label'=value[UOM];[warn];[crit];[min];[max] ..."
STATUS_LINE = re.compile(r"INCAPSULA (OK|WARNING|CRITICAL|UNKNOWN) - ([^|]+?)(?: \| (.+))?")
NUMBER = r"-?\d+(?:\.\d+)?"
RANGE = rf"@?(?:~|{NUMBER})?:?(?:{NUMBER})?"
PERF_ITEM = (rf"(?:'(?P<quoted>[^'=]+)'|(?P<plain>[^'=\s]+))=(?P<value>{NUMBER})"
             rf"(?P<uom>s|ms|us|%|B|KB|MB|TB|c)?"
             rf"(?:;(?P<warn>{RANGE})(?:;(?P<crit>{RANGE})(?:;(?P<min>{NUMBER})?(?:;(?P<max>{NUMBER})?)?)?)?)?")
EXIT = {"OK": 0, "WARNING": 1, "CRITICAL": 2, "UNKNOWN": 3}


def parse_plugin_output(stdout: str) -> Tuple[str, str, Dict[str, Dict[str, Optional[str]]], List[str]]:
    """(state, summary, perfdata by label, the lines after the first); fails on any deviation."""
    first, *rest = stdout.rstrip("\n").split("\n")
    match = STATUS_LINE.fullmatch(first)
    assert match, f"not a plugin status line: {first!r}"
    state, summary, perf = match.groups()
    data: Dict[str, Dict[str, Optional[str]]] = {}
    if perf:
        item = _unnamed(PERF_ITEM)
        assert re.fullmatch(rf"(?:{item})(?: (?:{item}))*", perf), perf
        for item in re.finditer(PERF_ITEM, perf):
            fields = item.groupdict()
            data[fields.pop("quoted") or fields.pop("plain") or ""] = fields
    assert all("|" not in line for line in rest)
    return state, summary, data, rest


def _unnamed(pattern: str) -> str:
    return re.sub(r"\?P<\w+>", "?:", pattern)


def hook(runner, imperva, credentials) -> str:
    return " ".join([runner.executable("certbot-incapsula"), "deploy", "--credentials",
                     str(credentials), "--api-url", imperva.url, "--allow-staging", "--edge-wait", "0"])


def issue(runner, pebble, imperva, credentials) -> x509.Certificate:
    runner.run("certonly", "-a", "webroot", "-w", pebble.webroot, *NAMES,
               "--deploy-hook", hook(runner, imperva, credentials))
    return leaf(runner)


def leaf(runner) -> x509.Certificate:
    return x509.load_pem_x509_certificate((runner.live("www.example.test") / "cert.pem").read_bytes())


def not_after(cert: x509.Certificate) -> float:
    return cert.not_valid_after_utc.timestamp()


def nagios(runner, *extra: str):
    result = runner.incapsula("status", "--config-dir", str(runner.config_dir), "--nagios", *extra)
    assert "Traceback" not in result.stdout + result.stderr
    state, summary, perf, rest = parse_plugin_output(result.stdout)
    assert result.returncode == EXIT[state], result.stdout
    return state, summary, perf, rest


def test_nagios_each_exit_status_from_real_states(certbot_runner, pebble, imperva, credentials):
    cert = issue(certbot_runner, pebble, imperva, credentials)
    days = (not_after(cert) - time.time()) / 86400

    state, summary, perf, rest = nagios(certbot_runner)
    assert state == "OK" and rest == []
    assert summary.startswith("1 site(s) of 1 lineage(s) serve a valid certificate"), summary
    site = perf["www.example.test 101 site"]
    assert abs(float(site["value"] or 0) - days) < 0.05
    assert (site["warn"], site["crit"], site["uom"]) == ("21:", "7:", None)

    assert nagios(certbot_runner, "--site-id", "101")[2].keys() == perf.keys()  # the same site
    elsewhere = certbot_runner.incapsula("status", "--config-dir", str(certbot_runner.config_dir),
                                         "--nagios", "--site-id", "102")
    assert (elsewhere.returncode, elsewhere.stdout) == (3, (
        f"INCAPSULA UNKNOWN - no lineage in {certbot_runner.config_dir} is deployed through "
        "certbot-incapsula to site(s) 102\n"))

    # Expiring: thresholds above the days left (pebble's certificates live for years).
    above = str(int(days) + 10)
    state, summary, perf, rest = nagios(certbot_runner, "--warning", above)
    assert state == "WARNING" and perf["www.example.test 101 site"]["warn"] == f"{above}:"
    assert rest == [f"WARNING: www.example.test 101 site: certificate expires in "
                    f"{perf['www.example.test 101 site']['value']} days (outside range {above}:)"]
    state, *_ = nagios(certbot_runner, "--warning", str(int(days) + 20), "--critical", above)
    assert state == "CRITICAL"

    # Drifted: someone else's certificate on the site.
    other = make_chain(["www.example.test", "example.test"])
    imperva.console_upload(101, other.fullchain_pem, other.key_pem)
    state, summary, perf, rest = nagios(certbot_runner)
    assert state == "WARNING" and "www.example.test site 101 (www.example.test) DRIFTED" in summary
    assert rest == ["WARNING: www.example.test site 101 (www.example.test): DRIFTED: the site holds "
                    "another certificate"]
    # What the site serves now is what the thresholds read.
    other_days = (other.leaf.not_valid_after_utc.timestamp() - time.time()) / 86400
    assert abs(float(perf["www.example.test 101 site"]["value"] or 0) - other_days) < 0.05

    # Flagged: Imperva flags the upload (revoked) and the site keeps the flagged certificate.
    imperva.revoked = lambda _leaf: True
    flagged = certbot_runner.incapsula(
        "deploy", "--cert-name", "www.example.test", "--config-dir", str(certbot_runner.config_dir),
        "--credentials", str(credentials), "--api-url", imperva.url, "--allow-staging",
        "--edge-wait", "0")
    assert flagged.returncode == 1 and "revocationError" in flagged.stdout, flagged.stdout
    state, summary, _, rest = nagios(certbot_runner)
    assert state == "CRITICAL" and "FLAGGED" in summary
    assert rest[0].startswith("CRITICAL: www.example.test site 101 (www.example.test): FLAGGED: "), rest


def test_nagios_unknown_when_the_check_cannot_run(certbot_runner, pebble, imperva, credentials):
    issue(certbot_runner, pebble, imperva, credentials)
    bad = certbot_runner.incapsula("status", "--nagios", "--warning", "soon")
    assert bad.returncode == 3 and bad.stdout.startswith("INCAPSULA UNKNOWN - ")
    assert "--warning: 'soon' is not a whole number of days" in bad.stdout
    assert certbot_runner.incapsula("status", "--nagios", "--json").returncode == 3
    alone = certbot_runner.incapsula("status", "--warning", "30")
    assert (alone.returncode, alone.stderr) == (2, "certbot-incapsula: error: --warning and "
                                                   "--critical go with --nagios.\n")
    nothing = certbot_runner.incapsula("status", "--nagios", "--config-dir", str(certbot_runner.base_dir))
    assert (nothing.returncode, nothing.stdout) == (3, f"INCAPSULA UNKNOWN - no lineage in "
                                                       f"{certbot_runner.base_dir} is deployed through "
                                                       "certbot-incapsula\n")

    imperva.key_disabled = True  # Imperva creates new keys disabled
    state, summary, perf, rest = nagios(certbot_runner)
    assert state == "UNKNOWN" and perf == {}
    assert rest == ["UNKNOWN: www.example.test: ERROR: The API key exists but is disabled (Imperva "
                    "creates new API keys disabled): switch it on in Imperva's console, in the "
                    "account's list of API keys. (Imperva answered sites/list with res 9418: "
                    "Disabled API Key - the API key is disabled)"]
    imperva.key_disabled = False

    credentials.rename(credentials.with_name("moved.ini"))
    state, summary, _, rest = nagios(certbot_runner)
    assert state == "UNKNOWN" and "ERROR" in summary
    assert rest == [f"UNKNOWN: www.example.test: ERROR: The credentials file {credentials} does not "
                    "exist: create it (mode 0600) with incapsula_api_id = <API ID> and incapsula_api_key = "
                    "<API key>."], rest
    credentials.with_name("moved.ini").rename(credentials)

    imperva.stop()  # the API unreachable: the client retries, then says so
    state, summary, _, rest = nagios(certbot_runner)
    assert state == "UNKNOWN"
    assert "Imperva's API did not answer sites/list usefully" in rest[0], rest


# ----- Prometheus ---------------------------------------------------------------------------


def samples(path: Path) -> Dict[Tuple[str, Tuple[Tuple[str, str], ...]], float]:
    """Every sample of the file, by name and labels, read by the Prometheus client's parser."""
    found = {}
    for family in text_string_to_metric_families(path.read_text()):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def key(name: str, **labels: str) -> Tuple[str, Tuple[Tuple[str, str], ...]]:
    return name, tuple(sorted(labels.items()))


SITE = {"lineage": "www.example.test", "site_id": "101", "key_type": "ECC"}
EXPIRY = "certbot_incapsula_certificate_expiry_timestamp_seconds"


def test_metrics_file_matches_the_double_and_a_failed_run_keeps_what_it_could_not_read(
        certbot_runner, pebble, imperva, imperva_edge, credentials, tmp_path):
    cert = issue(certbot_runner, pebble, imperva, credentials)
    metrics = tmp_path / "node-exporter" / "certbot-incapsula.prom"
    metrics.parent.mkdir()
    config = ["--config-dir", str(certbot_runner.config_dir)]

    def status(*extra: str):
        return certbot_runner.incapsula("status", *config, "--prometheus-file", str(metrics), *extra)

    before = time.time()
    first = status("--edge-wait", "5")  # one handshake at the double's edge
    assert first.returncode == 0, first.stdout + first.stderr
    found = samples(metrics)
    held = imperva.held(101)
    assert found[key(EXPIRY, **SITE, where="site")] == held["expirationDate"] / 1000 == not_after(cert)
    assert found[key(EXPIRY, **SITE, where="edge")] == not_after(cert)
    assert found[key("certbot_incapsula_in_sync", **SITE)] == 1
    assert found[key("certbot_incapsula_site_state", **SITE, state="in sync")] == 1
    assert found[key("certbot_incapsula_last_run_success")] == 1
    assert before <= found[key("certbot_incapsula_last_run_timestamp_seconds")] <= time.time()
    assert metrics.stat().st_mode & 0o777 == 0o644  # node_exporter reads it as another user

    # Drift, repaired by sync, which writes what the site holds after the repair.
    other = make_chain(["www.example.test", "example.test"])
    imperva.console_upload(101, other.fullchain_pem, other.key_pem)
    drifted = status("--edge-wait", "0")
    assert drifted.returncode == 1
    assert samples(metrics)[key("certbot_incapsula_in_sync", **SITE)] == 0
    assert samples(metrics)[key(EXPIRY, **SITE, where="site")] == other.leaf.not_valid_after_utc.timestamp()
    synced = certbot_runner.incapsula("sync", *config, "--edge-wait", "0", "--prometheus-file",
                                      str(metrics))
    assert synced.returncode == 0, synced.stdout + synced.stderr
    assert samples(metrics)[key("certbot_incapsula_in_sync", **SITE)] == 1
    assert samples(metrics)[key(EXPIRY, **SITE, where="site")] == not_after(cert)

    # While runs happen, some failing, a reader never sees a partial file.
    seen: List[str] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            seen.append(metrics.read_text())

    reader = threading.Thread(target=sample)
    reader.start()
    try:
        for disabled in (False, True, False, True):
            imperva.key_disabled = disabled
            status("--edge-wait", "0")
    finally:
        stop.set()
        reader.join()
    assert len(seen) > 10
    for text in seen:
        assert text.endswith("\n") and "certbot_incapsula_last_run_success" in text
        list(text_string_to_metric_families(text))  # parses whole
    # The failed run (the key disabled): last_run_success 0; the expiry, a date that stays true
    # while the API cannot be read, is carried over so that its alert keeps firing.
    failed = samples(metrics)
    assert failed[key("certbot_incapsula_last_run_success")] == 0
    assert failed[key("certbot_incapsula_site_state", lineage="www.example.test", site_id="",
                      key_type="", state="error")] == 1
    assert failed[key(EXPIRY, **SITE, where="site")] == not_after(cert)
    assert failed[key("certbot_incapsula_in_sync", **SITE)] == 1
    assert not list(metrics.parent.glob("*.prom.*"))  # no temporary file left behind

    # The API down altogether: the client retries, gives up, and the file says so in full.
    imperva.key_disabled = False
    imperva.stop()
    down = status("--edge-wait", "0")
    assert down.returncode == 2 and "Imperva's API did not answer sites/list" in down.stdout
    after = samples(metrics)
    assert after[key("certbot_incapsula_last_run_success")] == 0
    assert after[key(EXPIRY, **SITE, where="site")] == not_after(cert)


def test_json_rows_carry_the_schema_and_the_expiry(certbot_runner, pebble, imperva, credentials):
    import json

    cert = issue(certbot_runner, pebble, imperva, credentials)
    view = certbot_runner.status("--json")
    (row,) = json.loads(view.stdout)
    assert row == {"schema": 1, "lineage": "www.example.test", "site": 101,
                   "domain": "www.example.test", "state": "in sync", "detail": row["detail"],
                   "known_wrong": False, "key_type": "ECC", "site_expires": not_after(cert),
                   "edge_expires": None}
