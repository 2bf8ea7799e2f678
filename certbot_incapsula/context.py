"""What one process shares between the lineages it deploys: per Imperva account, one API client
(one HTTP session, one rate limiter); and what was uploaded in this process.

certbot builds one installer per lineage within one `certbot renew`; the command handles several
lineages in one `sync`. Both hand the core this context so that lineages of the same account share
a session and a pace, and a lineage uploaded by `renew_deploy` is not checked again by
`generic_updates` in the same process. Knows nothing of certbot.
"""
from __future__ import annotations

import hashlib
import os
import threading
import time
from typing import TYPE_CHECKING, Any, Dict, Iterable, List, Optional, Set, Tuple

from certbot_incapsula.api_errors import ImpervaError
from certbot_incapsula.sites import SiteIndex

if TYPE_CHECKING:
    from certbot_incapsula.api import ImpervaClient
    from certbot_incapsula.records import Records


class Listing:
    """One account's `sites/list`, read once per process: what every site holds, for every
    lineage of that account. Read-backs after uploads replace their site's entry."""

    def __init__(self, items: Iterable[Dict[str, Any]]) -> None:
        self._lock = threading.Lock()
        self._sites: Dict[int, Dict[str, Any]] = {}
        self._index: Optional[SiteIndex] = None
        for item in items:
            try:
                self._sites[int(item["site_id"])] = item
            except (KeyError, TypeError, ValueError):
                continue  # an entry without a usable id cannot be matched to anything

    def index(self) -> SiteIndex:
        """The sites by name, built on first need and kept until a site's entry changes."""
        with self._lock:
            if self._index is None:
                self._index = SiteIndex(self._sites.values())
            return self._index

    def items(self) -> List[Dict[str, Any]]:
        with self._lock:
            return list(self._sites.values())

    def get(self, site_id: int) -> Optional[Dict[str, Any]]:
        with self._lock:
            return self._sites.get(site_id)

    def update(self, site_id: int, status: Dict[str, Any]) -> None:
        with self._lock:
            self._sites[site_id] = status
            self._index = None


FAILURE_KEPT = 120.0  # s: about one call's retry budget (api.RetryPolicy)


class Context:
    def __init__(self) -> None:
        self._clients: Dict[Tuple[str, str, str], ImpervaClient] = {}
        self._records: Dict[str, Records] = {}
        self._credentials: Dict[Tuple[str, int, int], Tuple[str, str]] = {}
        self._listings: Dict[Tuple[int, Optional[int]], Listing] = {}
        self._listing_locks: Dict[Tuple[int, Optional[int]], threading.Lock] = {}
        # A listing that failed after all its retries, and when: later lineages (and sync's
        # metrics) of the account asking within FAILURE_KEPT s are told at once instead of
        # spending the retry budget again; after that, Imperva is asked again.
        self._listing_failed: Dict[Tuple[int, Optional[int]], Tuple[ImpervaError, float]] = {}
        self._lock = threading.Lock()
        self.deployed: Set[Tuple[str, str]] = set()  # (lineage, input hash) uploaded here
        self._said: Set[str] = set()  # warnings given in this process

    def first_time(self, key: str) -> bool:
        """True once per process for each key: a warning is given once per run."""
        with self._lock:
            if key in self._said:
                return False
            self._said.add(key)
            return True

    def credentials(self, path: str) -> Tuple[str, str]:
        """The API id and key in a credentials file, read once per process while the file is
        unchanged: lineages share files, and a warning about one is worth saying once."""
        from certbot_incapsula import credentials

        try:
            stat = os.stat(path)
            key: Tuple[str, int, int] = (path, stat.st_mtime_ns, stat.st_size)
        except OSError:
            return credentials.read(path)  # says what is wrong with the path
        with self._lock:
            found = self._credentials.get(key)
        if found is None:
            found = credentials.read(path)
            with self._lock:
                self._credentials[key] = found
        return found

    def client(self, api_id: str, api_key: str, api_url: str) -> ImpervaClient:
        """The one client of this account (API URL, id and key) in this process."""
        from certbot_incapsula.api import ImpervaClient

        # The key itself is not kept as a dictionary key: a digest of it is enough.
        key = (api_url, api_id, hashlib.sha256(api_key.encode()).hexdigest())
        with self._lock:
            client = self._clients.get(key)
            if client is None:
                client = self._clients[key] = ImpervaClient(api_id, api_key, api_url)
            return client

    def listing(self, client: ImpervaClient, account_id: Optional[int],
                fetch: bool = True) -> Optional[Listing]:
        """The account's listing, read on first need (ceil(sites / 100) calls) and shared by
        every later lineage of the account in this process; None if not read and not `fetch`."""
        key = (id(client), account_id)
        with self._lock:
            if key in self._listings or not fetch:
                return self._listings.get(key)
            lock = self._listing_locks.setdefault(key, threading.Lock())
        with lock:  # one listing per account even when lineages ask at once
            with self._lock:
                if key in self._listings:
                    return self._listings[key]
                failed = self._listing_failed.get(key)
                if failed is not None and time.monotonic() - failed[1] < FAILURE_KEPT:
                    raise failed[0]
            try:
                listing = Listing(client.list_sites(account_id=account_id))
            except ImpervaError as exc:
                if exc.transient:
                    with self._lock:
                        self._listing_failed[key] = (exc, time.monotonic())
                raise
            with self._lock:
                self._listings[key] = listing
            return listing

    def records(self, config_dir: str) -> Records:
        """The one view of a config dir's state file: two would overwrite each other's changes."""
        from certbot_incapsula.records import Records

        with self._lock:
            records = self._records.get(config_dir)
            if records is None:
                records = self._records[config_dir] = Records(config_dir)
            return records

    def close(self) -> None:
        with self._lock:
            for client in self._clients.values():
                client.close()
            self._clients.clear()
            self._listings.clear()
            self._listing_failed.clear()


# certbot gives a plugin no per-process object of its own: the installer door uses this one.
PROCESS = Context()
