"""monitoring.py at unit level: each status state as a plugin state and an in_sync value, the
thresholds, the overall state, and what happens without the optional libraries. The rows are
the status view's; end-to-end runs are in test_e2e_monitoring.py."""
from __future__ import annotations

import subprocess
import sys

import pytest
from prometheus_client.parser import text_string_to_metric_families

from certbot_incapsula import monitoring

NOW = 1_800_000_000.0
DAY = 86400.0


def row(state: str, site: int | None = 101, **extra):
    return {"lineage": "www.example.test", "site": site, "domain": "www.example.test",
            "state": state, "detail": f"why {state}", "known_wrong": False, "key_type": "ECC",
            "site_expires": None, "edge_expires": None, **extra}


@pytest.mark.parametrize("state, level, in_sync", [
    ("in sync", monitoring.OK, 1),
    ("newer on site", monitoring.OK, 1),  # another host's newer, valid certificate (issue 17)
    ("held by other lineage", monitoring.OK, None),
    ("left alone", monitoring.OK, None),
    ("not verifiable", monitoring.OK, None),
    ("drifted", monitoring.WARNING, 0),
    ("rolled back", monitoring.WARNING, 0),
    ("flagged", monitoring.CRITICAL, 0),
    ("unreachable", monitoring.UNKNOWN, None),
    ("error", monitoring.UNKNOWN, None),
    ("a state from a later version", monitoring.UNKNOWN, None),
])
def test_each_state_maps_to_a_plugin_state_and_an_in_sync_value(state, level, in_sync):
    assert monitoring.state_level(row(state)) == level
    code, text = monitoring.nagios([row(state)], now=NOW)
    assert code == level and text.startswith(f"INCAPSULA {monitoring.WORDS[level]} - ")
    samples = {s.name: s.value for f in monitoring.families([row(state)], True, NOW) for s in f.samples}
    assert samples.get("certbot_incapsula_in_sync") == in_sync


def test_not_verifiable_with_something_known_wrong_is_a_warning():
    assert monitoring.state_level(row("not verifiable", known_wrong=True)) == monitoring.WARNING


@pytest.mark.parametrize("days, state", [(30, "OK"), (21.5, "OK"), (20, "WARNING"), (7.5, "WARNING"),
                                         (6, "CRITICAL"), (-1, "CRITICAL")])
def test_thresholds_on_what_the_site_serves(days, state):
    code, text = monitoring.nagios([row("in sync", site_expires=NOW + days * DAY)], 21, 7, now=NOW)
    assert text.split(" - ")[0] == f"INCAPSULA {state}" and monitoring.WORDS[code] == state
    assert f"'www.example.test 101 site'={days * 1.0:g}" in text.replace(".0;", ";")


def test_an_edge_serving_an_expired_certificate_is_critical_even_with_thresholds_at_zero():
    rows = [row("in sync", site_expires=NOW + 60 * DAY, edge_expires=NOW - DAY)]
    code, text = monitoring.nagios(rows, 0, 0, now=NOW)
    assert code == monitoring.CRITICAL
    assert "CRITICAL: www.example.test 101 edge: certificate expires in -1.0 days (expired)" in text


def test_a_newer_certificate_on_the_site_is_ok_and_its_expiry_counts():
    ok = monitoring.nagios([row("newer on site", site_expires=NOW + 80 * DAY)], now=NOW)
    assert ok[0] == monitoring.OK
    soon = monitoring.nagios([row("newer on site", site_expires=NOW + 3 * DAY)], now=NOW)
    assert soon[0] == monitoring.CRITICAL


def test_a_known_problem_outranks_an_unreadable_account():
    rows = [row("error", site=None), row("drifted", site=102)]
    code, text = monitoring.nagios(rows, now=NOW)
    assert code == monitoring.WARNING
    lines = text.splitlines()
    assert lines[1:] == ["WARNING: www.example.test site 102 (www.example.test): DRIFTED: why drifted",
                         "UNKNOWN: www.example.test: ERROR: why error"]


def test_a_pipe_in_a_detail_does_not_cut_the_status_line():
    _, text = monitoring.nagios([row("drifted", detail="a | b")], now=NOW)
    assert text.splitlines()[1].endswith("DRIFTED: a / b") and text.count("|") == 0


def test_json_rows_lead_with_the_schema():
    assert monitoring.json_rows([row("in sync")])[0] == {"schema": monitoring.SCHEMA, **row("in sync")}


def test_carried_samples_only_for_what_could_not_be_read():
    before = [row("in sync", site_expires=NOW + DAY), row("in sync", site=102, site_expires=NOW + 2 * DAY)]
    from prometheus_client import CollectorRegistry, generate_latest

    class Run:
        def __init__(self, made):
            self.made = made

        def collect(self):
            return self.made

    def text(rows, success, previous=None):
        registry = CollectorRegistry(auto_describe=False)
        registry.register(Run(monitoring.families(rows, success, NOW, previous)))
        return generate_latest(registry).decode()

    first = text(before, True)
    after = text([row("unreachable"), row("drifted", site=102, site_expires=NOW + 3 * DAY)], False, first)
    values = {(s.name, s.labels.get("site_id"), s.labels.get("where")): s.value
              for f in text_string_to_metric_families(after) for s in f.samples}
    assert values[(monitoring.EXPIRY, "101", "site")] == NOW + DAY  # carried: 101 was not read
    assert values[(monitoring.IN_SYNC_METRIC, "101", None)] == 1
    assert values[(monitoring.EXPIRY, "102", "site")] == NOW + 3 * DAY  # read: this run's value
    assert values[(monitoring.IN_SYNC_METRIC, "102", None)] == 0
    assert values[(monitoring.LAST_SUCCESS, None, None)] == 0


@pytest.mark.parametrize("module, flag, args", [
    ("nagiosplugin", "--nagios", ["status", "--nagios"]),
    ("prometheus_client", "--prometheus-file", ["status", "--prometheus-file", "/nonexistent/x.prom"]),
])
def test_without_the_monitoring_extra_the_flags_say_how_to_install_it(tmp_path, module, flag, args):
    script = (f"import sys; sys.modules[{module!r}] = None; from certbot_incapsula.cli import main; "
              f"sys.exit(main({[*args, '--config-dir', str(tmp_path)]!r}))")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    sentence = (f"{flag} needs the Python package {module}, which is not installed: "
                "pip install 'certbot-incapsula[monitoring]'")
    if flag == "--nagios":
        assert (result.returncode, result.stdout) == (3, f"INCAPSULA UNKNOWN - {sentence}\n")
    else:
        assert result.returncode == 2 and result.stderr == f"certbot-incapsula: error: {sentence}\n"
