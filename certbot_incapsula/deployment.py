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

from certbot_incapsula import certificate, report, sites
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

    @property
    def fatal_flags(self) -> List[str]:
        return report.flags(self.details)[0]

    @property
    def warnings(self) -> List[str]:
        return report.flags(self.details, self.missing)[1]

    @property
    def failed(self) -> bool:
        return self.error is not None or bool(self.fatal_flags)

    def lines(self) -> List[str]:
        return report.site_lines(self.target.label(), self.action, self.details, self.error,
                                 self.missing)


@dataclass
class Report:
    """What one deployment, sync or check did: for a person (lines) and for a door (failed)."""

    title: str
    outcomes: List[SiteOutcome] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)  # what was chosen, for the record
    warnings: List[str] = field(default_factory=list)  # worth a look, not a failure

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
        return report.failure(self.failed, len(self.outcomes))


@dataclass
class StatusRow:
    lineage: str
    site: Optional[int]
    domain: Optional[str]
    state: str  # in sync, drifted, flagged, rolled back, unreachable, error
    detail: str


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
        listing = self.listing(fresh)
        if listing is None:
            cached = self.records.cached_sites(lineage, list(names))
            if cached:
                targets = [sites.SiteTarget(int(t["site_id"]), t.get("domain"),
                                            list(t.get("names", []))) for t in cached]
                return sites.Resolution(targets, [], False)
            listing = self.listing(True)
        assert listing is not None
        found = sites.match_names(names, listing.items())
        if found.targets:
            self.records.remember_sites(lineage, list(names), [
                {"site_id": t.site_id, "domain": t.domain, "names": t.names} for t in found.targets])
        return found

    def sites_for(self, name: str, site_ids: Sequence[int]) -> List[sites.SiteTarget]:
        """The sites of one name, for an enhancement; read-only (the lineage cache is not touched)."""
        if site_ids:
            return sites.explicit(site_ids, [name]).targets
        for lineage in self.records.lineage_names():
            cache = self.records.lineage(lineage).get("sites")
            for target in (cache.get("targets") if isinstance(cache, dict) else None) or []:
                if name in target.get("names", []):
                    return [sites.SiteTarget(int(target["site_id"]), target.get("domain"), [name])]
        listing = self.listing(True)
        assert listing is not None
        return sites.match_names([name], listing.items()).targets

    # -- uploads ----------------------------------------------------------------------------

    def upload(self, cert: LocalCertificate, targets: Sequence[sites.SiteTarget], lineage: str,
               version: Optional[int], action: str = "uploaded") -> List[SiteOutcome]:
        outcomes = self._each(lambda t: self._upload_one(cert, t, action), targets)
        self._record(cert, lineage, version, outcomes)
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
        if why:
            outcome.error = f"Imperva answered OK, but {why} ({cert.describe()} was uploaded)"
        if not outcome.details and seen.details:
            outcome.details = seen.details
        return outcome

    def sync(self, cert: LocalCertificate, targets: Sequence[sites.SiteTarget], lineage: str,
             version: Optional[int]) -> List[SiteOutcome]:
        """Uploads only where the site does not hold `cert`: one status call per site in sync."""
        def one(target: sites.SiteTarget) -> SiteOutcome:
            seen = self._listed(target) or self._status(target)
            if seen.error:
                return seen
            why = difference(cert, seen.details)
            seen.missing = sites.uncovered(target.domains, cert.names)
            if why is None:
                seen.action = "in sync"
                return seen
            logger.info("Imperva %s is out of sync with %s: %s; uploading again",
                        target.label(), cert.fullchain_path, why)
            return self._upload_one(cert, target, f"repaired ({why})")
        outcomes = self._each(one, targets)
        changed = [o for o in outcomes if o.action != "in sync"]
        if changed:
            self._record(cert, lineage, version, changed)
        return outcomes

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
                outcomes: Sequence[SiteOutcome]) -> None:
        for outcome in outcomes:
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
                rep.notes += [f"Imperva {t.label()} chosen for " + ", ".join(t.names)
                              for t in found.targets]
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

    # -- what the doors call ----------------------------------------------------------------

    def deploy(self, files: LineageFiles, *, action: str = "uploaded", pin: bool = False) -> Report:
        """Uploads the certificate to every site of its names, reads each back, records it."""
        cert = self.load(files)
        rep = Report(f"Imperva upload of {cert.describe()}")
        targets = self._resolve(files.name, cert.names, rep)
        # An explicit upload ends the hold a rollback put on self-healing; a rollback sets it.
        self.records.lineage(files.name)["pinned"] = cert.input_hash if pin else None
        rep.outcomes = self.deployer.upload(cert, targets, files.name, files.version, action)
        self.context.deployed.add((files.name, cert.input_hash))
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
        rep.outcomes = [o for o in outcomes if o.action != "in sync" or o.failed]
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
            why = None if outcome.error else difference(cert, outcome.details)
            fatal, warning = report.flags(outcome.details, outcome.missing)
            held = (outcome.details or {}).get("inputHash")
            if outcome.error:
                row.state, row.detail = "unreachable", outcome.error
            elif pinned and why and held == pinned:
                version = self.records.version_of(files.name, pinned)
                row.state = "rolled back"
                row.detail = (f"held at archive version {version} by a rollback; self-healing is "
                              f"paused until the current certificate is uploaded again")
            elif why:
                row.state, row.detail = "drifted", why
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
        deployment = Deployment(settings_for(step.lineage), config_dir, context=context)
        files = LineageFiles(step.lineage, step.fullchain, step.privkey)
        cert = deployment.load(files)
        rep = Report(f"Imperva rollback of {step.lineage}")
        deployment.records.lineage(step.lineage)["pinned"] = cert.input_hash
        targets = [sites.SiteTarget(site_id, domain) for site_id, domain in step.sites]
        rep.outcomes = deployment.deployer.upload(
            cert, targets, step.lineage, step.version,
            action=f"rolled back to archive version {step.version}")
        deployment._save_records(rep)
        reports.append(rep)
    return reports
