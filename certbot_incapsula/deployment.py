"""The core: deploys one certificate to its Imperva sites, keeps them in sync, checks, rolls back,
and tells what each site holds. Knows nothing of certbot or of argv.

Both doors (the certbot installer and the `certbot-incapsula` command) call `Deployment` with a
lineage's files and settings and turn the `Report` it returns into their caller's conventions.
A `Refusal` is raised before anything was sent to Imperva; everything after that is a `Report`.
"""
from __future__ import annotations

import logging
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Mapping, Optional, Sequence, Set, Tuple, TypeVar

from certbot_incapsula import certificate, report, sites, slots
from certbot_incapsula.api import ImpervaClient, ImpervaError
from certbot_incapsula.certificate import LocalCertificate
from certbot_incapsula.context import PROCESS, Context, Listing
from certbot_incapsula.records import Records
from certbot_incapsula.settings import Settings

if TYPE_CHECKING:
    from certbot_incapsula import edge_checks  # imports this module: loaded when first needed

logger = logging.getLogger(__name__)

# As many calls in flight as the account may make in a second: the client's rate limiter, not the
# pool, sets the pace (4 workers capped a fleet at 4 / latency calls a second).
WORKERS = 10
T = TypeVar("T")
R = TypeVar("R")
NOTHING_UPLOADED = "Nothing was uploaded."


class Refusal(Exception):
    """Refused before anything was sent to Imperva; str() is the sentence for the user."""


@dataclass(frozen=True)
class LineageFiles:
    """Where a lineage's certificate is: certbot's live/NAME links, lego's files, or any pair."""

    name: str
    fullchain: str
    key: str
    acme_server: str = ""  # the CA's directory URL when known (a staging URL is refused)

    @property
    def version(self) -> Optional[int]:
        """certbot's archive version (archive/NAME/fullchainN.pem), if the file is one."""
        return _version_of(self.fullchain)


@dataclass
class SiteOutcome:
    target: sites.SiteTarget
    action: str  # uploaded, repaired, in sync, reachable, failed
    details: Optional[Dict[str, Any]] = None  # the flags Imperva answered or holds
    error: Optional[str] = None
    missing: List[str] = field(default_factory=list)  # the site's domains the certificate lacks
    # After a flagged upload: what was done about it, and the certificate put back, if any.
    aftermath: Optional[str] = None
    restored: Optional[LocalCertificate] = None
    stale: bool = False  # the site is unknown, or serves none of the names: a stale record?
    verdict: Optional[slots.Verdict] = None  # set when the site was judged, not uploaded to

    @property
    def judged_only(self) -> bool:
        """Left as it is by a per-key-type verdict: what it holds is not this lineage's."""
        return self.verdict is not None and self.verdict.action in slots.NOT_UPLOADED

    @property
    def fatal_flags(self) -> List[str]:
        return [] if self.judged_only else report.flags(self.details)[0]

    @property
    def warnings(self) -> List[str]:
        return report.flags(self.details, self.missing)[1]

    @property
    def failed(self) -> bool:
        return self.error is not None or bool(self.fatal_flags)

    def lines(self) -> List[str]:
        if self.verdict is not None and self.verdict.action == slots.LEFT_ALONE:
            return [f"Imperva {self.target.label()}: left alone (see the warning)"]
        if self.judged_only and self.verdict is not None:
            return [f"Imperva {self.target.label()}: {self.action} ({self.verdict.why})"]
        return report.site_lines(self.target.label(), self.action, self.details, self.error,
                                 self.missing, self.aftermath)


@dataclass
class Report:
    """What one deployment, sync or check did: for a person (lines) and for a door (failed)."""

    title: str
    outcomes: List[SiteOutcome] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)  # what was chosen, for the record
    warnings: List[str] = field(default_factory=list)  # worth a look, not a failure
    refusal: Optional[str] = None  # why nothing was done for this lineage (one of several)
    edge: List[str] = field(default_factory=list)  # what each site's edge serves (issue 12)

    @property
    def failed(self) -> List[SiteOutcome]:
        return [o for o in self.outcomes if o.failed]

    def lines(self) -> List[str]:
        out = [self.title + ":"] if self.outcomes else []
        for outcome in self.outcomes:
            out += ["  " + line for line in outcome.lines()]
        return out + ["  " + line for line in self.edge]

    def error(self) -> Optional[str]:
        """One sentence for the whole run when a site failed; None when none did."""
        return self.refusal or report.failure(self.failed, len(self.outcomes))


@dataclass
class StatusRow:
    lineage: str
    site: Optional[int]
    domain: Optional[str]
    state: str  # in sync, drifted, flagged, rolled back, unreachable, error, not verifiable,
    # held by other lineage, left alone
    detail: str
    known_wrong: bool = False  # not verifiable, yet something on the site is known to be wrong


def held_certificate(status: Mapping[str, Any]) -> Optional[Dict[str, Any]]:
    ssl = status.get("ssl")
    held = ssl.get("custom_certificate") if isinstance(ssl, dict) else None
    return held if isinstance(held, dict) and held else None


def _hex(value: Any) -> str:
    return str(value).replace(":", "").replace(" ", "").upper().lstrip("0")


def difference(cert: LocalCertificate, held: Optional[Mapping[str, Any]]) -> Optional[str]:
    """None when the site holds `cert`; otherwise why not, in a few words."""
    if not held:
        return "the site holds no custom certificate"
    if held.get("inputHash"):
        return None if held["inputHash"] == cert.input_hash else "the site holds another certificate"
    if held.get("serialNumber") and _hex(held["serialNumber"]) != _hex(cert.serial_hex):
        return f"the site holds serial {held['serialNumber']}, not {cert.serial_hex}"
    fingerprint = str(held.get("fingerPrint") or "").split("=")[-1]
    if fingerprint and _hex(fingerprint) != _hex(cert.sha1_fingerprint):
        return "the site holds a certificate of another fingerprint"
    try:
        expires = int(held.get("expirationDate"))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        expires = None
    if expires is not None and abs(expires - cert.expiration_ms) > 1000:
        return "the site holds a certificate of another expiry date"
    if expires is None and not held.get("serialNumber") and not fingerprint:
        return "Imperva shows nothing that identifies the certificate it holds"
    return None


def _include(lineage: str, site_id: Optional[int]) -> str:
    """How to upload to a site left alone: once, by id; it then holds this host's certificate
    and is the lineage's like its other sites (discovery goes on for new ones)."""
    return (f"upload once to it by id: certbot install --cert-name {lineage} -i incapsula "
            f"--incapsula-site-id {site_id}")


def _cached_target(entry: Mapping[str, Any], names: Optional[List[str]] = None) -> sites.SiteTarget:
    """A site remembered in the records, as discovery chose it."""
    return sites.SiteTarget(int(entry["site_id"]), entry.get("domain"),
                            names if names is not None else list(entry.get("names", [])),
                            wildcard=entry.get("wildcard") is True)


def site_domains(status: Mapping[str, Any]) -> List[str]:
    """The domains a site serves: its own, and the names its DNS instructions cover."""
    names = [str(status.get("domain") or "")]
    for entry in status.get("dns") or []:
        if isinstance(entry, dict):
            names.append(str(entry.get("dns_record_name") or ""))
    seen: List[str] = []
    for name in names:
        name = name.strip().lower().rstrip(".")
        if name and name not in seen:
            seen.append(name)
    return seen


def _version_of(path: str) -> Optional[int]:
    match = re.search(r"(\d+)\.pem$", os.path.basename(os.path.realpath(path)))
    return int(match.group(1)) if match else None


ARCHIVE_LOOKBACK = 50  # archive versions searched for a certificate to put back


def _archive_versions(cert: LocalCertificate) -> List[Tuple[str, str]]:
    """(fullchainN.pem, privkeyN.pem) beside `cert` in certbot's archive, newest first."""
    directory, name = os.path.split(cert.fullchain_path)
    if not re.fullmatch(r"fullchain\d+\.pem", name):
        return []
    try:
        found = os.listdir(directory)
    except OSError:
        return []
    versions = sorted((int(m.group(1)) for m in map(re.compile(r"fullchain(\d+)\.pem").fullmatch,
                                                    found) if m), reverse=True)
    key_dir = os.path.dirname(cert.key_path)
    return [(os.path.join(directory, f"fullchain{v}.pem"), os.path.join(key_dir, f"privkey{v}.pem"))
            for v in versions[:ARCHIVE_LOOKBACK]]


def _bare(name: str) -> str:
    name = name.strip().lower().rstrip(".")
    for prefix in ("*.", "www."):
        if name.startswith(prefix):
            name = name[len(prefix):]
    return name


def serves_none(domains: Sequence[str], names: Sequence[str]) -> bool:
    """Whether a site's domains and a certificate's names have nothing in common (a wrong site
    id, or a stale record): not even www./bare or a wildcard relates them."""
    return bool(domains) and not any(
        sites.covers(name, domain) or _bare(name) == _bare(domain)
        for name in names for domain in domains)


def held_label(held: Mapping[str, Any]) -> str:
    """A held certificate in a few words: its serial, else its expiry."""
    if held.get("serialNumber"):
        return f"serial {held['serialNumber']}"
    return f"expiring {report.expiry(held)}"


def _held_problem(held: Mapping[str, Any]) -> Optional[str]:
    """Why a certificate a site holds is not a good one (flagged, or expired); None if good."""
    fatal = report.flags(held)[0]
    if fatal:
        return "flagged " + ", ".join(flag.split(":")[0] for flag in fatal)
    try:
        expired = int(held.get("expirationDate")) <= time.time() * 1000  # type: ignore[arg-type]
    except (TypeError, ValueError):
        expired = False
    return "expired" if expired else None


class Deployer:
    """Per-site operations on one account: upload, read back, compare, record."""

    def __init__(self, client: ImpervaClient, records: Records, *, workers: int = WORKERS,
                 listing: Optional[Callable[[bool], Optional[Listing]]] = None) -> None:
        self.client = client
        self.records = records
        self.workers = workers
        # The account's listing from the process context: listing(True) reads it if this process
        # has not yet, listing(False) only returns one already read. None: a listing per call.
        self.listing = listing or (lambda fetch: Listing(self.client.list_sites()) if fetch else None)
        # site id -> the last sites/status answer or listing item seen: its `dns` names the edge.
        self.statuses: Dict[int, Mapping[str, Any]] = {}

    def _each(self, fn: Callable[[T], R], items: Sequence[T]) -> List[R]:
        if len(items) <= 1:
            return [fn(item) for item in items]
        with ThreadPoolExecutor(max_workers=min(self.workers, len(items))) as pool:
            return list(pool.map(fn, items))

    # -- which sites ------------------------------------------------------------------------

    def resolve(self, lineage: str, names: Sequence[str], site_ids: Sequence[int],
                fresh: bool = False) -> sites.Resolution:
        """Explicit ids; else the account's listing when this process has it (or `fresh` asks
        for it: a check must see sites added since); else the sites found before for the same
        names; else discovery, which reads the listing."""
        if site_ids:
            return sites.explicit(site_ids, names)
        # A wildcard's sites are whatever the account has under it now, renewal included.
        listing = self.listing(fresh or any(sites.is_wildcard(n) for n in names))
        if listing is None:
            cached = self.records.cached_sites(lineage, list(names))
            if cached:
                return sites.Resolution([_cached_target(t) for t in cached], [], False)
            listing = self.listing(True)
        assert listing is not None
        found = sites.match_names(names, listing.index())
        if found.targets:
            self.records.remember_sites(lineage, list(names), [
                {"site_id": t.site_id, "domain": t.domain, "names": t.names,
                 **({"wildcard": True} if t.wildcard else {})} for t in found.targets])
        return found

    def sites_for(self, name: str, site_ids: Sequence[int]) -> List[sites.SiteTarget]:
        """The sites of one name, for an enhancement; read-only (the lineage cache is not touched)."""
        if site_ids:
            return sites.explicit(site_ids, [name]).targets
        found: Dict[int, sites.SiteTarget] = {}
        for lineage in self.records.lineage_names():
            cache = self.records.lineage(lineage).get("sites")
            for target in (cache.get("targets") if isinstance(cache, dict) else None) or []:
                if isinstance(target, dict) and name in target.get("names", []):
                    found.setdefault(int(target["site_id"]), _cached_target(target, [name]))
        if found:
            return [found[site_id] for site_id in sorted(found)]
        listing = self.listing(True)
        assert listing is not None
        return sites.match_names([name], listing.index()).targets

    # -- uploads ----------------------------------------------------------------------------

    def upload(self, cert: LocalCertificate, targets: Sequence[sites.SiteTarget], lineage: str,
               version: Optional[int], action: str = "uploaded") -> List[SiteOutcome]:
        """An explicit deployment: every site, but one found only through a wildcard that holds
        a valid certificate this host did not upload. The uploaded slots become `lineage`'s."""
        def one(target: sites.SiteTarget) -> SiteOutcome:
            seen = None
            if target.wildcard:
                seen = self._listed(target) or self._status(target)
                if seen.error:
                    return seen
                verdict = slots.guard_wildcard(target, seen.details, self.records,
                                               slots.Verdict(slots.UPLOAD))
                if verdict.action == slots.LEFT_ALONE:
                    seen.action, seen.verdict = verdict.action, verdict
                    return seen
            return self._upload_one(cert, target, action, lineage, before=seen)
        outcomes = self._each(one, targets)
        self._record(cert, lineage, version, [o for o in outcomes if not o.judged_only],
                     explicit=True)
        return outcomes

    def _upload_one(self, cert: LocalCertificate, target: sites.SiteTarget, action: str,
                    lineage: str, before: Optional[SiteOutcome] = None) -> SiteOutcome:
        """Reads what the site holds (unless `before` has it), uploads, reads back; puts the
        previous certificate back when Imperva flags the new one."""
        if before is None:  # the process's listing of the account if it has the site, else a read
            before = self._listed(target) or self._status(target)
        if before.error:  # nothing is uploaded to a site that cannot be read first
            return before
        if serves_none(target.domains, cert.names):
            return SiteOutcome(target, "failed", None, (
                f"nothing was uploaded: the site serves {', '.join(target.domains)}, which none of "
                f"the certificate's names ({', '.join(cert.names)}) covers. Check "
                "--incapsula-site-id."), stale=True)
        try:
            details = self.client.upload_certificate(
                target.site_id, cert.fullchain_pem, cert.key_pem, cert.key_type, cert.input_hash)
        except ImpervaError as exc:
            return SiteOutcome(target, "failed", None, str(exc))
        outcome = SiteOutcome(target, action, details)
        # Imperva's "OK" is not proof: read the site back and compare.
        seen = self._status(target)
        if seen.error:
            outcome.error = f"uploaded, but reading the site back failed: {seen.error}"
            return outcome
        outcome.missing = sites.uncovered(target.domains, cert.names)
        why = difference(cert, seen.details)
        shown = slots.key_type_of(seen.details, self.records) if why and seen.details else None
        if shown and shown != cert.key_type:
            # Imperva shows the other slot, not the newest upload: remember never to infer a
            # removal from that order on this site.
            self.records.mark_status_not_latest(target.site_id)
            outcome.action += (f"; Imperva shows the site's {slots.KEY_WORDS[shown]} certificate, "
                               "so this one cannot be read back")
        elif why:
            outcome.error = f"Imperva answered OK, but {why} ({cert.describe()} was uploaded)"
        if not outcome.details and seen.details:
            outcome.details = seen.details
        if outcome.fatal_flags and not why:
            self._restore(cert, outcome, before.details, lineage)
        return outcome

    # -- when Imperva flags an upload --------------------------------------------------------

    def _restore(self, cert: LocalCertificate, outcome: SiteOutcome,
                 held: Optional[Mapping[str, Any]], lineage: str) -> None:
        """Puts back the certificate the site held before a flagged upload, if it was a good
        one and its files are at hand; `outcome.aftermath` says what the site serves now."""
        now_serves = f"the site now serves the flagged certificate (serial {cert.serial_hex})"
        if not held:
            outcome.aftermath = ("Not restored: the site held no custom certificate before; "
                                 + now_serves)
            return
        if difference(cert, held) is None:
            outcome.aftermath = f"The site held this same certificate before; {now_serves}"
            return
        problem = _held_problem(held)
        if problem:
            outcome.aftermath = (f"Not restored: the certificate the site held before "
                                 f"({held_label(held)}) was {problem} too; {now_serves}")
            return
        previous = self._previous(cert, held, lineage)
        if previous is None:
            outcome.aftermath = (
                f"Not restored: the certificate the site held before ({held_label(held)}) is "
                f"neither in the plugin's records nor in certbot's archive; {now_serves}. "
                "Upload a good certificate (certbot install --cert-name NAME -i incapsula)")
            return
        if previous.key_type != cert.key_type:
            outcome.aftermath = (
                f"Not restored: the certificate the site held before (serial "
                f"{previous.serial_hex}) has an {previous.key_type} key, and Imperva keeps one "
                f"certificate per key type: the site still holds the flagged {cert.key_type} "
                f"certificate (serial {cert.serial_hex}) beside it. Remove that one in Imperva's "
                "console, or upload a good one")
            return
        try:
            answer = self.client.upload_certificate(
                outcome.target.site_id, previous.fullchain_pem, previous.key_pem,
                previous.key_type, previous.input_hash)
        except ImpervaError as exc:
            outcome.aftermath = (f"Not restored: uploading the previous certificate (serial "
                                 f"{previous.serial_hex}) again failed ({exc}); {now_serves}")
            return
        seen = self._status(outcome.target)
        if seen.error:
            outcome.aftermath = (f"The previous certificate (serial {previous.serial_hex}) was "
                                 f"uploaded again, but reading the site back failed ({seen.error}):"
                                 " what it serves now is unknown")
        elif difference(previous, seen.details) or report.flags(answer or seen.details)[0]:
            outcome.aftermath = (f"Not restored: the previous certificate (serial "
                                 f"{previous.serial_hex}) was uploaded again, but the site does "
                                 f"not show it unflagged; {now_serves}")
        else:
            outcome.restored = previous
            outcome.aftermath = (f"Restored the previous certificate ({previous.describe()}): "
                                 "the site serves it again")

    def _previous(self, cert: LocalCertificate, held: Mapping[str, Any],
                  lineage: str) -> Optional[LocalCertificate]:
        """The files of the certificate a site held, from this lineage's records or certbot's
        archive beside `cert`; only one that passes the checks before an upload."""
        pairs: List[Tuple[str, str]] = []
        wanted = held.get("inputHash")
        for entry in reversed(self.records.history(lineage)):
            if entry.get("fullchain") and entry.get("privkey") and entry["input_hash"] != \
                    cert.input_hash and (not wanted or entry["input_hash"] == wanted):
                pairs.append((entry["fullchain"], entry["privkey"]))
        pairs += _archive_versions(cert)
        tried: Set[Tuple[str, str]] = set()
        for pair in pairs:
            if pair in tried:
                continue
            tried.add(pair)
            try:
                previous = certificate.load(*pair)
                certificate.check(previous)
            except ValueError:  # CertificateError: gone, damaged, expired...
                continue
            if previous.input_hash != cert.input_hash and difference(previous, held) is None:
                return previous
        return None

    def sync(self, cert: LocalCertificate, targets: Sequence[sites.SiteTarget], lineage: str,
             version: Optional[int],
             refusal: Callable[[], Optional[str]] = lambda: None) -> List[SiteOutcome]:
        """Uploads only where `cert`'s key-type slot is known not to hold it (slots.judge), and
        the site is this lineage's to fix: one status call per site at most when in sync.
        `refusal()` (why `cert` must not be uploaded), asked only where an upload is due, fails
        the sites that would need it."""
        def one(target: sites.SiteTarget) -> SiteOutcome:
            seen = self._listed(target) or self._status(target)
            if seen.error:
                return seen
            seen.missing = sites.uncovered(target.domains, cert.names)
            verdict = self.judge(cert, lineage, target, seen.details)
            if verdict.action != slots.UPLOAD:
                seen.action, seen.verdict = verdict.action, verdict
                return seen
            why = verdict.why
            refused = refusal()
            if refused:
                return SiteOutcome(target, "failed", None, f"{why}, but {refused}")
            flagged = self.records.flagged(lineage, target.site_id, cert.input_hash)
            if flagged:
                return SiteOutcome(target, "failed", None, (
                    f"{why}: Imperva flagged this certificate ({', '.join(flagged['flags'])}) "
                    f"when it was uploaded ({flagged.get('time') or 'time unknown'}), so "
                    f"self-healing does not upload it again. Renew it (certbot renew --cert-name "
                    f"{lineage} --force-renewal), or upload it explicitly (certbot install "
                    f"--cert-name {lineage} -i incapsula, or certbot-incapsula deploy)"))
            logger.info("Imperva %s is out of sync with %s: %s; uploading again",
                        target.label(), cert.fullchain_path, why)
            return self._upload_one(cert, target, f"repaired ({why})", lineage, before=seen)
        outcomes = self._each(one, targets)
        changed = [o for o in outcomes if o.verdict is None]  # uploads, and sites not read
        if changed:
            self._record(cert, lineage, version, changed, explicit=False)
        return outcomes

    def judge(self, cert: LocalCertificate, lineage: str, target: sites.SiteTarget,
              held: Optional[Mapping[str, Any]]) -> slots.Verdict:
        """What `lineage` should do about one site, given the certificate Imperva shows."""
        return slots.guard_wildcard(target, held, self.records,
                                    slots.judge(cert, lineage, target, held, self.records))

    def check(self, targets: Sequence[sites.SiteTarget]) -> List[SiteOutcome]:
        """Read-only: the credentials work and each site answers (for --dry-run and status)."""
        return self._each(lambda t: self._listed(t) or self._status(t), targets)

    def _listed(self, target: sites.SiteTarget) -> Optional[SiteOutcome]:
        """What the site holds according to the account's listing, when this process has one
        and its entry identifies the certificate; None: ask `sites/status` instead."""
        listing = self.listing(False)
        item = listing.get(target.site_id) if listing is not None else None
        held = held_certificate(item) if item is not None else None
        if item is None or held is None or not any(
                held.get(key) for key in ("inputHash", "serialNumber", "fingerPrint")):
            return None  # the listing is an optimisation, never a reason to call a site in sync
        return self._seen(target, item)

    def _status(self, target: sites.SiteTarget) -> SiteOutcome:
        """What the site holds now ("reachable"), or why it could not be read ("failed")."""
        try:
            status = self.client.site_status(target.site_id)
        except ImpervaError as exc:
            return SiteOutcome(target, "failed", None, str(exc), stale=exc.res == 9413)
        listing = self.listing(False)
        if listing is not None:
            listing.update(target.site_id, status)  # the listing is stale for this site now
        return self._seen(target, status)

    def _seen(self, target: sites.SiteTarget, status: Mapping[str, Any]) -> SiteOutcome:
        self.statuses[target.site_id] = status
        target.domain = target.domain or status.get("domain")
        target.domains = site_domains(status)
        return SiteOutcome(target, "reachable", held_certificate(status))

    def _record(self, cert: LocalCertificate, lineage: str, version: Optional[int],
                outcomes: Sequence[SiteOutcome], explicit: bool) -> None:
        for outcome in outcomes:
            if outcome.error is None:  # Imperva took it (flags or not): the slot holds it now
                self.records.record_upload(outcome.target.site_id, cert.key_type, lineage,
                                           cert.input_hash, explicit)
            self.records.add_deployment(lineage, {
                "site_id": outcome.target.site_id,
                "domain": outcome.target.domain,
                "serial": cert.serial_hex,
                "fingerprint": cert.sha1_fingerprint,
                "input_hash": cert.input_hash,
                "auth_type": cert.key_type,
                "archive_version": version,
                "fullchain": cert.fullchain_path,
                "privkey": cert.key_path,
                "outcome": "failed" if outcome.failed else "ok",
                "action": outcome.action,
                "error": outcome.error,
                "flags": [flag.split(":")[0] for flag in outcome.fatal_flags],
            })
            previous = outcome.restored
            if previous is not None:  # the site holds it again: the records say so
                self.records.add_deployment(lineage, {
                    "site_id": outcome.target.site_id,
                    "domain": outcome.target.domain,
                    "serial": previous.serial_hex,
                    "fingerprint": previous.sha1_fingerprint,
                    "input_hash": previous.input_hash,
                    "auth_type": previous.key_type,
                    "archive_version": _version_of(previous.fullchain_path),
                    "fullchain": previous.fullchain_path,
                    "privkey": previous.key_path,
                    "outcome": "ok",
                    "action": f"restored after Imperva flagged serial {cert.serial_hex}",
                    "error": None,
                    "flags": [],
                })


def _sites_of(outcomes: Sequence[SiteOutcome]) -> str:
    ids = [str(o.target.site_id) for o in outcomes]
    return ("site " if len(ids) == 1 else "sites ") + ", ".join(ids)


class Deployment:
    """One lineage's settings, bound to its account's client and the process's records."""

    def __init__(self, settings: Settings, config_dir: str, *, context: Context = PROCESS) -> None:
        # Offline and cheap: certbot makes one per lineage on every renew, due or not.
        self.settings = settings
        self.config_dir = config_dir
        self.context = context
        self._deployer: Optional[Deployer] = None
        self._redirected: Set[int] = set()  # certbot asks once per name; a site needs it once

    # -- plumbing ---------------------------------------------------------------------------

    @property
    def deployer(self) -> Deployer:
        if self._deployer is None:
            api_id, api_key = self.context.credentials(self.settings.credentials)
            client = self.context.client(api_id, api_key, self.settings.api_url)
            account = self.settings.account_id
            self._deployer = Deployer(client, self.context.records(self.config_dir),
                                      listing=lambda fetch: self.context.listing(client, account, fetch))
        return self._deployer

    @property
    def records(self) -> Records:
        return self.context.records(self.config_dir)

    def load(self, files: LineageFiles, *, check: bool = True) -> LocalCertificate:
        """The lineage's certificate, checked (with `check`, as fit to replace what a site
        holds: chain, validity, names); a Refusal names the file and the fix."""
        try:
            cert = certificate.load(os.path.realpath(files.fullchain), os.path.realpath(files.key))
            if check:
                certificate.check(cert, shown_path=files.fullchain)
        except certificate.CertificateError as exc:
            raise Refusal(f"{exc} {NOTHING_UPLOADED}") from None
        if not self.settings.allow_staging and (
                cert.is_test_ca or "staging" in files.acme_server.lower()):
            raise Refusal(
                f"{files.fullchain} comes from a staging or test CA ({cert.issuer}): uploading it "
                "would replace the trusted certificate that Imperva serves with an untrusted one. "
                f"{NOTHING_UPLOADED} Obtain the certificate from a production CA, or allow "
                "staging certificates for test sites (--incapsula-allow-staging).")
        return cert

    def _resolve(self, lineage: str, names: Sequence[str], rep: Optional[Report],
                 fresh: bool = False) -> sites.Resolution:
        try:
            found = self.deployer.resolve(lineage, names, self.settings.site_ids, fresh)
        except (ImpervaError, sites.SiteMatchError) as exc:
            raise Refusal(f"{exc} {NOTHING_UPLOADED}") from None
        except ValueError as exc:  # the credentials file
            raise Refusal(str(exc)) from None
        if not found.targets:
            raise Refusal(
                "No Imperva site serves any of these names: " + ", ".join(names)
                + ". Add the site in Imperva, or name it with --incapsula-site-id. "
                + NOTHING_UPLOADED)
        if rep is not None:
            if found.discovered:
                rep.notes += sites.chosen_lines(found.targets)
            if found.unmatched:
                rep.warnings.append("no site serves " + ", ".join(found.unmatched)
                                    + "; the certificate is not uploaded for these names.")
        return found

    def _rediscover(self, lineage: str, names: Sequence[str], rep: Report,
                    found: sites.Resolution, outcomes: List[SiteOutcome],
                    again: Callable[[List[sites.SiteTarget]], List[SiteOutcome]]
                    ) -> List[SiteOutcome]:
        """Sites taken from the records that Imperva no longer knows, or that serve none of the
        names, are a stale record: it is dropped, the sites are found again, and `again` does
        the ones found that were not done yet."""
        stale = [o for o in outcomes if o.stale]
        if found.discovered or self.settings.site_ids or not stale:
            return outcomes
        self.records.forget_sites(lineage)
        rep.warnings.append(
            f"the sites recorded for {lineage} in {self.records.path} ("
            + ", ".join(o.target.label() for o in stale) + ") no longer serve its names: the "
            "record is dropped and the sites are found again.")
        try:
            found = self._resolve(lineage, names, rep)
        except Refusal as exc:
            rep.warnings.append(f"finding the sites again failed: {exc}")
            return outcomes
        kept = [o for o in outcomes if not o.stale]
        done = {o.target.site_id for o in kept}
        return kept + again([t for t in found.targets if t.site_id not in done])

    def _save_records(self, rep: Report, what: str) -> None:
        """Saves the records; a file that cannot be written is a warning saying what it lacks."""
        try:
            self.records.save()
        except OSError as exc:  # RecordsError: the reason in a few words
            rep.warnings.append(
                f"{what} is not recorded: {self.records.path} cannot be written ({exc}). "
                "Self-healing, rollback and the status view will not know of it, and sites are "
                "looked up again, until the file can be written.")

    def _explain(self, rep: Report, lineage: str, cert: LocalCertificate,
                 outcomes: Sequence[SiteOutcome],
                 owners: Optional[Mapping[int, Optional[str]]] = None) -> None:
        """Warnings, once per process, for sites this lineage leaves to another lineage or to a
        certificate it did not upload; notes for the slots an explicit deployment took over."""
        key_word = slots.KEY_WORDS[cert.key_type]
        held: Dict[str, List[str]] = {}
        for outcome in outcomes:
            verdict, label = outcome.verdict, outcome.target.label()
            if owners and owners.get(outcome.target.site_id) and outcome.error is None \
                    and not outcome.judged_only:
                rep.notes.append(
                    f"Imperva {label}: its {key_word} certificate is now {lineage}'s, no longer "
                    f"{owners[outcome.target.site_id]}'s, which leaves the site alone from now on.")
            if verdict is None:
                continue
            if verdict.action == slots.HELD_BY_OTHER and verdict.owner:
                held.setdefault(verdict.owner, []).append(outcome.target.label())
            elif verdict.action == slots.LEFT_ALONE:
                self._warn_once(rep, f"{lineage} left alone {outcome.target.site_id}", (
                    f"{label} was left alone: {verdict.why}. Imperva's API shows no issuer or "
                    "names of a held certificate: check them in Imperva's console. To replace "
                    f"it, {_include(lineage, outcome.target.site_id)}."))
            elif verdict.action == slots.NOT_VERIFIABLE and verdict.wrong:
                self._warn_once(rep, f"{lineage} unverifiable {outcome.target.site_id}", (
                    f"{label}: {verdict.why}. Not verifiable which, so nothing was uploaded: "
                    f"upload the right one again with certbot install --cert-name {lineage} "
                    "-i incapsula (or certbot-incapsula deploy --cert-name NAME)."))
            elif verdict.action == slots.NOT_VERIFIABLE:
                logger.info("Imperva %s: %s (%s): not verifiable, nothing uploaded",
                            outcome.target.label(), verdict.why, lineage)
        for owner, labels in held.items():
            self._warn_once(rep, f"{lineage} held by {owner}", (
                f"{', '.join(labels)} hold{'s' if len(labels) == 1 else ''} the {key_word} "
                f"certificate of lineage {owner}, deployed there last; {lineage} leaves "
                f"{'it' if len(labels) == 1 else 'them'} alone (a site holds one {key_word} "
                f"certificate). To deploy {lineage} there instead: certbot install --cert-name "
                f"{lineage} -i incapsula (or certbot-incapsula deploy --cert-name {lineage}); to "
                "end the overlap, narrow either lineage with --incapsula-site-id."))

    def _warn_once(self, rep: Report, key: str, text: str) -> None:
        if self.context.first_time(key):
            rep.warnings.append(text)

    # -- what the doors call ----------------------------------------------------------------

    def deploy(self, files: LineageFiles, *, action: str = "uploaded", pin: bool = False) -> Report:
        """Uploads the certificate to every site of its names, reads each back, records it."""
        cert = self.load(files)
        rep = Report(f"Imperva upload of {cert.describe()}")
        found = self._resolve(files.name, cert.names, rep)
        # An explicit upload ends the hold a rollback put on self-healing; a rollback sets it.
        self.records.lineage(files.name)["pinned"] = cert.input_hash if pin else None
        owners = {t.site_id: slots.owner_of(self.records, t.site_id, cert.key_type, files.name)
                  for t in found.targets}

        def upload(targets: List[sites.SiteTarget]) -> List[SiteOutcome]:
            return self.deployer.upload(cert, targets, files.name, files.version, action)

        rep.outcomes = self._rediscover(files.name, cert.names, rep, found,
                                        upload(found.targets), upload)
        self.context.deployed.add((files.name, cert.input_hash))
        self._explain(rep, files.name, cert, rep.outcomes, owners)
        self._save_records(rep, f"The upload of serial {cert.serial_hex} to "
                                f"{_sites_of(rep.outcomes)}")
        self.edge_check(cert, files.name, rep.outcomes, rep)
        return rep

    def sync(self, files: LineageFiles, *, look_at_edge: bool = True) -> Report:
        """Uploads where a site does not hold the lineage's current certificate. The report has
        outcomes only for sites that changed or failed: an in-sync lineage says nothing."""
        # Checked as fit for an upload only where one is needed: an in-sync site stays so.
        cert = self.load(files, check=False)
        rep = Report(f"Imperva self-check of {files.name}")
        if (files.name, cert.input_hash) in self.context.deployed:
            return rep  # uploaded and read back moments ago in this process
        pinned = self.records.lineage(files.name).get("pinned")
        if pinned and pinned != cert.input_hash:
            rep.warnings.append(
                f"{files.name} is held at an older certificate by a rollback; self-healing is "
                f"paused until the current one is uploaded again (certbot install --cert-name "
                f"{files.name} -i incapsula, certbot-incapsula deploy, or the next renewal).")
            return rep
        verdicts: Dict[str, Optional[str]] = {}

        def refusal() -> Optional[str]:  # checked once, and only where an upload is due
            if "refusal" not in verdicts:
                try:
                    certificate.check(cert, shown_path=files.fullchain)
                    verdicts["refusal"] = None
                except certificate.CertificateError as exc:
                    verdicts["refusal"] = f"the lineage's certificate is not uploaded: {exc}"
            return verdicts["refusal"]

        # Fresh: a site added since (say, under a wildcard) is served at the next renew.
        found = self._resolve(files.name, cert.names, None, fresh=True)

        def sync(targets: List[sites.SiteTarget]) -> List[SiteOutcome]:
            return self.deployer.sync(cert, targets, files.name, files.version, refusal)

        outcomes = self._rediscover(files.name, cert.names, rep, found, sync(found.targets), sync)
        self.edge_sync(cert, files.name, outcomes, rep, look_at_edge)
        # What changed or failed; a site left to another lineage or certificate is a warning.
        rep.outcomes = [o for o in outcomes if o.verdict is None or (
            o.action == slots.IN_SYNC and o.failed)]
        self._explain(rep, files.name, cert, outcomes)
        if rep.outcomes:
            self._save_records(rep, f"The self-check of {files.name} on "
                                    f"{_sites_of(rep.outcomes)}")
        else:
            logger.info("Imperva: %s is in sync on %d site(s)", files.name, len(outcomes))
        return rep

    def check(self, lineage: str, names: Sequence[str]) -> Report:
        """Read-only (--dry-run): the key works and each site of these names answers to it."""
        rep = Report("Imperva dry run")
        try:
            self.deployer.client.verify_account()
        except ImpervaError as exc:
            raise Refusal(f"Dry run: {exc}") from None
        except ValueError as exc:
            raise Refusal(str(exc)) from None
        if names:
            try:
                found = self.deployer.resolve(lineage, names, self.settings.site_ids, fresh=True)
            except (ImpervaError, sites.SiteMatchError) as exc:
                raise Refusal(f"Dry run: {exc}") from None
            rep.outcomes = self.deployer.check(found.targets)
        return rep

    def status(self, files: LineageFiles) -> List[StatusRow]:
        """Read-only: one row per site (in sync, drifted, flagged, rolled back, unreachable),
        or one error row naming what could not be read. Nothing is written anywhere."""
        try:
            cert = certificate.load(os.path.realpath(files.fullchain), os.path.realpath(files.key))
            targets = self.deployer.resolve(files.name, cert.names, self.settings.site_ids,
                                            fresh=True).targets
        except (ValueError, ImpervaError) as exc:  # CertificateError and SiteMatchError too
            return [StatusRow(files.name, None, None, "error", str(exc))]
        entry = self.records.lineage(files.name)
        pinned = entry.get("pinned")
        rows = []
        checked = []
        for outcome in self.deployer.check(targets):
            outcome.missing = sites.uncovered(outcome.target.domains, cert.names)
            row = StatusRow(files.name, outcome.target.site_id, outcome.target.domain, "", "")
            checked.append((row, outcome.target))
            verdict = None if outcome.error else self.deployer.judge(
                cert, files.name, outcome.target, outcome.details)
            fatal, warning = report.flags(outcome.details, outcome.missing)
            held = (outcome.details or {}).get("inputHash")
            why = verdict.why if verdict is not None and verdict.action == slots.UPLOAD else None
            # Imperva flagged this certificate at its upload, and the site kept another one.
            flagged = why and self.records.flagged(files.name, outcome.target.site_id,
                                                   cert.input_hash)
            if outcome.error or verdict is None:
                row.state, row.detail = "unreachable", str(outcome.error)
            elif pinned and why and held == pinned:
                version = self.records.version_of(files.name, pinned)
                row.state = "rolled back"
                row.detail = (f"held at archive version {version} by a rollback; self-healing is "
                              f"paused until the current certificate is uploaded again")
            elif flagged:
                row.state = "flagged"
                row.detail = (f"Imperva flagged this certificate ({', '.join(flagged['flags'])}) "
                              f"at its upload ({flagged.get('time') or 'time unknown'}), and {why}")
            elif why:
                row.state, row.detail = "drifted", why
            elif verdict.action == slots.HELD_BY_OTHER:
                row.state = slots.HELD_BY_OTHER
                row.detail = (f"{verdict.why}; certbot install --cert-name {files.name} "
                              "-i incapsula moves it here")
            elif verdict.action == slots.LEFT_ALONE:
                row.state = slots.LEFT_ALONE
                row.detail = f"{verdict.why}; to include it, {_include(files.name, row.site)}"
            elif verdict.action == slots.NOT_VERIFIABLE:
                row.state, row.detail, row.known_wrong = slots.NOT_VERIFIABLE, verdict.why, verdict.wrong
            elif fatal:
                row.state, row.detail = "flagged", "; ".join(fatal)
            else:
                row.state = "in sync"
                row.detail = "; ".join(warning) or (
                    f"serial {cert.serial_hex}, expires {report.expiry(outcome.details)}")
            rows.append(row)
        self.edge_status(cert, checked)
        return rows

    # -- issue 12: what the world sees through each site's Imperva edge ------------------------

    def preflight(self, names: Sequence[str], webroots: Mapping[str, str]) -> edge_checks.Preflight:
        """Before the CA is asked: each name's challenge path, fetched through its site's edge
        from its webroot (name -> directory). Off (--incapsula-preflight off): no network work."""
        from certbot_incapsula import edge_checks

        if not self.settings.preflight:
            return edge_checks.Preflight()
        try:
            if self.settings.site_ids:
                listing = self.deployer.listing(False)
                items = [(listing.get(site_id) if listing is not None else None)
                         or self.deployer.client.site_status(site_id)
                         for site_id in self.settings.site_ids]
            elif (known := edge_checks.remembered_sites(self.deployer.records, names)) is not None:
                items = [self.deployer.client.site_status(site_id) for site_id in known]
            else:
                listing = self.deployer.listing(True)
                items = listing.items() if listing is not None else []
        except (ImpervaError, ValueError) as exc:  # ValueError: the credentials file
            return edge_checks.Preflight(unreadable=str(exc))
        return edge_checks.preflight(names, webroots, items)

    def edge_check(self, cert: LocalCertificate, lineage: str, outcomes: Sequence[SiteOutcome],
                   rep: Report) -> None:
        """After uploads: until each site's edge serves the certificate to clients of its key
        type (and, by the records, another lineage's to the other key type), all sites at once,
        up to edge_wait s. Lines and warnings in `rep`, never a failure. 0: no network work."""
        if self.settings.edge_wait <= 0:
            return
        from certbot_incapsula import edge_checks

        expected = []
        for outcome in outcomes:
            status = self.deployer.statuses.get(outcome.target.site_id)
            # Uploaded here (a judged site was not: its edge is the status view's business).
            if outcome.verdict is None and not outcome.failed and status is not None:
                expected += edge_checks.expectations(outcome.target, status, cert, lineage,
                                                     self.records)
        lines, warnings = edge_checks.after_upload(expected, self.settings.edge_wait)
        rep.edge += lines
        rep.warnings += warnings

    def edge_sync(self, cert: LocalCertificate, lineage: str, outcomes: Sequence[SiteOutcome],
                  rep: Report, look: bool = True) -> None:
        """sync: a repaired site is waited for as after any upload. With `look`, a site in sync
        by the API, or whose slot of this key type the API cannot show, gets one handshake: another
        certificate at the edge fails it as "drifted at the edge" (not uploaded again: what
        Imperva holds is not in doubt, or not this lineage's guess), and this one settles the
        slot the API could not show."""
        if self.settings.edge_wait <= 0:
            return
        from certbot_incapsula import edge_checks

        self.edge_check(cert, lineage, outcomes, rep)
        if not look:
            return
        statuses = self.deployer.statuses
        looked = [o for o in outcomes if o.verdict is not None and not o.failed
                  and o.verdict.action in (slots.IN_SYNC, slots.NOT_VERIFIABLE)
                  and o.target.site_id in statuses]
        looks = edge_checks.look_all([edge_checks.own(o.target, statuses[o.target.site_id], cert)
                                      for o in looked])
        for outcome, seen in zip(looked, looks):
            assert outcome.verdict is not None
            if seen.state == edge_checks.OTHER:
                shown = ("Imperva's API shows this certificate" if outcome.verdict.action
                         == slots.IN_SYNC else f"Imperva's API cannot show it ({outcome.verdict.why})")
                outcome.verdict, outcome.action = None, "drifted at the edge"
                outcome.error = f"{shown}, but {seen.text}"
            elif seen.state == edge_checks.SERVES:
                if outcome.verdict.action == slots.NOT_VERIFIABLE:
                    outcome.verdict = slots.Verdict(slots.IN_SYNC, f"settled at the edge: {seen.text}")
                    outcome.action = slots.IN_SYNC
            else:
                logger.info("Imperva %s: %s", outcome.target.label(), seen.text)

    def edge_status(self, cert: LocalCertificate,
                    checked: Sequence[Tuple[StatusRow, sites.SiteTarget]]) -> None:
        """status: one handshake per site, for this certificate's key type, where the API says
        in sync (another certificate at the edge makes the row DRIFTED) or cannot show this key
        type's slot (the edge settles it: in sync, or drifted). Read-only, bounded, no wait."""
        if self.settings.edge_wait <= 0:
            return
        from certbot_incapsula import edge_checks

        statuses = self.deployer.statuses
        pairs = [(row, target) for row, target in checked if target.site_id in statuses
                 and row.state in ("in sync", slots.NOT_VERIFIABLE)]
        looks = edge_checks.look_all([edge_checks.own(target, statuses[target.site_id], cert)
                                      for _, target in pairs])
        for (row, _), seen in zip(pairs, looks):
            settled = row.state == slots.NOT_VERIFIABLE
            if seen.state == edge_checks.OTHER:
                row.state = "drifted"
                row.detail = (f"{row.detail}; {seen.text}" if settled else
                              f"Imperva's API shows this certificate, but {seen.text}")
                row.known_wrong = False
            elif seen.state == edge_checks.SERVES and settled:
                row.state, row.known_wrong = "in sync", False
                row.detail = f"{row.detail}; settled at the edge: {seen.text}"
            elif seen.state == edge_checks.SERVES:
                row.detail += "; the edge serves it"
            else:
                row.detail += f"; {seen.text}"

    def redirect(self, name: str) -> Report:
        """Turns on Imperva's HTTP-to-HTTPS redirect on the sites of `name`."""
        rep = Report("Imperva redirect")
        try:
            targets = self.deployer.sites_for(name, self.settings.site_ids)
            for target in targets:
                if target.site_id in self._redirected:
                    continue
                if target.wildcard and not self.records.uploaded_to(target.site_id):
                    rep.notes.append(f"Imperva {target.label()}: left as it is (found only "
                                     f"through {name}; no certificate was deployed there from "
                                     "here).")
                    self._redirected.add(target.site_id)
                    continue
                self.deployer.client.set_redirect_to_https(target.site_id, True)
                self._redirected.add(target.site_id)
                rep.notes.append(f"Imperva {target.label()}: HTTP is now redirected to HTTPS.")
        except (ImpervaError, ValueError) as exc:
            raise Refusal(str(exc)) from None
        return rep

    def served_names(self) -> List[str]:
        """Every name the account's sites serve (certbot offers them when no -d is given)."""
        try:
            listing = self.deployer.listing(True)
            found = {str(site.get("domain") or "") for site in (listing.items() if listing else [])}
        except (ImpervaError, ValueError) as exc:
            raise Refusal(str(exc)) from None
        names = set(found)
        names.update(name[4:] for name in found if name.startswith("www."))
        return sorted(name for name in names if name)


def rollback(config_dir: str, back: int, settings_for: Callable[[str], Settings], *,
             context: Context = PROCESS) -> List[Report]:
    """Uploads again, for each lineage on record, the certificate deployed `back` deployments
    ago, to the sites that held it, each through that lineage's own settings (its account)."""
    from certbot_incapsula.rollback import plan

    try:
        steps = plan(context.records(config_dir), back)
    except ValueError as exc:
        raise Refusal(str(exc)) from None
    if not steps:
        raise Refusal("Imperva: no earlier certificate is recorded to roll back to.")
    reports = []
    for step in steps:
        rep = Report(f"Imperva rollback of {step.lineage}")
        reports.append(rep)
        try:  # one lineage that cannot be acted on does not stop the others
            deployment = Deployment(settings_for(step.lineage), config_dir, context=context)
            files = LineageFiles(step.lineage, step.fullchain, step.privkey)
            cert = deployment.load(files)
            deployer = deployment.deployer  # reads the lineage's credentials file
        except Refusal as exc:
            rep.refusal = str(exc)
            continue
        except ValueError as exc:  # its settings or credentials file
            rep.refusal = f"Imperva: cannot roll back {step.lineage}: {exc}"
            continue
        deployment.records.lineage(step.lineage)["pinned"] = cert.input_hash
        targets = [sites.SiteTarget(site_id, domain) for site_id, domain in step.sites]
        rep.outcomes = deployer.upload(
            cert, targets, step.lineage, step.version,
            action=f"rolled back to archive version {step.version}")
        deployment._save_records(rep, f"The rollback of {step.lineage} to serial "
                                      f"{cert.serial_hex} on {_sites_of(rep.outcomes)}")
    return reports
