"""Issue 12 in the flow: the pre-flight of the challenge path before the CA is asked, and the
certificate each site's Imperva edge serves after an upload, in `sync` and in `status`.

Builds on edge.py (the probe and the handshakes) with what the core knows: the account's sites
and their `dns` entries, the certificate, and the records of the other lineages. `Deployment`
calls it; the doors turn its results into their messages. Knows nothing of certbot or argv.
"""
from __future__ import annotations

import contextlib
import dataclasses
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Mapping, Optional, Sequence, Set, Tuple, TypeVar

from certbot_incapsula import certificate, edge
from certbot_incapsula.held import is_fingerprint, site_domains

if TYPE_CHECKING:
    from certbot_incapsula.certificate import LocalCertificate
    from certbot_incapsula.records import Records
    from certbot_incapsula.sites import SiteTarget

PROBE_TIMEOUT = 10.0  # about as long as a CA waits for the challenge file
LOOK_TIMEOUT = 5.0  # status and sync: one handshake per key type, never a wait
WORKERS = 10  # probes and handshakes at once: N sites must not cost N times the wait
ATTEMPTS = 3  # fetches per name, at once: a balancer spreads them over its origin servers
T = TypeVar("T")
R = TypeVar("R")

# Look.state
SERVES, OTHER, UNREACHABLE, UNKNOWN = "serves", "other", "unreachable", "unknown"


WAIT_WORKERS = 100  # sites waited for at once: each mostly sleeps between handshakes


def _each(fn: Callable[[T], R], items: Sequence[T], workers: int = WORKERS) -> List[R]:
    if len(items) <= 1:
        return [fn(item) for item in items]
    with ThreadPoolExecutor(max_workers=min(workers, len(items))) as pool:
        return list(pool.map(fn, items))


# ----- before the CA is asked ------------------------------------------------------------------


@dataclass
class Preflight:
    passed: List[str] = field(default_factory=list)  # one line per name whose path is open
    failures: List[str] = field(default_factory=list)  # one per failing name: what answered, the fix
    notes: List[str] = field(default_factory=list)  # what was not probed and why, each said once
    unreadable: Optional[str] = None  # the account's sites could not be read: nothing was probed
    # One line per site whose edge this host could not reach: what was tried; the CA decides.
    unchecked: List[str] = field(default_factory=list)


def serving_site(name: str, items: Sequence[Mapping[str, Any]]) -> Optional[Mapping[str, Any]]:
    """The site whose DNS instructions (or domain, or display name) name `name`; for a bare
    name, the site of its www. name, which Imperva serves for both. The lowest id on a tie."""
    key = name.lower().rstrip(".")
    for wanted in (key, "www." + key):
        found = [item for item in items
                 if wanted in site_domains(item)
                 or wanted == str(item.get("display_name") or "").strip().lower().rstrip(".")]
        if found:
            return min(found, key=lambda item: int(item.get("site_id") or 0))
    return None


def remembered_sites(records: Records, names: Sequence[str]) -> Optional[List[int]]:
    """The site ids the records remember for `names` (discovery by any lineage of this config
    dir), when every name that can be probed is among them; else None (a listing is needed).
    A due renewal's pre-flight then costs one sites/status per site, not the account's listing."""
    found: Dict[str, List[int]] = {}
    for lineage in records.lineage_names():
        cache = records.lineage(lineage).get("sites")
        for target in (cache.get("targets") if isinstance(cache, dict) else None) or []:
            if isinstance(target, dict) and not target.get("wildcard"):
                for name in target.get("names") or []:
                    found.setdefault(str(name).lower(), []).append(int(target["site_id"]))
    wanted = [name.lower().rstrip(".") for name in names if not name.startswith("*.")]
    if not wanted or any(name not in found for name in wanted):
        return None
    return sorted({site_id for name in wanted for site_id in found[name]})


def _not_checked(label: str, names: Sequence[str], why: str) -> str:
    return (f"{label}: not checked for {', '.join(names)}: {why}; the CA, which reaches Imperva "
            "from the internet, will decide")


def _several_origins(results: List[edge.ProbeResult], jobs: Sequence[Tuple[str, str, str, str]]
                     ) -> List[edge.ProbeResult]:
    """Across the names of one site and webroot (the same origin servers, the same directory):
    fetches that carried the file next to fetches that were the origin's 404 mean several
    origin servers, even when each name alone happened to land on one server only."""
    groups: Dict[Tuple[str, str], List[int]] = {}
    for index, (_, _, webroot, label) in enumerate(jobs):
        groups.setdefault((label, webroot), []).append(index)
    results = list(results)
    for (label, webroot), members in groups.items():
        tries = [one for i in members for one in (results[i].tries or (results[i],))]
        carried = sum(1 for one in tries if one.ok)
        missing = sum(1 for one in tries if one.outcome == edge.ORIGIN_404)
        if not (carried and missing):
            continue
        for i in members:
            if results[i].outcome in (edge.OK, edge.ORIGIN_404, edge.SEVERAL_ORIGINS):
                where = f"Imperva's edge {results[i].address}"
                text = edge.several_origins_text(carried, missing, where, webroot, label)
                results[i] = dataclasses.replace(results[i], outcome=edge.SEVERAL_ORIGINS,
                                                 message=f"{results[i].name}: {text}")
    return results


def preflight(names: Sequence[str], webroots: Mapping[str, str],
              items: Sequence[Mapping[str, Any]], *, timeout: float = PROBE_TIMEOUT,
              attempts: int = ATTEMPTS) -> Preflight:
    """Fetches a probe file of each name's webroot through its site's edge, as the CA would,
    `attempts` times per name, all names at once, each fetch within `timeout`. `webroots`: name ->
    the webroot certbot will write its challenge to; `items`: the sites (sites/list items or
    sites/status answers). edge.py removes each probe. Only an answer from the edge is a
    failure: where this host cannot reach the edge, `unchecked` says so and the CA decides."""
    result = Preflight()
    unserved: List[str] = []
    no_webroot: List[str] = []
    no_target: List[str] = []
    unreached: Dict[str, Tuple[List[str], str]] = {}  # site label -> (names, why)
    jobs: List[Tuple[str, str, str, str]] = []  # name, edge address, webroot, site label
    wanted: List[Tuple[str, Mapping[str, Any], str, str]] = []  # name, site, webroot, label
    for name in dict.fromkeys(names):
        site = serving_site(name, items) if not name.startswith("*.") else None
        if site is None:
            unserved.append(name)
            continue
        webroot = webroots.get(name)
        if not webroot:
            no_webroot.append(name)
            continue
        wanted.append((name, site, webroot, f"site {site.get('site_id')}"))

    def where(one: Tuple[str, Mapping[str, Any], str, str]) -> Any:
        try:  # a CNAME target is looked up: all at once, so a slow DNS costs one wait, not N
            return edge.edge_addresses(one[1], one[0])
        except edge.EdgeError as exc:  # its DNS target does not resolve from here
            return exc

    for (name, _, webroot, label), addresses in zip(wanted, _each(where, wanted)):
        if isinstance(addresses, edge.EdgeError):
            unreached.setdefault(label, ([], str(addresses)))[0].append(name)
        elif not addresses:
            no_target.append(f"{name} ({label})")
        else:
            jobs.append((name, addresses[0], webroot, label))

    def probe(job: Tuple[str, str, str, str]) -> edge.ProbeResult:
        name, address, webroot, label = job
        return edge.probe_challenge_path(name, address, webroot, timeout=timeout, site=label,
                                         attempts=attempts)

    with contextlib.ExitStack() as shared:
        # Made once per webroot for the probes running at once: a probe that made the directory
        # would otherwise try to remove it while another's file is still in it, and leave it.
        for webroot in dict.fromkeys(job[2] for job in jobs):
            try:
                shared.enter_context(edge.challenge_directory(webroot))
            except OSError:
                pass  # each probe of this webroot says what is wrong with it
        probed_all = _several_origins(_each(probe, jobs), jobs)
    reported: Set[Tuple[str, str]] = set()
    for probed, job in zip(probed_all, jobs):
        if not probed.checked:
            unreached.setdefault(job[3], ([], probed.text))[0].append(probed.name)
        elif probed.outcome == edge.SEVERAL_ORIGINS:
            # Said once per site and webroot, naming its names: the fix is the same for all.
            group = [other.name for other, its in zip(probed_all, jobs)
                     if other.outcome == edge.SEVERAL_ORIGINS and its[2:] == job[2:]]
            if (job[2], job[3]) not in reported:
                reported.add((job[2], job[3]))
                result.failures.append(f"{', '.join(group)}: {probed.text}")
        else:
            (result.passed if probed.ok else result.failures).append(probed.message)
    for label, (unreached_names, why) in unreached.items():
        result.unchecked.append(_not_checked(label, unreached_names, why))
    if unserved:
        result.notes.append("not probed, as no Imperva site serves them: " + ", ".join(unserved))
    if no_webroot:
        result.notes.append("not probed, as no webroot is given for them: " + ", ".join(no_webroot))
    if no_target:
        result.notes.append("not probed, as Imperva shows no DNS target for them: "
                            + ", ".join(no_target))
    return result


# ----- what the edge serves ----------------------------------------------------------------------


@dataclass(frozen=True)
class Expectation:
    """What one site's edge should serve to clients of one key type."""

    label: str  # "site 101 (www.example.com)"
    name: str  # the SNI name: the site's domain
    status: Mapping[str, Any]  # the site's sites/status answer or sites/list item (its `dns`)
    key_type: str  # "ECC" or "RSA"
    fingerprint: str  # SHA-1, as certificate.py and the records write it
    serial: str  # hex, for the messages
    whose: str = ""  # another lineage's name, when the site holds its certificate for this key type


@dataclass(frozen=True)
class Look:
    state: str  # SERVES, OTHER, UNREACHABLE, UNKNOWN
    text: str  # what the edge serves, or why it could not be seen
    expires: Optional[float] = None  # SERVES, OTHER: the served leaf's notAfter (Unix time)


def own(target: SiteTarget, status: Mapping[str, Any], cert: LocalCertificate) -> Expectation:
    name = target.domain or (target.names[0] if target.names else "")
    return Expectation(target.label(), name, status, cert.key_type, cert.sha1_fingerprint,
                       cert.serial_hex)


def others_on_site(records: Records, lineage: str, site_id: int,
                   key_type: str) -> Dict[str, Tuple[str, str, str]]:
    """Per other key type: (lineage, fingerprint, serial) of the certificate that another of
    this config dir's lineages deployed to the site last, by the records."""
    newest: Dict[str, Tuple[str, str, str, str]] = {}  # key type -> (time, lineage, fp, serial)
    for other in records.lineage_names():
        if other == lineage:
            continue
        for entry in records.history(other):
            kind = entry.get("auth_type")
            fingerprint = entry.get("fingerprint")
            if (entry.get("site_id") != site_id or entry.get("outcome") != "ok" or kind == key_type
                    or kind not in edge.KEY_TYPES or not fingerprint):
                continue
            when = str(entry.get("time") or "")
            if kind not in newest or when >= newest[kind][0]:
                newest[kind] = (when, other, str(fingerprint), str(entry.get("serial") or "?"))
    return {kind: (name, fp, serial) for kind, (_, name, fp, serial) in newest.items()}


def expectations(target: SiteTarget, status: Mapping[str, Any], cert: LocalCertificate,
                 lineage: str, records: Records) -> List[Expectation]:
    """The uploaded certificate for its key type, and another lineage's for the other one."""
    mine = own(target, status, cert)
    found = [mine]
    for kind, (other, fingerprint, serial) in sorted(
            others_on_site(records, lineage, target.site_id, cert.key_type).items()):
        found.append(Expectation(mine.label, mine.name, status, kind, fingerprint, serial, other))
    return found


def _address(expected: Expectation) -> Tuple[Optional[str], str]:
    """(the edge's address, "") or (None, why there is none)."""
    try:
        addresses = edge.edge_addresses(expected.status, expected.name)
    except edge.EdgeError as exc:
        return None, str(exc)
    if not addresses:
        return None, "Imperva shows no DNS target for the site"
    return addresses[0], ""


def _what(expected: Expectation) -> str:
    return f"{expected.whose}'s certificate" if expected.whose else "it"


def look(expected: Expectation, *, timeout: float = LOOK_TIMEOUT) -> Look:
    """One handshake, no wait: what the edge serves to `expected.key_type` clients now."""
    address, why = _address(expected)
    if address is None:
        return Look(UNKNOWN, f"edge not checked: {why}")
    try:
        served = edge.served_certificate(expected.name, address, expected.key_type, timeout=timeout)
    except edge.EdgeError as exc:
        if exc.kind == "unparsable":
            return Look(UNKNOWN, f"edge not checked: {exc}")
        return Look(UNREACHABLE, f"edge not reachable: {exc}")
    kind = expected.key_type
    if not is_fingerprint(expected.fingerprint):  # the records are a cache: never trusted
        return Look(UNKNOWN, f"edge not checked: the records hold no usable fingerprint for "
                             f"{_what(expected)}")
    expires = certificate._utc(served, "not_valid_after").timestamp()
    if edge.matches(served, expected.fingerprint):
        return Look(SERVES, f"Imperva's edge {address} serves {_what(expected)} to {kind} clients",
                    expires)
    return Look(OTHER, f"Imperva's edge {address} serves {edge.describe(served)} to {kind} clients",
                expires)


def look_all(expected: Sequence[Expectation], *, timeout: float = LOOK_TIMEOUT) -> List[Look]:
    return _each(lambda one: look(one, timeout=timeout), expected)


def _after_upload(expected: Expectation, wait_seconds: int,
                  deadline: float) -> Tuple[Optional[str], Optional[str]]:
    """(report line, warning) for one site and key type; done by `deadline` (monotonic)."""
    head = f"Imperva {expected.label}: "
    if expected.whose:  # not changed by this upload: one handshake, no wait
        seen = look(expected, timeout=min(LOOK_TIMEOUT, max(deadline - time.monotonic(), 1.0)))
        if seen.state == SERVES:
            return head + seen.text, None
        if seen.state == OTHER:
            return None, (f"{head}{seen.text}, not {expected.whose}'s (serial {expected.serial}), "
                          "which the records say the site holds")
        return None, head + seen.text
    address, why = _address(expected)
    if address is None:
        return None, f"{head}edge not checked: {why}"
    kind = expected.key_type
    result = edge.wait_for_edge(expected.name, address, kind, expected.fingerprint, wait_seconds,
                                deadline=deadline)
    if result.outcome == edge.SERVES:
        return (f"{head}Imperva's edge {address} serves it to {kind} clients "
                f"(after {result.elapsed:.0f} s)"), None
    if result.outcome == edge.STALE and result.served is not None:
        return None, (f"{head}Imperva's edge {address} still serves {edge.describe(result.served)} "
                      f"to {kind} clients after {result.elapsed:.0f} s (Imperva may still be "
                      "propagating)")
    if result.outcome == edge.STALE:
        return None, (f"{head}Imperva's edge {address} still serves no usable {kind} certificate "
                      f"after {result.elapsed:.0f} s ({result.error}; Imperva may still be "
                      "propagating)")
    return None, f"{head}edge not reachable for {kind} clients: {result.error}"


def after_upload(expected: Sequence[Expectation], wait_seconds: int) -> Tuple[List[str], List[str]]:
    """(report lines, warnings): every site and key type waited for at once, until one
    deadline `wait_seconds` from now, however many sites; never a failure (propagation is
    Imperva's)."""
    lines: List[str] = []
    warnings: List[str] = []
    if wait_seconds <= 0:
        return lines, warnings
    deadline = time.monotonic() + wait_seconds
    for line, warning in _each(lambda one: _after_upload(one, wait_seconds, deadline), expected,
                               WAIT_WORKERS):
        if line:
            lines.append(line)
        if warning:
            warnings.append(warning)
    return lines, warnings
