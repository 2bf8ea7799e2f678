"""Monitoring: the status view's rows as a monitoring-plugin result (Nagios, Icinga, Naemon,
Sensu, Zabbix's external checks) and as Prometheus metrics for node_exporter's textfile collector.

Knows nothing of argv or of Imperva's API: it reads the rows `status` builds (one per lineage and
site; dicts with the fields of deployment.StatusRow) and uses two optional libraries,
`nagiosplugin` (thresholds, performance data, states) and `prometheus_client` (the text format,
written atomically), installed by the `certbot-incapsula[monitoring]` extra.
"""
from __future__ import annotations

import os
import time
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Set, Tuple

SCHEMA = 1  # of `status --json`'s rows: raised when a field changes meaning or goes away
INSTALL = "pip install 'certbot-incapsula[monitoring]'"
NAME = "INCAPSULA"  # the first word of the plugin's status line
WARNING_DAYS, CRITICAL_DAYS = 21, 7  # certbot renews 30 days before expiry

# Status states, as status rows spell them (slots.NEWER_ON_SITE is "newer on site").
NEWER_ON_SITE = "newer on site"
OK_STATES = frozenset({"in sync", NEWER_ON_SITE, "held by other lineage", "left alone"})
WARNING_STATES = frozenset({"drifted", "rolled back"})
CRITICAL_STATES = frozenset({"flagged"})
UNKNOWN_STATES = frozenset({"unreachable", "error"})
# in_sync: 1 where the site serves a valid certificate this lineage accepts (its own, or a newer
# one from another host); 0 where it is known not to; no sample where it is not known or not
# this lineage's slot (not verifiable, held by another lineage, left alone, unreadable).
IN_SYNC = {"in sync": 1, NEWER_ON_SITE: 1, "drifted": 0, "flagged": 0, "rolled back": 0}

OK, WARNING, CRITICAL, UNKNOWN = 0, 1, 2, 3
WORDS = {OK: "OK", WARNING: "WARNING", CRITICAL: "CRITICAL", UNKNOWN: "UNKNOWN"}
# The overall state, as the monitoring-plugins' max_state_alt: a known CRITICAL or WARNING
# outranks UNKNOWN, so one unreadable account does not hide another's expiring certificate.
RANK = {OK: 0, UNKNOWN: 1, WARNING: 2, CRITICAL: 3}

PREFIX = "certbot_incapsula_"
EXPIRY = PREFIX + "certificate_expiry_timestamp_seconds"
IN_SYNC_METRIC = PREFIX + "in_sync"
STATE_METRIC = PREFIX + "site_state"
LAST_RUN = PREFIX + "last_run_timestamp_seconds"
LAST_SUCCESS = PREFIX + "last_run_success"
SITE_LABELS = ["lineage", "site_id", "key_type"]
CARRIED = (EXPIRY, IN_SYNC_METRIC)  # kept from the previous file for what a run could not read


class MissingLibrary(Exception):
    """An optional library is not installed; str() is the one line that says how to install it."""


def missing(flag: str, module: str) -> Optional[str]:
    """None if `module` can be imported; else the sentence for `flag`'s user."""
    try:
        __import__(module)
    except ImportError:
        return f"{flag} needs the Python package {module}, which is not installed: {INSTALL}"
    return None


def json_rows(rows: Iterable[Mapping[str, Any]]) -> List[Dict[str, Any]]:
    """`status --json`: each row with its schema number first."""
    return [{"schema": SCHEMA, **row} for row in rows]


def _label(row: Mapping[str, Any]) -> str:
    if row.get("site") is None:
        return str(row["lineage"])
    domain = f" ({row['domain']})" if row.get("domain") else ""
    return f"{row['lineage']} site {row['site']}{domain}"


def state_level(row: Mapping[str, Any]) -> int:
    """The row's state as a plugin state, expiry aside."""
    state = row.get("state")
    if state in CRITICAL_STATES:
        return CRITICAL
    if state in WARNING_STATES or (state == "not verifiable" and row.get("known_wrong")):
        return WARNING
    if state in UNKNOWN_STATES:
        return UNKNOWN
    if state in OK_STATES or state == "not verifiable":
        return OK
    return UNKNOWN  # a state this version does not know: say so rather than guess


def days_left(expires: Any, now: float) -> Optional[float]:
    try:
        return round((float(expires) - now) / 86400, 2)
    except (TypeError, ValueError):
        return None


# ----- the monitoring plugin ------------------------------------------------------------------


def not_ready(prometheus_file: Optional[str]) -> Optional[str]:
    """Why `--nagios` (with `--prometheus-file`) cannot run here, if it cannot."""
    return missing("--nagios", "nagiosplugin") or (
        missing("--prometheus-file", "prometheus_client") if prometheus_file else None)


def plugin(rows: Sequence[Mapping[str, Any]], warning: Optional[int], critical: Optional[int],
           prometheus_file: Optional[str], empty: str) -> Tuple[int, str]:
    """`status --nagios`: (exit status, output), and the metrics file if asked for. No rows:
    UNKNOWN, saying `empty`."""
    if not rows:
        return UNKNOWN, f"{NAME} UNKNOWN - {_clean(empty)}\n"
    try:
        code, text = nagios(rows, WARNING_DAYS if warning is None else warning,
                            CRITICAL_DAYS if critical is None else critical)
    except Exception as exc:  # a monitor reads a traceback's exit 1 as WARNING: say UNKNOWN
        return UNKNOWN, f"{NAME} UNKNOWN - the check failed: unexpected {type(exc).__name__}\n"
    why = write_prometheus(prometheus_file, rows, True) if prometheus_file else None
    if why:
        text += f"UNKNOWN: {why}\n"
        code = code if code in (WARNING, CRITICAL) else UNKNOWN
    return code, text


def nagios(rows: Sequence[Mapping[str, Any]], warning: int = WARNING_DAYS,
           critical: int = CRITICAL_DAYS, now: Optional[float] = None) -> Tuple[int, str]:
    """(exit status, output): the status line `INCAPSULA STATE - summary | perfdata`, then one
    line per problem. Thresholds are days left of what each site (and edge) serves."""
    try:
        import nagiosplugin as np
    except ImportError:
        return UNKNOWN, f"{NAME} UNKNOWN - {missing('--nagios', 'nagiosplugin')}\n"
    clock: float = time.time() if now is None else now

    class Sites(np.Resource):  # type: ignore[misc]
        def probe(self) -> Iterable[Any]:
            for row in rows:
                label = _label(row)
                yield np.Metric(label, row, context="state")
                for where in ("site", "edge"):
                    days = days_left(row.get(f"{where}_expires"), clock)
                    if days is not None:
                        name = f"{row['lineage']} {row['site']} {where}".replace("'", "_")
                        yield np.Metric(name.replace("=", "_"), days, context="days")

    class State(np.Context):  # type: ignore[misc]
        def evaluate(self, metric: Any, resource: Any) -> Any:
            row = metric.value
            level = state_level(row)
            detail = " ".join(str(row.get("detail") or "").split())
            return np.Result(_STATES[level], f"{str(row.get('state')).upper()}: {detail}", metric)

        def describe(self, metric: Any) -> str:
            return _label(metric.value)

    class Days(np.ScalarContext):  # type: ignore[misc]
        def evaluate(self, metric: Any, resource: Any) -> Any:
            if metric.value <= 0:  # expired: CRITICAL whatever the thresholds say
                return np.Result(np.Critical, "expired", metric)
            return super().evaluate(metric, resource)

        def describe(self, metric: Any) -> str:
            return f"{metric.name}: certificate expires in {metric.value} days"

    _STATES = {OK: np.Ok, WARNING: np.Warn, CRITICAL: np.Critical, UNKNOWN: np.Unknown}
    # "N:" is the guidelines' range for "alert below N".
    check = np.Check(Sites(), State("state"), Days("days", f"{warning}:", f"{critical}:"), name=NAME)
    check()
    problems = sorted((r for r in check.results if int(r.state) != OK),  # worst first
                      key=lambda r: -RANK[int(r.state)])
    worst = max((int(r.state) for r in check.results), key=RANK.__getitem__, default=UNKNOWN)
    lineages = {row["lineage"] for row in rows}
    sites = [row for row in rows if row.get("site") is not None]
    if not problems:
        soonest = [d for d in (days_left(r.get("site_expires"), clock) for r in rows) if d is not None]
        summary = (f"{len(sites)} site(s) of {len(lineages)} lineage(s) serve a valid certificate"
                   + (f"; the first expires in {min(soonest)} days" if soonest else ""))
    else:
        shown = [_short(r) for r in problems]
        summary = (f"{len(problems)} problem(s) in {len(sites)} site(s) of {len(lineages)} "
                   f"lineage(s): " + "; ".join(shown[:3]) + ("; ..." if len(shown) > 3 else ""))
    # Performance data in the guidelines' format, from the library ('label'=value;warn;crit).
    perfdata = " ".join(str(p) for p in check.perfdata)
    status = f"{NAME} {WORDS[worst]} - {_clean(summary)}" + (f" | {perfdata}" if perfdata else "")
    lines = [status] + [f"{WORDS[int(r.state)]}: {_clean(_long(r))}" for r in problems]
    return worst, "\n".join(lines) + "\n"


def _long(result: Any) -> str:
    """A problem's line: the site and its state's detail, or the expiry and the threshold."""
    if isinstance(result.metric.value, Mapping):
        return f"{_label(result.metric.value)}: {result.hint}"
    return str(result)


def _short(result: Any) -> str:
    """A problem in a few words: which site and what."""
    if result.metric is not None and isinstance(result.metric.value, Mapping):
        row = result.metric.value
        return f"{_label(row)} {str(row.get('state')).upper()}"
    return f"{result.metric.name} expires in {result.metric.value} days"


def _clean(text: str) -> str:
    """No '|' outside the perfdata separator: Nagios would cut the line there."""
    return " ".join(text.replace("|", "/").split())


# ----- Prometheus ---------------------------------------------------------------------------


def families(rows: Sequence[Mapping[str, Any]], success: bool, now: float,
             previous: Optional[str] = None) -> List[Any]:
    """The metric families of one run. `previous` (the last file's text): on a run that could
    not read a lineage or site, its expiry and in_sync samples are carried over from there."""
    from prometheus_client.core import GaugeMetricFamily

    expiry = GaugeMetricFamily(EXPIRY, "When the certificate served expires (Unix time), by "
                               "where: the site as Imperva's API shows it, or its edge",
                               labels=[*SITE_LABELS, "where"])
    in_sync = GaugeMetricFamily(IN_SYNC_METRIC, "1 if the site serves a valid certificate this "
                                "lineage accepts, 0 if it does not", labels=SITE_LABELS)
    state = GaugeMetricFamily(STATE_METRIC, "1 for the state of each lineage and site in the "
                              "status view", labels=[*SITE_LABELS, "state"])
    made: Set[Tuple[str, Tuple[str, ...]]] = set()
    for row in rows:
        labels = [str(row["lineage"]), str(row.get("site") or ""), str(row.get("key_type") or "")]
        state.add_metric([*labels, str(row.get("state"))], 1)
        if row.get("state") in IN_SYNC:
            in_sync.add_metric(labels, IN_SYNC[str(row["state"])])
            made.add((IN_SYNC_METRIC, tuple(labels)))
        for where in ("site", "edge"):
            if row.get(f"{where}_expires") is not None:
                expiry.add_metric([*labels, where], float(row[f"{where}_expires"]))
                made.add((EXPIRY, (*labels, where)))
    if previous:
        _carry(rows, previous, made, {EXPIRY: expiry, IN_SYNC_METRIC: in_sync})
    last = GaugeMetricFamily(LAST_RUN, "When certbot-incapsula last ran status or sync (Unix time)",
                             value=now)
    ok = GaugeMetricFamily(LAST_SUCCESS, "1 if the last run could read every lineage and site",
                           value=1 if success else 0)
    return [expiry, in_sync, state, last, ok]


def _carry(rows: Sequence[Mapping[str, Any]], previous: str,
           made: Set[Tuple[str, Tuple[str, ...]]], into: Mapping[str, Any]) -> None:
    """Samples of the lineages (error rows) and sites (unreachable rows) this run could not read.
    An expiry is a date: it stays true while the API is down, and its alert keeps firing."""
    from prometheus_client.parser import text_string_to_metric_families

    lost_lineages = {str(r["lineage"]) for r in rows if r.get("state") == "error"}
    lost_sites = {(str(r["lineage"]), str(r.get("site"))) for r in rows
                  if r.get("state") == "unreachable"}
    try:
        old = list(text_string_to_metric_families(previous))
    except Exception:  # a damaged file has nothing worth carrying
        return
    for family in old:
        for sample in family.samples:
            if sample.name not in into:
                continue
            labels = sample.labels
            lineage, site = labels.get("lineage", ""), labels.get("site_id", "")
            if lineage not in lost_lineages and (lineage, site) not in lost_sites:
                continue
            names = SITE_LABELS + (["where"] if sample.name == EXPIRY else [])
            values = tuple(labels.get(name, "") for name in names)
            if (sample.name, values) not in made:
                made.add((sample.name, values))
                into[sample.name].add_metric(list(values), sample.value)


def write_prometheus(path: str, rows: Sequence[Mapping[str, Any]], ran: bool,
                     now: Optional[float] = None) -> Optional[str]:
    """Writes the textfile (a temporary file in the same directory, then a rename: node_exporter
    never reads half a file). `ran`: the command could do its work; last_run_success is 1 when
    it could and every lineage and site was read. None when written; else why not, in a line."""
    success = ran and not any(row.get("state") in UNKNOWN_STATES for row in rows)
    try:
        from prometheus_client import CollectorRegistry, write_to_textfile
    except ImportError:
        return missing("--prometheus-file", "prometheus_client")
    now = time.time() if now is None else now
    try:
        with open(path, encoding="utf-8") as old:
            previous: Optional[str] = old.read()
    except (OSError, UnicodeDecodeError):
        previous = None
    made = families(rows, success, now, None if success else previous)

    class Run:
        def collect(self) -> List[Any]:
            return made

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Run())  # type: ignore[arg-type]
    # node_exporter runs as another user: the file is readable by all whatever the umask (the
    # systemd unit's is 0077). Metrics hold no secret.
    mask = os.umask(0o022)
    try:
        write_to_textfile(path, registry)
    except OSError as exc:
        return (f"cannot write the metrics file {path} ({exc.strerror or exc}): create its "
                "directory, or make it writable by this user (the systemd unit: ReadWritePaths=).")
    finally:
        os.umask(mask)
    return None
