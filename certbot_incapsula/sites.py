"""Which Imperva sites serve which names of a certificate. Knows nothing of certbot."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence


class SiteMatchError(ValueError):
    """The names cannot be mapped to sites without guessing; the message lists them."""


@dataclass
class SiteTarget:
    """One Imperva site that gets the certificate, and the names it was chosen for."""

    site_id: int
    domain: Optional[str] = None
    names: List[str] = field(default_factory=list)
    domains: List[str] = field(default_factory=list)  # all the site serves, once read from Imperva

    def label(self) -> str:
        return f"site {self.site_id}" + (f" ({self.domain})" if self.domain else "")


@dataclass
class Resolution:
    targets: List[SiteTarget]
    unmatched: List[str]
    discovered: bool  # True when sites/list was read to find them


def _site_names(site: Mapping[str, Any]) -> List[str]:
    names = {str(site.get(key) or "").strip().lower().rstrip(".") for key in ("domain", "display_name")}
    return sorted(name for name in names if name)


def match_names(names: Sequence[str], sites: Iterable[Mapping[str, Any]]) -> Resolution:
    """Maps certificate names to sites: by domain (or display name); a bare name also matches
    the site of its www. name, which Imperva serves for both. Raises SiteMatchError when a
    name matches several sites."""
    exact: Dict[str, List[Mapping[str, Any]]] = {}
    for site in sites:
        for site_name in _site_names(site):
            exact.setdefault(site_name, [])
            if site not in exact[site_name]:
                exact[site_name].append(site)

    chosen: Dict[int, SiteTarget] = {}
    unmatched: List[str] = []
    ambiguous: List[str] = []
    for name in names:
        key = name.lower().rstrip(".")
        found = exact.get(key) or exact.get("www." + key, [])
        ids = sorted({int(site["site_id"]) for site in found})
        if not ids:
            unmatched.append(name)
        elif len(ids) > 1:
            ambiguous.append(f"{name} -> sites {', '.join(map(str, ids))}")
        else:
            site = found[0]
            target = chosen.setdefault(ids[0], SiteTarget(ids[0], str(site.get("domain") or "")))
            target.names.append(name)
    if ambiguous:
        raise SiteMatchError(
            "These names match several Imperva sites: " + "; ".join(ambiguous)
            + ". Choose with --incapsula-site-id."
        )
    return Resolution(sorted(chosen.values(), key=lambda t: t.site_id), unmatched, True)


def explicit(site_ids: Sequence[int], names: Sequence[str]) -> Resolution:
    """The user's --incapsula-site-id: every site gets the whole certificate."""
    return Resolution([SiteTarget(site_id, None, list(names)) for site_id in site_ids], [], False)


def covers(name: str, domain: str) -> bool:
    """Whether a certificate name covers a domain: equal, or a wildcard one label above it."""
    name, domain = name.lower().rstrip("."), domain.lower().rstrip(".")
    if name == domain:
        return True
    if name.startswith("*.") and "." in domain:
        head, rest = domain.split(".", 1)
        return bool(head) and rest == name[2:]
    return False


def uncovered(domains: Sequence[str], names: Sequence[str]) -> List[str]:
    """The site's domains that none of the certificate's names covers."""
    return [d for d in domains if not any(covers(n, d) for n in names)]
