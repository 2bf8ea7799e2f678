"""Read-only views: the dry run's check that the key works and each site answers, and the status
rows (in sync, drifted, flagged, rolled back, unreachable, error, not verifiable, held by other
lineage, left alone) for people and monitors. Nothing is written anywhere. Knows nothing of
certbot or of argv.
"""
from __future__ import annotations

import os
from typing import List, Sequence

from certbot_incapsula import certificate, report, sites, slots
from certbot_incapsula.api_errors import ImpervaError
from certbot_incapsula.core.edge_requests import EdgeRequests
from certbot_incapsula.core.lineage import _include
from certbot_incapsula.outcomes import LineageFiles, Refusal, Report, StatusRow


class StatusView(EdgeRequests):
    """What each site of a lineage holds, without changing anything."""

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
            row = StatusRow(files.name, outcome.target.site_id, outcome.target.domain, "", "",
                            key_type=cert.key_type)
            checked.append((row, outcome.target))
            verdict = None if outcome.error else self.deployer.judge(
                cert, files.name, outcome.target, outcome.details)
            row.site_expires = slots.slot_expiry(cert, outcome.details, verdict, self.records)
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
            elif verdict.action == slots.NEWER_ON_SITE:
                row.state = slots.NEWER_ON_SITE
                row.detail = f"{verdict.why}; {slots.take_back(files.name)}"
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
