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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Set, TypeVar

from certbot_incapsula import certificate, report, sites, slots
from certbot_incapsula.api import ImpervaClient, ImpervaError
from certbot_incapsula.certificate import LocalCertificate
from certbot_incapsula.context import PROCESS, Context, Listing
from certbot_incapsula.records import Records
from certbot_incapsula.settings import Settings

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
        match = re.search(r"(\d+)\.pem$", os.path.basename(os.path.realpath(self.fullchain)))
        return int(match.group(1)) if match else None


@dataclass
class SiteOutcome:
    target: sites.SiteTarget
    action: str  # uploaded, repaired, in sync, reachable, failed
    details: Optional[Dict[str, Any]] = None  # the flags Imperva answered or holds
    error: Optional[str] = None
    missing: List[str] = field(default_factory=list)  # the site's domains the certificate lacks
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
                                 self.missing)


@dataclass
class Report:
    """What one deployment, sync or check did: for a person (lines) and for a door (failed)."""

    title: str
    outcomes: List[SiteOutcome] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)  # what was chosen, for the record
    warnings: List[str] = field(default_factory=list)  # worth a look, not a failure
    refusal: Optional[str] = None  # why nothing was done for this lineage (one of several)

    @property
    def failed(self) -> List[SiteOutcome]:
        return [o for o in self.outcomes if o.failed]

    def lines(self) -> List[str]:
        out = [self.title + ":"] if self.outcomes else []
        for outcome in self.outcomes:
            out += ["  " + line for line in outcome.lines()]
        return out

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
        found = sites.match_names(names, listing.items())
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
        return sites.match_names([name], listing.items()).targets

    # -- uploads ----------------------------------------------------------------------------

    def upload(self, cert: LocalCertificate, targets: Sequence[sites.SiteTarget], lineage: str,
               version: Optional[int], action: str = "uploaded") -> List[SiteOutcome]:
        """An explicit deployment: every site, but one found only through a wildcard that holds
        a valid certificate this host did not upload. The uploaded slots become `lineage`'s."""
        def one(target: sites.SiteTarget) -> SiteOutcome:
            if target.wildcard:
                seen = self._listed(target) or self._status(target)
                if seen.error:
                    return seen
                verdict = slots.guard_wildcard(target, seen.details, self.records,
                                               slots.Verdict(slots.UPLOAD))
                if verdict.action == slots.LEFT_ALONE:
                    seen.action, seen.verdict = verdict.action, verdict
                    return seen
            return self._upload_one(cert, target, action)
        outcomes = self._each(one, targets)
        self._record(cert, lineage, version, [o for o in outcomes if not o.judged_only],
                     explicit=True)
        return outcomes

    def _upload_one(self, cert: LocalCertificate, target: sites.SiteTarget,
                    action: str) -> SiteOutcome:
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
        return outcome

    def sync(self, cert: LocalCertificate, targets: Sequence[sites.SiteTarget], lineage: str,
             version: Optional[int]) -> List[SiteOutcome]:
        """Uploads only where `cert`'s key-type slot is known not to hold it (slots.judge), and
        the site is this lineage's to fix: one status call per site at most when in sync."""
        def one(target: sites.SiteTarget) -> SiteOutcome:
            seen = self._listed(target) or self._status(target)
            if seen.error:
                return seen
            seen.missing = sites.uncovered(target.domains, cert.names)
            verdict = self.judge(cert, lineage, target, seen.details)
            if verdict.action != slots.UPLOAD:
                seen.action, seen.verdict = verdict.action, verdict
                return seen
            logger.info("Imperva %s is out of sync with %s: %s; uploading again",
                        target.label(), cert.fullchain_path, verdict.why)
            return self._upload_one(cert, target, f"repaired ({verdict.why})")
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
            return SiteOutcome(target, "failed", None, str(exc))
        listing = self.listing(False)
        if listing is not None:
            listing.update(target.site_id, status)  # the listing is stale for this site now
        return self._seen(target, status)

    @staticmethod
    def _seen(target: sites.SiteTarget, status: Mapping[str, Any]) -> SiteOutcome:
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
            })


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

    def load(self, files: LineageFiles) -> LocalCertificate:
        """The lineage's certificate, checked; a Refusal names the file and the fix."""
        try:
            cert = certificate.load(os.path.realpath(files.fullchain), os.path.realpath(files.key))
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
                 fresh: bool = False) -> List[sites.SiteTarget]:
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
        return found.targets

    def _save_records(self, rep: Report) -> None:
        try:
            self.records.save()
        except OSError as exc:
            rep.warnings.append(
                f"the deployment could not be recorded in {self.records.path} "
                f"({exc.strerror or exc}): self-healing and rollback will not know of it until "
                "the file can be written.")

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
        targets = self._resolve(files.name, cert.names, rep)
        # An explicit upload ends the hold a rollback put on self-healing; a rollback sets it.
        self.records.lineage(files.name)["pinned"] = cert.input_hash if pin else None
        owners = {t.site_id: slots.owner_of(self.records, t.site_id, cert.key_type, files.name)
                  for t in targets}
        rep.outcomes = self.deployer.upload(cert, targets, files.name, files.version, action)
        self.context.deployed.add((files.name, cert.input_hash))
        self._explain(rep, files.name, cert, rep.outcomes, owners)
        self._save_records(rep)
        return rep

    def sync(self, files: LineageFiles) -> Report:
        """Uploads where a site does not hold the lineage's current certificate. The report has
        outcomes only for sites that changed or failed: an in-sync lineage says nothing."""
        cert = self.load(files)
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
        # Fresh: a site added since (say, under a wildcard) is served at the next renew.
        targets = self._resolve(files.name, cert.names, None, fresh=True)
        outcomes = self.deployer.sync(cert, targets, files.name, files.version)
        # What changed or failed; a site left to another lineage or certificate is a warning.
        rep.outcomes = [o for o in outcomes if o.verdict is None or (
            o.action == slots.IN_SYNC and o.failed)]
        self._explain(rep, files.name, cert, outcomes)
        if rep.outcomes:
            self._save_records(rep)
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
        for outcome in self.deployer.check(targets):
            outcome.missing = sites.uncovered(outcome.target.domains, cert.names)
            row = StatusRow(files.name, outcome.target.site_id, outcome.target.domain, "", "")
            verdict = None if outcome.error else self.deployer.judge(
                cert, files.name, outcome.target, outcome.details)
            fatal, warning = report.flags(outcome.details, outcome.missing)
            held = (outcome.details or {}).get("inputHash")
            if outcome.error or verdict is None:
                row.state, row.detail = "unreachable", str(outcome.error)
            elif pinned and verdict.action == slots.UPLOAD and held == pinned:
                version = self.records.version_of(files.name, pinned)
                row.state = "rolled back"
                row.detail = (f"held at archive version {version} by a rollback; self-healing is "
                              f"paused until the current certificate is uploaded again")
            elif verdict.action == slots.UPLOAD:
                row.state, row.detail = "drifted", verdict.why
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
        return rows

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
        deployment._save_records(rep)
    return reports
