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

HISTORY_LIMIT = 50  # deployments kept per lineage: enough for any rollback certbot's archive allows


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
            self._data.setdefault("lineages", {})
        return self._data

    def lineage(self, name: str) -> Dict[str, Any]:
        return self._load()["lineages"].setdefault(name, {"sites": None, "history": []})

    def lineage_names(self) -> List[str]:
        return sorted(self._load()["lineages"])

    def cached_sites(self, name: str, names: List[str]) -> Optional[List[Dict[str, Any]]]:
        """The sites found for this lineage before, if its names have not changed since."""
        entry = self._load()["lineages"].get(name) or {}
        cache = entry.get("sites")
        if isinstance(cache, dict) and sorted(cache.get("names") or []) == sorted(names):
            return list(cache.get("targets") or [])
        return None

    def remember_sites(self, name: str, names: List[str], targets: List[Dict[str, Any]]) -> None:
        self.lineage(name)["sites"] = {"names": sorted(names), "targets": targets}

    def add_deployment(self, name: str, entry: Dict[str, Any]) -> None:
        entry = dict(entry, time=entry.get("time") or time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                      time.gmtime()))
        history = self.lineage(name)["history"]
        history.append(entry)
        del history[:-HISTORY_LIMIT]

    def history(self, name: str) -> List[Dict[str, Any]]:
        return list(self.lineage(name)["history"])

    def save(self) -> None:
        if self._data is None:
            return
        directory = os.path.dirname(self.path)
        os.makedirs(directory, mode=0o700, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".state-", dir=directory)
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(self._data, handle, indent=1, sort_keys=True)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
