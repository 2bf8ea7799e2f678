"""What a sound records document holds: every part of state.json this plugin reads, checked on
read. A part that is not what this version writes is dropped (it costs a rediscovery or one
upload, never a wrong conclusion); `sound` says how many parts were dropped.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

from certbot_incapsula.held import is_fingerprint

HISTORY_LIMIT = 50  # certificates kept per lineage: enough for any rollback certbot's archive allows
HISTORY_MAX_ENTRIES = 5000  # entries (one per site and upload) per lineage, whatever the certificates
MAX_BYTES = 64 * 1024 * 1024  # far above any real file (5000 entries x lineages); bigger is damage
MAX_DEPTH = 32  # nesting kept in fields this module does not know (a future version's, say)
OUTCOMES = ("ok", "failed")
_TEXT_FIELDS = ("domain", "serial", "fingerprint", "auth_type", "fullchain", "privkey", "action",
                "error", "time")


def _site_id(value: Any) -> Optional[int]:
    """A site id as Imperva gives it: a positive number (digits in a string too), never a bool."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    return value if isinstance(value, int) and 0 < value < 2 ** 63 else None


def _shallow(value: Any) -> bool:
    """Whether a value nests at most MAX_DEPTH deep (json.dump recurses; a deeper one would fail)."""
    stack: List[Tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_DEPTH:
            return False
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
    return True


def _extras(entry: Dict[str, Any], known: Tuple[str, ...]) -> Dict[str, Any]:
    return {k: v for k, v in entry.items() if k not in known and _shallow(v)}


def _target(value: Any) -> Optional[Dict[str, Any]]:
    if not isinstance(value, dict):
        return None
    site_id = _site_id(value.get("site_id"))
    names = value.get("names", [])
    domain = value.get("domain")
    if site_id is None or not isinstance(names, list) or \
            not all(isinstance(n, str) for n in names) or \
            not (domain is None or isinstance(domain, str)):
        return None
    return {**_extras(value, ("site_id", "domain", "names")), "site_id": site_id,
            "domain": domain, "names": list(names)}


def _sites(value: Any) -> Optional[Dict[str, Any]]:
    """A lineage's cached sites, or None: one bad target spoils the whole cache (a partial cache
    would upload to fewer sites than the names need)."""
    if not isinstance(value, dict):
        return None
    names, targets = value.get("names"), value.get("targets")
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names) or \
            not isinstance(targets, list) or not targets:
        return None
    clean = [_target(t) for t in targets]
    if any(t is None for t in clean):
        return None
    return {**_extras(value, ("names", "targets")), "names": list(names), "targets": clean}


def _history_entry(value: Any) -> Optional[Dict[str, Any]]:
    """A deployment entry; None when a field that matters is wrong (a wrong site, or an
    unknown certificate or path, must not steer a rollback or a restore)."""
    if not isinstance(value, dict):
        return None
    site_id = _site_id(value.get("site_id"))
    input_hash = value.get("input_hash")
    version = value.get("archive_version", None)
    flags = value.get("flags", [])
    if site_id is None or not isinstance(input_hash, str) or not input_hash or \
            any(not (value.get(key) is None or isinstance(value.get(key), str))
                for key in _TEXT_FIELDS) or \
            not (version is None or (isinstance(version, int) and not isinstance(version, bool)
                                     and version >= 0)) or \
            value.get("outcome") not in OUTCOMES or \
            not isinstance(flags, list) or not all(isinstance(f, str) for f in flags) or \
            (value.get("fingerprint") is not None and not is_fingerprint(value["fingerprint"])):
        return None
    entry = _extras(value, ("site_id", "input_hash", "archive_version", "outcome", "flags",
                            *_TEXT_FIELDS))
    entry.update({key: value.get(key) for key in _TEXT_FIELDS})
    entry.update({"site_id": site_id, "input_hash": input_hash, "archive_version": version,
                  "outcome": value["outcome"], "flags": list(flags)})
    return entry


def _lineage(value: Any) -> Tuple[Dict[str, Any], int]:
    """A lineage's entry made sound, and how many of its parts were dropped."""
    if not isinstance(value, dict):
        return {"sites": None, "history": [], "pinned": None}, 1
    dropped = 0
    sites = _sites(value.get("sites"))
    dropped += sites is None and value.get("sites") is not None
    raw = value.get("history", [])
    if not isinstance(raw, list):
        raw, dropped = [], dropped + 1
    history = [h for h in map(_history_entry, raw) if h is not None]
    dropped += len(raw) - len(history)
    pinned = value.get("pinned")
    if pinned is not None and not (isinstance(pinned, str) and pinned):
        pinned, dropped = None, dropped + 1
    entry = _extras(value, ("sites", "history", "pinned"))
    entry.update({"sites": sites, "history": history, "pinned": pinned})
    return entry, dropped


def sound(data: Any) -> Tuple[Dict[str, Any], int]:
    """The document with every field this plugin reads checked: wrong parts are dropped.
    Returns the sound document and how many parts were dropped."""
    if not isinstance(data, dict):
        return {"version": 1, "lineages": {}}, 1
    lineages = data.get("lineages", {})
    dropped = 0
    if not isinstance(lineages, dict):
        lineages, dropped = {}, 1
    clean: Dict[str, Any] = {}
    for name, value in lineages.items():
        clean[name], lost = _lineage(value)
        dropped += lost
    out = _extras(data, ("version", "lineages"))
    out.update({"version": 1, "lineages": clean})
    return out, dropped

KEY_TYPES = ("RSA", "ECC")  # Imperva's auth_type: one slot of each per site


def _hex(value: Any) -> str:
    return str(value or "").replace(":", "").replace(" ", "").upper().lstrip("0")


def _valid_slot(slot: Any) -> bool:
    return (isinstance(slot, dict)
            and all(isinstance(slot.get(k), str) and slot[k] for k in ("owner", "lineage", "input_hash"))
            and type(slot.get("seq")) is int)


def _valid_sites(raw: Any) -> Dict[str, Dict[str, Any]]:
    """The "sites" part of the file, each entry checked: one that is not what this version
    writes is left out (it costs one upload, never a wrong conclusion)."""
    sites: Dict[str, Dict[str, Any]] = {}
    for site_id, site in (raw.items() if isinstance(raw, dict) else ()):
        if not str(site_id).isdigit() or not isinstance(site, dict):
            continue
        slots = site.get("slots")
        slots = slots if isinstance(slots, dict) else {}
        entry: Dict[str, Any] = {"slots": {
            kind: {k: slot[k] for k in ("owner", "lineage", "input_hash", "seq")}
            for kind, slot in slots.items() if kind in KEY_TYPES and _valid_slot(slot)}}
        if site.get("status_not_latest") is True:
            entry["status_not_latest"] = True
        if entry["slots"] or len(entry) > 1:
            sites[str(site_id)] = entry
    return sites
