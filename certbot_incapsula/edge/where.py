"""Where a site's Imperva edge is (from the `dns` entries Imperva gives for it), and how its
failures are named. Knows nothing of certbot; the standard library only.
"""
from __future__ import annotations

import errno
import ipaddress
import socket
from typing import Any, List, Mapping, Optional

KEY_TYPES = ("ECC", "RSA")


class EdgeError(Exception):
    """The edge could not be reached or read; str() is one line naming the edge and the cause.
    `kind` is "refused", "timeout", "tls", "unparsable" or "other"."""

    def __init__(self, message: str, kind: str = "other") -> None:
        super().__init__(message)
        self.kind = kind


class EdgeLookupError(EdgeError):
    """A site's `dns` entries name an edge host that does not resolve."""


def edge_addresses(status: Mapping[str, Any], name: Optional[str] = None) -> List[str]:
    """The edge addresses from the `dns` entries of a sites/status answer or sites/list item.

    With `name`, the entries for that record name are used when there are any (else all). `A`
    (and `AAAA`) entries give their addresses; a `CNAME` target (e.g. xxxx.x.incapdns.net) is
    resolved with getaddrinfo. An empty list when the site has no `dns` entries; EdgeLookupError
    when it has some but none gives an address."""
    entries = [e for e in status.get("dns") or [] if isinstance(e, Mapping)]
    if name is not None:
        wanted = name.lower().rstrip(".")
        mine = [e for e in entries if str(e.get("dns_record_name", "")).lower().rstrip(".") == wanted]
        entries = mine or entries
    found: List[str] = []
    unresolved: List[str] = []
    for entry in entries:
        kind = str(entry.get("set_type_to", "")).upper()
        data = entry.get("set_data_to") or []
        for item in [data] if isinstance(data, str) else data:
            item = str(item).strip().rstrip(".")
            if kind in ("A", "AAAA"):
                try:
                    found.append(str(ipaddress.ip_address(item)))
                except ValueError:
                    unresolved.append(item)
            elif kind == "CNAME":
                try:
                    infos = socket.getaddrinfo(item, 80, type=socket.SOCK_STREAM)
                except (socket.gaierror, UnicodeError):
                    unresolved.append(item)
                    continue
                found.extend(str(info[4][0]) for info in infos)
    if not found and unresolved:
        raise EdgeLookupError(
            f"Imperva's edge {', '.join(unresolved)} (from the site's DNS entries) does not resolve",
            "other",
        )
    return list(dict.fromkeys(found))  # in order, without repeats


def is_timeout(error: BaseException) -> bool:
    timed_out = getattr(error, "errno", None) == errno.ETIMEDOUT
    return timed_out or isinstance(error, (socket.timeout, TimeoutError))
