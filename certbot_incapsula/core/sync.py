"""The self-check of one lineage (`sync`, run by every `certbot renew` and by
`certbot-incapsula sync`): nothing when the lineage was just uploaded or a rollback holds it,
else each site judged and repaired where it does not hold the current certificate (per site:
`Deployer.sync` in upload.py, which asks slots.judge), then the edge looked at. Knows nothing of
certbot or of argv.
"""
from __future__ import annotations

import logging
from typing import Dict, List, Optional

from certbot_incapsula import certificate, sites, slots
from certbot_incapsula.core.edge_requests import EdgeRequests
from certbot_incapsula.core.lineage import _sites_of
from certbot_incapsula.outcomes import LineageFiles, Report, SiteOutcome

logger = logging.getLogger(__name__)


class SelfCheck(EdgeRequests):
    """Keeps a lineage's sites holding its current certificate."""

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
            return self.deployer.sync(cert, targets, files.name, files.version, refusal, lambda:
                                      certificate.replaced(cert, files.fullchain, files.key))

        outcomes = self._rediscover(files.name, cert.names, rep, found, sync(found.targets), sync)
        self.edge_sync(cert, files.name, outcomes, rep, look_at_edge)
        # What changed or failed; a site left to another lineage or certificate is a warning.
        rep.outcomes = [o for o in outcomes if o.verdict is None or o.action == slots.REPLACED
                        or (o.action == slots.IN_SYNC and o.failed)]
        self._explain(rep, files.name, cert, outcomes)
        if rep.outcomes:
            self._save_records(rep, f"The self-check of {files.name} on "
                                    f"{_sites_of(rep.outcomes)}")
        else:
            logger.info("Imperva: %s is in sync on %d site(s)", files.name, len(outcomes))
        return rep
