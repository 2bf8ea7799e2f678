"""Issue 12 as the core asks for it: the pre-flight before the CA is asked, the wait for each
site's edge after an upload, and one handshake per site in `sync` and `status`. The probes and
handshakes themselves are edge_checks.py's and edge.py's. Knows nothing of certbot or of argv.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Mapping, Sequence, Tuple

from certbot_incapsula import sites, slots
from certbot_incapsula.api_errors import ImpervaError
from certbot_incapsula.certificate import LocalCertificate
from certbot_incapsula.core.lineage import LineageBase
from certbot_incapsula.outcomes import Report, SiteOutcome, StatusRow

if TYPE_CHECKING:
    from certbot_incapsula import edge_checks  # loaded when first needed (certbot's start-up)

logger = logging.getLogger(__name__)


class EdgeRequests(LineageBase):
    """What the world sees through each site's Imperva edge."""

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
            row.edge_expires = seen.expires
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
