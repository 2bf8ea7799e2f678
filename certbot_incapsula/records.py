"""What was deployed where: the plugin's own small state file, for self-healing, rollback,
the status view and cached site discovery. No secret is ever written here.

The file is JSON at <certbot config dir>/incapsula/state.json, mode 0600, replaced atomically.
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from typing import Any, Dict, List, Mapping, Optional

HISTORY_LIMIT = 50  # certificates kept per lineage: enough for any rollback certbot's archive allows
HISTORY_MAX_ENTRIES = 5000  # entries (one per site and upload) per lineage, whatever the certificates
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


class Records:
    def __init__(self, config_dir: str) -> None:
        self.path = os.path.join(config_dir, "incapsula", "state.json")
        self._data: Optional[Dict[str, Any]] = None

    def _load(self) -> Dict[str, Any]:
        if self._data is None:
            try:
                with open(self.path, encoding="utf-8") as handle:
                    data = json.load(handle)
                self._data = data if isinstance(data, dict) else {}
            except (OSError, ValueError):
                # A lost or damaged state file costs one discovery, nothing more.
                self._data = {}
            self._data.setdefault("version", 1)
            if not isinstance(self._data.get("lineages"), dict):
                self._data["lineages"] = {}
            self._data["sites"] = _valid_sites(self._data.get("sites"))
            if not isinstance(self._data.get("seq"), int) or self._data["seq"] < 0:
                self._data["seq"] = max([slot["seq"] for site in self._data["sites"].values()
                                         for slot in site["slots"].values()] or [0])
        return self._data

    def lineage(self, name: str) -> Dict[str, Any]:
        lineages = self._load()["lineages"]
        entry = lineages.get(name)
        if not isinstance(entry, dict):  # absent, or damaged: start it again
            entry = lineages[name] = {"sites": None, "history": []}
        if not isinstance(entry.get("history"), list):
            entry["history"] = []
        entry["history"] = [h for h in entry["history"] if isinstance(h, dict)]
        return entry

    def lineage_names(self) -> List[str]:
        return sorted(self._load()["lineages"])

    def cached_sites(self, name: str, names: List[str]) -> Optional[List[Dict[str, Any]]]:
        """The sites found for this lineage before, if its names have not changed since."""
        entry = self._load()["lineages"].get(name)
        cache = entry.get("sites") if isinstance(entry, dict) else None
        if not isinstance(cache, dict):
            return None
        cached, targets = cache.get("names"), cache.get("targets")
        if not isinstance(cached, list) or not isinstance(targets, list):
            return None
        if sorted(str(n) for n in cached) != sorted(names):
            return None
        return [t for t in targets if isinstance(t, dict) and "site_id" in t]

    def remember_sites(self, name: str, names: List[str], targets: List[Dict[str, Any]]) -> None:
        self.lineage(name)["sites"] = {"names": sorted(names), "targets": targets}

    def add_deployment(self, name: str, entry: Dict[str, Any]) -> None:
        entry = dict(entry, time=entry.get("time") or time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                      time.gmtime()))
        history = self.lineage(name)["history"]
        history.append(entry)
        # The cap counts certificates, not entries: one deployment to many sites is many entries.
        newest: List[Any] = []
        for item in reversed(history):
            if item.get("input_hash") not in newest:
                newest.append(item.get("input_hash"))
        kept = newest[:HISTORY_LIMIT]
        history[:] = [h for h in history if h.get("input_hash") in kept][-HISTORY_MAX_ENTRIES:]

    def history(self, name: str) -> List[Dict[str, Any]]:
        return list(self.lineage(name)["history"])

    def version_of(self, name: str, input_hash: str) -> Optional[int]:
        """The archive version a certificate of this lineage was deployed as, if recorded."""
        for entry in reversed(self.history(name)):
            version = entry.get("archive_version")
            if entry.get("input_hash") == input_hash and isinstance(version, int):
                return version
        return None

    # -- what each site's key-type slot holds, and which lineage it belongs to ----------------
    # Imperva keeps one custom certificate per site and key type. "sites" -> site id -> "slots" ->
    # "RSA"/"ECC" -> {owner, lineage, input_hash, seq}: `owner` is the lineage deployed there last
    # explicitly (run, install, renewal, the command's deploy, rollback); `lineage`, `input_hash`
    # and `seq` are this host's last upload to the slot, repairs included (`seq` orders uploads).

    def slot(self, site_id: int, key_type: str) -> Optional[Dict[str, Any]]:
        site = self._load()["sites"].get(str(site_id))
        found = site["slots"].get(key_type) if site else None
        return dict(found) if found else None

    def slots(self, site_id: int) -> Dict[str, Dict[str, Any]]:
        site = self._load()["sites"].get(str(site_id))
        return {kind: dict(slot) for kind, slot in (site["slots"] if site else {}).items()}

    def record_upload(self, site_id: int, key_type: str, lineage: str, input_hash: str,
                      explicit: bool) -> Optional[str]:
        """Notes an upload that Imperva took; an explicit one makes `lineage` the slot's owner.
        Returns the owner it took the slot from, if another lineage."""
        data = self._load()
        data["seq"] += 1
        site = data["sites"].setdefault(str(site_id), {"slots": {}})
        slot = site["slots"].setdefault(key_type, {})
        before = slot.get("owner")
        slot.update(lineage=lineage, input_hash=input_hash, seq=data["seq"])
        if explicit or not before:
            slot["owner"] = lineage
        return before if explicit and before and before != lineage else None

    def mark_status_not_latest(self, site_id: int) -> None:
        """Imperva showed another key type's certificate right after an upload: its status does
        not show the newest upload for this site, so no conclusion may rest on that order."""
        self._load()["sites"].setdefault(str(site_id), {"slots": {}})["status_not_latest"] = True

    def status_not_latest(self, site_id: int) -> bool:
        site = self._load()["sites"].get(str(site_id))
        return bool(site and site.get("status_not_latest"))

    def find_certificate(self, held: Mapping[str, Any]) -> Optional[Dict[str, Any]]:
        """The newest deployment entry (with its "lineage") of the certificate Imperva shows,
        found by input hash, else serial, else fingerprint; None if this host never uploaded it."""
        wanted = [("input_hash", str(held.get("inputHash") or "")),
                  ("serial", _hex(held.get("serialNumber"))),
                  ("fingerprint", _hex(str(held.get("fingerPrint") or "").split("=")[-1]))]
        for key, value in wanted:
            if not value:
                continue
            for name in self.lineage_names():
                for entry in reversed(self.history(name)):
                    mine = entry.get(key)
                    if mine and (mine == value if key == "input_hash" else _hex(mine) == value):
                        return dict(entry, lineage=name)
        return None

    def uploaded_to(self, site_id: int) -> bool:
        """Whether this host ever uploaded a certificate to the site successfully."""
        return str(site_id) in self._load()["sites"] or any(
            h.get("site_id") == site_id and h.get("outcome") == "ok"
            for name in self.lineage_names() for h in self.history(name))

    def save(self) -> None:
        if self._data is None:
            return
        directory = os.path.dirname(self.path)
        os.makedirs(directory, mode=0o700, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".state-", dir=directory)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                os.fchmod(handle.fileno(), 0o600)
                json.dump(self._data, handle, indent=1, sort_keys=True)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
