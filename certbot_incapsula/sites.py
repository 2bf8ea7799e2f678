"""Which Imperva sites serve which names of a certificate. Knows nothing of certbot."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Set, Union


class SiteMatchError(ValueError):
    """The names cannot be mapped to sites without guessing; the message lists them."""


@dataclass
class SiteTarget:
    """One Imperva site that gets the certificate, and the names it was chosen for."""

    site_id: int
    domain: Optional[str] = None
    names: List[str] = field(default_factory=list)
    domains: List[str] = field(default_factory=list)  # all the site serves, once read from Imperva
    # Chosen only because a wildcard name covers its domain: a site someone else's valid
    # certificate serves is then left alone (the user named no such site).
    wildcard: bool = False

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


def is_wildcard(name: str) -> bool:
    return name.startswith("*.")


class SiteIndex:
    """An account's sites by the names they serve, built once per listing: every lineage of a
    renew matches its names against the same one."""

    def __init__(self, sites: Iterable[Mapping[str, Any]]) -> None:
        self.exact: Dict[str, Dict[int, Mapping[str, Any]]] = {}
        self.below: Dict[str, Dict[int, Mapping[str, Any]]] = {}  # parent -> sites one label below
        for site in sites:
            site_id = int(site["site_id"])
            for site_name in _site_names(site):
                self.exact.setdefault(site_name, {})[site_id] = site
                head, _, parent = site_name.partition(".")
                if head and head != "*" and parent:
                    self.below.setdefault(parent, {})[site_id] = site


def match_names(names: Sequence[str],
                sites: Union[SiteIndex, Iterable[Mapping[str, Any]]]) -> Resolution:
    """Maps certificate names to sites: by domain (or display name); a bare name also matches
    the site of its www. name, which Imperva serves for both; a wildcard `*.x` matches every
    site exactly one label below x (never x itself, never deeper), each once. Raises
    SiteMatchError when a name that is not a wildcard matches several sites."""
    index = sites if isinstance(sites, SiteIndex) else SiteIndex(sites)
    exact, below = index.exact, index.below

    chosen: Dict[int, SiteTarget] = {}
    by_exact: Set[int] = set()  # sites some name chose without a wildcard
    unmatched: List[str] = []
    ambiguous: List[str] = []
    for name in names:
        key = name.lower().rstrip(".")
        found = exact.get(key) or ({} if is_wildcard(key) else exact.get("www." + key, {}))
        if len(found) > 1:
            ambiguous.append(f"{name} -> sites {', '.join(map(str, sorted(found)))}")
            continue
        picked = [(site, False) for site in found.values()]
        if is_wildcard(key):
            picked += [(site, True) for site_id, site in sorted(below.get(key[2:], {}).items())
                       if site_id not in found]
        if not picked:
            unmatched.append(name)
        for site, via_wildcard in picked:
            site_id = int(site["site_id"])
            target = chosen.setdefault(site_id, SiteTarget(site_id, str(site.get("domain") or "")))
            if name not in target.names:
                target.names.append(name)
            if not via_wildcard:
                by_exact.add(site_id)
    if ambiguous:
        raise SiteMatchError(
            "These names match several Imperva sites: " + "; ".join(ambiguous)
            + ". Choose with --incapsula-site-id."
        )
    for target in chosen.values():
        target.wildcard = target.site_id not in by_exact
    return Resolution(sorted(chosen.values(), key=lambda t: t.site_id), unmatched, True)


# Above this many sites, the run says how many sites each name chose instead of listing them.
CHOSEN_LINES = 10


def chosen_lines(targets: Sequence[SiteTarget], limit: int = CHOSEN_LINES) -> List[str]:
    """What discovery chose: one line per site, or a count per name when there are many."""
    if len(targets) <= limit:
        return [f"Imperva {t.label()} chosen for " + ", ".join(t.names) for t in targets]
    per_name: Dict[str, int] = {}
    for target in targets:
        for name in target.names:
            per_name[name] = per_name.get(name, 0) + 1
    return [f"Imperva: {len(targets)} sites chosen: "
            + ", ".join(f"{count} for {name}" for name, count in per_name.items())
            + " (each site's outcome follows)"]


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
