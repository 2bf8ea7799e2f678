"""Turns Imperva's answers into the lines a user reads. Knows nothing of certbot."""
from __future__ import annotations

import datetime
from typing import Any, Dict, List, Mapping, Optional, Protocol, Sequence, Tuple

COVERAGE_FLAGS = ("coverageError", "hostnameMismatchError")
# A certificate with one of these is not served as trusted: the run must fail.
FATAL_FLAGS = {
    "validityError": "the certificate is expired or not yet valid",
    "chainError": "the chain is incomplete or does not lead to a trusted root",
    "revocationError": "the certificate is revoked",
}
COVERAGE_MEANING = "the certificate does not cover every domain of this site"


def flags(details: Optional[Mapping[str, Any]],
          missing: Sequence[str] = ()) -> Tuple[List[str], List[str]]:
    """(fatal, warning) lines for the ...Error flags that are set, each with its meaning;
    `missing` names the site's domains that the certificate does not cover, when known."""
    fatal: List[str] = []
    warning: List[str] = []
    for name, value in sorted((details or {}).items()):
        if not name.endswith("Error") or value not in (True, "true", "True", 1):
            continue
        if name in FATAL_FLAGS:
            fatal.append(f"{name}: {FATAL_FLAGS[name]}")
        elif name in COVERAGE_FLAGS:
            lacks = (": it lacks " + ", ".join(missing) + " (add -d for each)") if missing else ""
            warning.append(f"{name}: {COVERAGE_MEANING}{lacks}")
        else:
            warning.append(f"{name}: set by Imperva (see its documentation for this flag)")
    return fatal, warning


def expiry(details: Optional[Mapping[str, Any]]) -> str:
    value = (details or {}).get("expirationDate")
    try:
        when = datetime.datetime.fromtimestamp(int(value) / 1000, datetime.timezone.utc)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError, OSError):
        return "unknown"
    return f"{when:%Y-%m-%d %H:%M} UTC"


def active(details: Optional[Mapping[str, Any]]) -> str:
    value = (details or {}).get("active")
    if value is None:
        return "unknown"
    return "yes" if value in (True, "true", "True", "active", 1) else "no"


def site_lines(label: str, action: str, details: Optional[Mapping[str, Any]],
               error: Optional[str], missing: Sequence[str] = (),
               aftermath: Optional[str] = None) -> List[str]:
    """The plain per-site report: what happened, expiry, active, each flag with its meaning, and
    what was done about a flagged upload (`aftermath`)."""
    if error and details is None:
        return [f"Imperva {label}: FAILED - {error}"]
    head = f"Imperva {label}: {action}; expires {expiry(details)}; active: {active(details)}"
    fatal, warning = flags(details, missing)
    if not fatal and not warning:
        head += "; no error flags"
    lines = [head]
    lines += [f"  ERROR {line}" for line in fatal]
    lines += [f"  WARNING {line}" for line in warning]
    if aftermath:
        lines.append(f"  {aftermath}")
    if error:
        lines.append(f"  FAILED - {error}")
    return lines


class _Site(Protocol):
    @property
    def site_id(self) -> int: ...


class _Failed(Protocol):
    """A failed site's outcome as failure() reads it (outcomes.SiteOutcome, which imports this
    module: a protocol keeps the imports one way)."""

    @property
    def target(self) -> _Site: ...
    @property
    def error(self) -> Optional[str]: ...
    @property
    def aftermath(self) -> Optional[str]: ...
    @property
    def fatal_flags(self) -> List[str]: ...


def failure(failed: Sequence[_Failed], total: int) -> Optional[str]:
    """One sentence for a run in which sites failed: each distinct reason once, with its sites."""
    if not failed:
        return None
    reasons: Dict[str, List[str]] = {}
    for outcome in failed:
        why = outcome.error or ("Imperva flagged the certificate uploaded (" + ", ".join(
            flag.split(":")[0] for flag in outcome.fatal_flags) + ")"
            + (f"; {outcome.aftermath[0].lower()}{outcome.aftermath[1:]}"
               if outcome.aftermath else ""))
        reasons.setdefault(why, []).append(str(outcome.target.site_id))
    said = "; ".join(("site " if len(ids) == 1 else "sites ") + ", ".join(ids) + ": " + why
                     for why, ids in reasons.items())
    return f"Imperva: {len(failed)} of {total} site(s) failed. {said}"
