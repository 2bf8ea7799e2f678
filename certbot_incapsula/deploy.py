"""Uploads a local certificate to its Imperva sites, reads each site back, and records it.

The orchestration between the API client, the certificate files, the site matching and the
records. Knows nothing of certbot: the installer turns its outcomes into messages and errors.
"""
from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, TypeVar

from certbot_incapsula import report, sites
from certbot_incapsula.api import ImpervaClient, ImpervaError
from certbot_incapsula.certificate import LocalCertificate
from certbot_incapsula.records import Records

logger = logging.getLogger(__name__)

# As many calls in flight as the account may make in a second: the client's rate limiter, not the
# pool, sets the pace (4 workers capped a fleet at 4 / latency calls a second).
WORKERS = 10
T = TypeVar("T")
R = TypeVar("R")


@dataclass
class SiteOutcome:
    target: sites.SiteTarget
    action: str  # uploaded, repaired, in sync, reachable, failed
    details: Optional[Dict[str, Any]] = None  # the flags Imperva answered or holds
    error: Optional[str] = None

    @property
    def fatal_flags(self) -> List[str]:
        return report.flags(self.details)[0]

    @property
    def warnings(self) -> List[str]:
        return report.flags(self.details)[1]

    @property
    def failed(self) -> bool:
        return self.error is not None or bool(self.fatal_flags)

    def lines(self) -> List[str]:
        return report.site_lines(self.target.label(), self.action, self.details, self.error)


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


class Deployer:
    def __init__(self, client: ImpervaClient, records: Records, *, workers: int = WORKERS) -> None:
        self.client = client
        self.records = records
        self.workers = workers

    def _each(self, fn: Callable[[T], R], items: Sequence[T]) -> List[R]:
        if len(items) <= 1:
            return [fn(item) for item in items]
        with ThreadPoolExecutor(max_workers=min(self.workers, len(items))) as pool:
            return list(pool.map(fn, items))

    # -- which sites ------------------------------------------------------------------------

    def resolve(self, lineage: str, names: Sequence[str], site_ids: Sequence[int]) -> sites.Resolution:
        """Explicit ids, else the sites found before for the same names, else discovery."""
        if site_ids:
            return sites.explicit(site_ids, names)
        cached = self.records.cached_sites(lineage, list(names))
        if cached:
            targets = [sites.SiteTarget(int(t["site_id"]), t.get("domain"), list(t.get("names", [])))
                       for t in cached]
            return sites.Resolution(targets, [], False)
        found = sites.match_names(names, self.client.list_sites())
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
        return sites.match_names([name], self.client.list_sites()).targets

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
            seen = self._status(target)
            if seen.error:
                return seen
            why = difference(cert, seen.details)
            if why is None:
                seen.action = "in sync"
                return seen
            logger.warning("Imperva %s is out of sync with %s: %s; uploading again",
                           target.label(), cert.fullchain_path, why)
            return self._upload_one(cert, target, f"repaired ({why})")
        outcomes = self._each(one, targets)
        changed = [o for o in outcomes if o.action != "in sync"]
        if changed:
            self._record(cert, lineage, version, changed)
        return outcomes

    def check(self, targets: Sequence[sites.SiteTarget]) -> List[SiteOutcome]:
        """Read-only: the credentials work and each site answers (for --dry-run)."""
        return self._each(self._status, targets)

    def _status(self, target: sites.SiteTarget) -> SiteOutcome:
        """What the site holds now ("reachable"), or why it could not be read ("failed")."""
        try:
            status = self.client.site_status(target.site_id)
        except ImpervaError as exc:
            return SiteOutcome(target, "failed", None, str(exc))
        target.domain = target.domain or status.get("domain")
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
        self.records.save()
