"""What one process shares between the lineages it deploys: per Imperva account, one API client
(one HTTP session, one rate limiter); and what was uploaded in this process.

certbot builds one installer per lineage within one `certbot renew`; the command handles several
lineages in one `sync`. Both hand the core this context so that lineages of the same account share
a session and a pace, and a lineage uploaded by `renew_deploy` is not checked again by
`generic_updates` in the same process. Knows nothing of certbot.
"""
from __future__ import annotations

import hashlib
import threading
from typing import TYPE_CHECKING, Dict, Set, Tuple

if TYPE_CHECKING:
    from certbot_incapsula.api import ImpervaClient
    from certbot_incapsula.records import Records


class Context:
    def __init__(self) -> None:
        self._clients: Dict[Tuple[str, str, str], ImpervaClient] = {}
        self._records: Dict[str, Records] = {}
        self._lock = threading.Lock()
        self.deployed: Set[Tuple[str, str]] = set()  # (lineage, input hash) uploaded here

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


# certbot gives a plugin no per-process object of its own: the installer door uses this one.
PROCESS = Context()
