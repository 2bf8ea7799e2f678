"""Which certificate `certbot rollback --checkpoints N` puts back, from the deployment records."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from certbot_incapsula.records import Records


@dataclass
class Step:
    lineage: str
    version: Optional[int]
    fullchain: str
    privkey: str
    sites: List[Tuple[int, Optional[str]]] = field(default_factory=list)


def _site_id(entry: Dict[str, Any]) -> Optional[int]:
    try:
        return int(entry["site_id"])
    except (KeyError, TypeError, ValueError):
        return None


def plan(records: Records, back: int) -> List[Step]:
    """For each lineage, the certificate uploaded `back` distinct deployments ago and the sites
    that held it. Raises ValueError when no lineage has that many deployments on record."""
    if back < 1:
        raise ValueError("--checkpoints must be 1 or more.")
    steps: List[Step] = []
    for name in records.lineage_names():
        # Entries without a certificate identity, paths or site cannot be put back.
        good = [h for h in records.history(name) if h.get("outcome") == "ok"
                and isinstance(h.get("input_hash"), str) and h.get("fullchain") and h.get("privkey")
                and _site_id(h) is not None]
        order: List[str] = []  # distinct certificates, by their last successful deployment
        for entry in good:
            if entry["input_hash"] in order:
                order.remove(entry["input_hash"])
            order.append(entry["input_hash"])
        if len(order) <= back:
            continue
        wanted = order[-1 - back]
        held = [h for h in good if h.get("input_hash") == wanted]
        step = Step(name, held[-1].get("archive_version"), held[-1]["fullchain"],
                    held[-1]["privkey"])
        for entry in held:
            site = (int(entry["site_id"]), entry.get("domain"))
            known = [i for i, (sid, _) in enumerate(step.sites) if sid == site[0]]
            if not known:
                step.sites.append(site)
            elif site[1] and not step.sites[known[0]][1]:
                step.sites[known[0]] = site  # one entry per site, with its domain when known
        steps.append(step)
    if not steps and records.lineage_names():
        raise ValueError(f"Imperva: fewer than {back + 1} different certificates are on record "
                         "for every lineage: there is nothing that far back to roll back to.")
    return steps
