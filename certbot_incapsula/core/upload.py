"""Per site, on one account: which sites, what each holds (the listing, else `sites/status`),
the upload and its read-back, putting the previous certificate back when Imperva flags the new
one, the per-site self-check (`Deployer.sync`: upload only where the slot is known not to hold
the certificate) and the records of each. Knows nothing of certbot or of argv.
"""
from __future__ import annotations

import logging
import os
import re
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Set, Tuple, TypeVar

from certbot_incapsula import certificate, report, sites, slots
from certbot_incapsula.api import ImpervaClient
from certbot_incapsula.api_errors import ImpervaError
from certbot_incapsula.certificate import LocalCertificate
from certbot_incapsula.context import Listing
from certbot_incapsula.held import (
    _held_problem,
    difference,
    held_certificate,
    held_label,
    serves_none,
    site_domains,
)
from certbot_incapsula.outcomes import SiteOutcome, _version_of
from certbot_incapsula.records import Records

logger = logging.getLogger(__name__)

# As many calls in flight as the account may make in a second: the client's rate limiter, not the
# pool, sets the pace (4 workers capped a fleet at 4 / latency calls a second).
WORKERS = 10
T = TypeVar("T")
R = TypeVar("R")


def _cached_target(entry: Mapping[str, Any], names: Optional[List[str]] = None) -> sites.SiteTarget:
    """A site remembered in the records, as discovery chose it."""
    return sites.SiteTarget(int(entry["site_id"]), entry.get("domain"),
                            names if names is not None else list(entry.get("names", [])),
                            wildcard=entry.get("wildcard") is True)


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
             refusal: Callable[[], Optional[str]] = lambda: None,
             replaced: Callable[[], Optional[str]] = lambda: None) -> List[SiteOutcome]:
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
            newer = replaced()  # read again now: a renewal may have replaced `cert` meanwhile
            if newer:
                seen.action, seen.verdict = slots.REPLACED, slots.Verdict(slots.REPLACED, (
                    f"{why}, but the lineage's certificate changed during this self-check "
                    f"({newer}): serial {cert.serial_hex}, read before, is not uploaded; the "
                    "renewal's own deployment or the next self-check deals with the new one"))
                return seen
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
