"""What was deployed where: the plugin's own small state file, for self-healing, rollback,
the status view and cached site discovery. No secret is ever written here.

The file is JSON at <certbot config dir>/incapsula/state.json, mode 0600, replaced atomically.
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from typing import Any, Dict, List, Optional

HISTORY_LIMIT = 50  # certificates kept per lineage: enough for any rollback certbot's archive allows
HISTORY_MAX_ENTRIES = 5000  # entries (one per site and upload) per lineage, whatever the certificates


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
