"""What was deployed where: the plugin's own small state file, for self-healing, rollback,
the status view and cached site discovery. No secret is ever written here.

The file is JSON at <certbot config dir>/incapsula/state.json, mode 0600, replaced atomically.
It is a cache, not a trust anchor: whatever it holds is checked on read, a file that cannot be
read or understood costs a rediscovery and a warning, and a file that cannot be written is a
RecordsError the caller turns into a warning.

Several processes may use one file at once (certbot's timer, the sync timer, deploy hooks): each
reads it once, and keeps a list of its own changes. A save takes the plugin's own lock
(state.json.lock beside the file: not certbot's, which a deploy hook runs under), reads the file
again, replays this process's changes onto what is there, and replaces the file whole. So what
another process recorded in between is kept: history entries are appended to whatever history is
there, a slot takes the next number of the file's counter, a lineage's cached sites and its
rollback pin are this process's where it changed them, and other parts are left as they are.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import tempfile
import threading
import time
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Tuple

from certbot_incapsula.records_format import (
    HISTORY_LIMIT,
    HISTORY_MAX_ENTRIES,
    MAX_BYTES,
    _hex,
    _valid_sites,
    sound,
)

logger = logging.getLogger(__name__)

LOCK_WAIT = 30.0  # seconds a save waits for another process's save (each takes milliseconds)


class RecordsError(OSError):
    """The state file cannot be written; str() says why, in a few words."""


class RecordsBusy(RecordsError):
    """Another process held the records' lock for the whole wait; str() says so."""


# -- this process's changes, replayed onto the file's content at each save -----------------------
# Each takes the document (the sound form _parse makes) and changes it; the same function changes
# this process's view at once and the file's content at the save.

def _entry(data: Dict[str, Any], name: str) -> Dict[str, Any]:
    lineages = data["lineages"]
    entry = lineages.get(name)
    if entry is None:
        entry = lineages[name] = {"sites": None, "history": [], "pinned": None}
    return entry  # type: ignore[no-any-return]


def _set_sites(data: Dict[str, Any], name: str, cache: Optional[Dict[str, Any]]) -> None:
    if cache is not None or name in data["lineages"]:
        _entry(data, name)["sites"] = cache


def _set_pinned(data: Dict[str, Any], name: str, input_hash: Optional[str]) -> None:
    if input_hash is not None or name in data["lineages"]:
        _entry(data, name)["pinned"] = input_hash


def _append(data: Dict[str, Any], name: str, entry: Dict[str, Any]) -> None:
    history = _entry(data, name)["history"]
    history.append(dict(entry))
    # The cap counts certificates, not entries: one deployment to many sites is many entries.
    newest: List[Any] = []
    for item in reversed(history):
        if item.get("input_hash") not in newest:
            newest.append(item.get("input_hash"))
    kept = newest[:HISTORY_LIMIT]
    history[:] = [h for h in history if h.get("input_hash") in kept][-HISTORY_MAX_ENTRIES:]


def _upload(data: Dict[str, Any], site_id: int, key_type: str, lineage: str, input_hash: str,
            explicit: bool) -> Optional[str]:
    data["seq"] += 1
    site = data["sites"].setdefault(str(site_id), {"slots": {}})
    slot = site["slots"].setdefault(key_type, {})
    before = slot.get("owner")
    slot.update(lineage=lineage, input_hash=input_hash, seq=data["seq"])
    if explicit or not before:
        slot["owner"] = lineage
    return before if explicit and before and before != lineage else None


def _not_latest(data: Dict[str, Any], site_id: int) -> None:
    data["sites"].setdefault(str(site_id), {"slots": {}})["status_not_latest"] = True


class Records:
    def __init__(self, config_dir: str, *, lock_wait: float = LOCK_WAIT) -> None:
        self.path = os.path.join(config_dir, "incapsula", "state.json")
        self.lock_path = self.path + ".lock"
        self.lock_wait = lock_wait
        self._data: Optional[Dict[str, Any]] = None
        self._changes: List[Tuple[Callable[..., Any], Tuple[Any, ...]]] = []  # not yet saved
        self._guard = threading.RLock()  # sites are done in threads; one change at a time

    def _read(self, warn: bool = True) -> Any:
        """The file's JSON, {} when there is none; warns (with `warn`) and returns None when it
        cannot be used."""
        ignored = "it is ignored: sites are found again through the API, and a new file is " \
                  "written after the next upload"
        try:
            with open(self.path, "rb") as handle:
                raw = handle.read(MAX_BYTES + 1)
        except FileNotFoundError:
            return {}
        except OSError as exc:
            reason = ("a component of the path is not a directory"
                      if isinstance(exc, NotADirectoryError) else exc.strerror or str(exc))
            if warn:
                logger.warning("Imperva: cannot read the plugin's state file %s (%s): %s.",
                               self.path, reason, ignored)
            return None
        if len(raw) > MAX_BYTES:
            reason = f"larger than {MAX_BYTES // (1024 * 1024)} MiB"
        else:
            try:
                return json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError:
                reason = "not UTF-8 text"
            except RecursionError:
                reason = "nested too deep"
            except ValueError as exc:
                reason = f"not JSON: {str(exc)[:80]}"
        if warn:
            logger.warning("Imperva: the plugin's state file %s is damaged (%s): %s.",
                           self.path, reason, ignored)
        return None

    def _parse(self, raw: Any, warn: bool = True) -> Dict[str, Any]:
        data, dropped = sound(raw)
        if dropped and warn:
            logger.warning(
                "Imperva: the plugin's state file %s holds %d damaged part(s) (wrong types "
                "or missing fields): they are ignored, and sites are found again where "
                "needed.", self.path, dropped)
        data["sites"] = _valid_sites(data.get("sites"))
        if type(data.get("seq")) is not int or data["seq"] < 0:
            data["seq"] = max([slot["seq"] for site in data["sites"].values()
                               for slot in site["slots"].values()] or [0])
        return data

    def _load(self) -> Dict[str, Any]:
        if self._data is None:
            with self._guard:
                if self._data is None:
                    raw = self._read()
                    self._data = self._parse({} if raw is None else raw)
        return self._data

    def _change(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Makes a change here now, and keeps it to replay onto the file's content at the save."""
        with self._guard:
            data = self._load()
            self._changes.append((fn, args))
            return fn(data, *args)

    def lineage(self, name: str) -> Dict[str, Any]:
        """A lineage's entry, to read (its changes go through the methods below)."""
        with self._guard:
            return _entry(self._load(), name)

    def lineage_names(self) -> List[str]:
        return sorted(self._load()["lineages"])

    def cached_sites(self, name: str, names: List[str]) -> Optional[List[Dict[str, Any]]]:
        """The sites found for this lineage before, if its names have not changed since."""
        entry = self._load()["lineages"].get(name)
        cache = entry.get("sites") if entry is not None else None
        if cache is None or sorted(cache["names"]) != sorted(names):
            return None
        return [dict(t) for t in cache["targets"]]

    def remember_sites(self, name: str, names: List[str], targets: List[Dict[str, Any]]) -> None:
        self._change(_set_sites, name, {"names": sorted(names), "targets": targets})

    def forget_sites(self, name: str) -> None:
        """Drops the sites cached for a lineage (they no longer serve its names)."""
        self._change(_set_sites, name, None)

    def pin(self, name: str, input_hash: Optional[str]) -> None:
        """Holds self-healing of a lineage at a certificate (a rollback), or ends the hold (None)."""
        self._change(_set_pinned, name, input_hash)

    def add_deployment(self, name: str, entry: Dict[str, Any]) -> None:
        entry = dict(entry, time=entry.get("time") or time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                      time.gmtime()))
        self._change(_append, name, entry)

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
    # and `seq` are this host's last upload to the slot, repairs included (`seq` orders uploads,
    # in the order they were saved: two processes' uploads to one slot at one moment are rare).

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
        return self._change(_upload, site_id, key_type, lineage, input_hash,  # type: ignore[no-any-return]
                            explicit)

    def mark_status_not_latest(self, site_id: int) -> None:
        """Imperva showed another key type's certificate right after an upload: its status does
        not show the newest upload for this site, so no conclusion may rest on that order."""
        self._change(_not_latest, site_id)

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

    def flagged(self, name: str, site_id: int, input_hash: str) -> Optional[Dict[str, Any]]:
        """Imperva's last verdict on this certificate at this site, if it flagged it: entries that
        carry no verdict (a failed call, an upload not made) do not count."""
        for entry in reversed(self.history(name)):
            if entry.get("site_id") == site_id and entry.get("input_hash") == input_hash and \
                    (entry.get("outcome") == "ok" or entry.get("flags")):
                return entry if entry.get("flags") else None
        return None

    def save(self) -> None:
        """Replays this process's changes onto the file as it is now, under the plugin's lock,
        and replaces the file atomically; raises RecordsError saying why it could not (and
        RecordsBusy when another process held the lock for the whole wait)."""
        with self._guard:
            if self._data is None:
                return
            directory = os.path.dirname(self.path)
            tmp = None
            try:
                os.makedirs(directory, mode=0o700, exist_ok=True)
                with self._locked():
                    merged = self._merged()
                    fd, tmp = tempfile.mkstemp(prefix=".state-", dir=directory)
                    with os.fdopen(fd, "w", encoding="utf-8") as handle:
                        os.fchmod(handle.fileno(), 0o600)
                        json.dump(merged, handle, indent=1, sort_keys=True)
                        handle.flush()
                        os.fsync(handle.fileno())
                    os.replace(tmp, self.path)
                    tmp = None
                self._data, self._changes = merged, []
            except RecordsBusy:
                raise
            except (OSError, ValueError, TypeError, RecursionError) as exc:
                raise RecordsError(self._why_not(exc)) from None
            finally:
                if tmp is not None and os.path.exists(tmp):
                    os.unlink(tmp)

    def _merged(self) -> Dict[str, Any]:
        """What the file holds now with this process's changes replayed onto it; this process's
        own view when the file cannot be read now (its damage was warned of when first read)."""
        raw = self._read(warn=False)
        if raw is None:
            return self._data  # type: ignore[return-value]
        data = self._parse(raw, warn=False)
        for fn, args in self._changes:
            fn(data, *args)
        return data

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """The records' own lock, waited for up to `lock_wait` seconds. Where the file system
        offers no locks, the save goes on without one, as before there was a lock."""
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            deadline = time.monotonic() + self.lock_wait
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as exc:
                    if exc.errno not in (errno.EAGAIN, errno.EACCES):
                        logger.info("Imperva: %s cannot be locked (%s): saved without the lock",
                                    self.lock_path, exc.strerror or exc)
                        break
                    if time.monotonic() >= deadline:
                        raise RecordsBusy(
                            f"another certbot-incapsula process (or certbot with this plugin) "
                            f"held its lock {self.lock_path} for {self.lock_wait:g} s") from None
                    time.sleep(0.05)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def _why_not(self, exc: BaseException) -> str:
        directory = os.path.dirname(self.path)
        if os.path.lexists(directory) and not os.path.isdir(directory):
            return f"{directory} is a file, not a directory"
        if os.path.isdir(self.path):
            return f"{self.path} is a directory, not a file"
        if isinstance(exc, OSError):
            return exc.strerror or str(exc)
        return f"the records cannot be written as JSON ({type(exc).__name__})"
