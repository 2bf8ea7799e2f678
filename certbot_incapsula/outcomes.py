"""The words the core, its parts and both doors share: a site's outcome, a run's report, a status
row, a lineage's files, and the refusal raised before anything is sent to Imperva. Plain data:
nothing here calls Imperva or knows of certbot.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Dict, List, Optional

from certbot_incapsula import report, slots

if TYPE_CHECKING:
    from certbot_incapsula import sites
    from certbot_incapsula.certificate import LocalCertificate


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
    # held by other lineage, left alone, newer on site
    detail: str
    known_wrong: bool = False  # not verifiable, yet something on the site is known to be wrong
    key_type: Optional[str] = None  # the lineage's certificate's: RSA or ECC
    site_expires: Optional[float] = None  # Unix time: what the site holds for this key type
    edge_expires: Optional[float] = None  # Unix time: what the edge served, where it was checked


def _version_of(path: str) -> Optional[int]:
    match = re.search(r"(\d+)\.pem$", os.path.basename(os.path.realpath(path)))
    return int(match.group(1)) if match else None
