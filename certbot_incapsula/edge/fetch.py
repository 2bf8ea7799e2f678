"""One GET as the CA makes it, everything (the DNS lookup of a new host, the connection, TLS, the
headers and the body) within one deadline: a timer cuts the connection then, however slowly the
answer drips. Knows nothing of certbot; the standard library only.
"""
from __future__ import annotations

import contextlib
import http.client
import ipaddress
import socket
import ssl
import threading
import time
from typing import Any, List, Optional, Sequence, Tuple
from urllib.parse import urlsplit

from certbot_incapsula.edge.where import is_timeout

MAX_BODY = 64 * 1024
USER_AGENT = "certbot-incapsula-preflight"
REFUSED = "refused"  # not checked: the connection was refused
UNREACHED = "unreached"  # not checked: no DNS answer, no route, no connection in time


class _NotReached(Exception):
    """This host could not reach the server at all (DNS, refused, no route, no connection in
    time): the CA, on the internet, may well reach it."""

    def __init__(self, message: str, outcome: str = UNREACHED) -> None:
        super().__init__(message)
        self.outcome = outcome


class _NoAnswer(Exception):
    """The server accepted the connection but its answer was not complete by the deadline;
    `status` when the headers had come."""

    def __init__(self, status: Optional[int] = None) -> None:
        super().__init__(status)
        self.status = status


def _host_problem(host: str) -> Optional[str]:
    """Why `host` (a URL's host name) can be no DNS name, or None: an empty label or one over
    63 characters cannot even be put in a DNS query, so no resolver, the CA's included, finds it."""
    with contextlib.suppress(ValueError):
        ipaddress.ip_address(host)
        return None
    labels = host[:-1].split(".") if host.endswith(".") else host.split(".")
    if any(not label for label in labels):
        return "has an empty label"
    if any(len(label) > 63 for label in labels):
        return "has a label over 63 characters"
    try:
        encoded = host.encode("idna")
    except UnicodeError:
        return "is no valid host name"
    if len(encoded) > 253:
        return "is over 253 characters"
    return None


def _resolve(host: str, port: int, deadline: float) -> List[str]:
    """The addresses of `host`, as the CA would look them up (DNS), within the deadline."""
    found: List[List[str]] = []
    failed: List[BaseException] = []

    def lookup() -> None:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            found.append(list(dict.fromkeys(str(info[4][0]) for info in infos)))
        except (OSError, UnicodeError) as error:
            failed.append(error)

    worker = threading.Thread(target=lookup, daemon=True)  # getaddrinfo has no timeout of its own
    worker.start()
    worker.join(max(deadline - time.monotonic(), 0))
    if found and found[0]:
        return found[0]
    if failed or found:
        raise _NotReached(f"{host} does not resolve from this host")
    raise _NotReached(f"the DNS lookup of {host} did not answer in time")


def _connect(addresses: Sequence[str], port: int, deadline: float, who: str) -> socket.socket:
    """A connection to the first of `addresses` that takes one; _NotReached when none does."""
    refused = False
    last: Optional[str] = None
    for address in addresses:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        try:
            return socket.create_connection((address, port), timeout=remaining)
        except ConnectionRefusedError:
            refused = True
        except OSError as error:
            last = "no connection in time" if is_timeout(error) else (error.strerror or str(error))
    if refused:
        raise _NotReached(f"{who} refused the connection on port {port}", REFUSED)
    raise _NotReached(f"{who} could not be reached on port {port} ({last or 'no time left'})")


def _get(addresses: Sequence[str], url: str, deadline: float, who: str) -> Tuple[int, Any, bytes]:
    """GET `url` from the first of `addresses` that answers, everything (connection, TLS,
    headers, body) by `deadline`: a timer cuts the connection then, however slowly it drips."""
    parts = urlsplit(url)
    host = (parts.hostname or "").encode("idna").decode("ascii")  # checked by _host_problem
    port = parts.port or (443 if parts.scheme == "https" else 80)
    sock: socket.socket = _connect(addresses, port, deadline, who)
    cut = threading.Event()

    def cut_off() -> None:
        cut.set()
        with contextlib.suppress(OSError):
            # socket.socket's own shutdown, also on a TLS socket: it wakes a read blocked in
            # another thread without touching the TLS object that read uses.
            socket.socket.shutdown(sock, socket.SHUT_RDWR)

    timer = threading.Timer(max(deadline - time.monotonic(), 0), cut_off)
    timer.daemon = True
    timer.start()
    headers_done = False
    try:
        sock.settimeout(max(deadline - time.monotonic(), 0.001))
        if parts.scheme == "https":
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE  # as the CA: a redirect to https is not verified
            sock = context.wrap_socket(sock, server_hostname=host or None)
        connection = http.client.HTTPConnection(host, port)
        connection.sock = sock
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        host_header = host if port in (80, 443) else f"{host}:{port}"
        headers = {"Host": host_header, "User-Agent": USER_AGENT, "Accept": "*/*", "Connection": "close"}
        connection.request("GET", path, headers=headers)
        response = connection.getresponse()
        headers_done = True
        body = response.read(MAX_BODY)
        if cut.is_set() or time.monotonic() >= deadline:
            raise _NoAnswer(response.status)
        return response.status, response.headers, body
    except (OSError, http.client.HTTPException) as error:
        if cut.is_set() or is_timeout(error) or time.monotonic() >= deadline:
            raise _NoAnswer(response.status if headers_done else None) from None
        raise
    finally:
        timer.cancel()
        with contextlib.suppress(OSError):
            sock.close()
