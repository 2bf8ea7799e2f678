"""The challenge path, fetched through a site's edge as the CA would: a probe file written under
the webroot, fetched (several times at once: a balancer spreads them over its origin servers),
compared, always deleted; and what answered, in one line with the fix. Knows nothing of certbot.
"""
from __future__ import annotations

import contextlib
import dataclasses
import errno
import http.client
import os
import re
import secrets
import ssl
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, List, Optional, Sequence, Tuple, Union
from urllib.parse import urljoin, urlsplit

from certbot_incapsula.edge.fetch import (
    REFUSED,
    UNREACHED,
    _get,
    _host_problem,
    _NoAnswer,
    _NotReached,
    _resolve,
)

CHALLENGE_PATH = "/.well-known/acme-challenge/"
MAX_REDIRECTS = 10  # as Let's Encrypt's validation follows
REDIRECT_STATUSES = (301, 302, 303, 307, 308)
_INCIDENT = re.compile(r"Incapsula incident ID:?\s*([0-9A-Za-z]+(?:-[0-9A-Za-z]+)*)")

# ProbeResult.outcome
OK = "ok"
IMPERVA_BLOCK = "imperva_block"
IMPERVA_CHALLENGE = "imperva_challenge"
ORIGIN_404 = "origin_404"
CACHED = "cached"
TIMEOUT = "timeout"  # accepted the connection, no complete answer in time: the CA fails too
OTHER = "other"
WEBROOT = "webroot"  # the probe could not be written
SEVERAL_ORIGINS = "several_origins"  # some answers carried the file, others were a 404
NOT_CHECKED = (REFUSED, UNREACHED)


@dataclass(frozen=True)
class ProbeResult:
    name: str
    address: str
    outcome: str  # OK, IMPERVA_BLOCK, ..., SEVERAL_ORIGINS; REFUSED or UNREACHED: not checked
    message: str  # one line: the name, what answered, the fix
    status: Optional[int] = None  # HTTP status of the last answer
    incident_id: Optional[str] = None  # Imperva's block page's incident ID
    url: str = ""  # the last URL fetched (after redirects)
    redirects: int = 0
    tries: Tuple[ProbeResult, ...] = ()  # each fetch, when the name was fetched several times

    @property
    def ok(self) -> bool:
        return self.outcome == OK

    @property
    def checked(self) -> bool:
        """False when the edge could not be reached from this host: no proof either way."""
        return self.outcome not in NOT_CHECKED

    @property
    def text(self) -> str:
        """The message without the name in front."""
        return self.message.split(": ", 1)[1] if ": " in self.message else self.message


def _prepare_probe(webroot: Path) -> Tuple[Path, List[Path]]:
    """The challenge directory, made if missing (0755, like certbot's webroot plugin); returns it
    and the directories made, which are removed afterwards."""
    if not webroot.is_dir():
        raise FileNotFoundError(errno.ENOENT, "no such directory", str(webroot))
    made: List[Path] = []
    for directory in (webroot / ".well-known", webroot / ".well-known" / "acme-challenge"):
        if not directory.is_dir():
            directory.mkdir()
            made.append(directory)
            os.chmod(directory, 0o755)  # noqa: S103 - the origin's server may run as another user
    return webroot / ".well-known" / "acme-challenge", made


@contextlib.contextmanager
def challenge_directory(webroot: Union[str, Path]) -> Iterator[Path]:
    """The webroot's challenge directory while the block runs; the directories made for it are
    removed after (when empty): several probes of one webroot at once share it this way."""
    directory, made = _prepare_probe(Path(webroot))
    try:
        yield directory
    finally:
        _remove_made(made)


def _remove_made(made: List[Path]) -> None:
    for made_dir in reversed(made):
        try:
            made_dir.rmdir()
        except OSError:
            pass  # not empty any more: someone else (certbot) uses it now


def probe_challenge_path(
    name: str,
    address: str,
    webroot: Union[str, Path],
    *,
    timeout: float = 10.0,
    site: Optional[str] = None,
    attempts: int = 1,
) -> ProbeResult:
    """Fetch a fresh probe file from `webroot` as the CA would, through the edge at `address`,
    `attempts` times at once (a balancer spreads requests that arrive together over its origin
    servers), each fetch within `timeout` seconds, redirects included.

    `site` names the Imperva site in the messages (e.g. "site 101"). The probe file (and any
    directory made for it) is always removed. With several attempts the result sums them up
    (SEVERAL_ORIGINS when some carried the file and others were the origin's 404) and `tries`
    holds each one."""
    site_label = site or "the Imperva site"
    edge = f"Imperva's edge {address}"
    root = Path(webroot)

    def result(outcome: str, message: str, **extra: Any) -> ProbeResult:
        return ProbeResult(name, address, outcome, f"{name}: {message}", **extra)

    try:
        directory, made = _prepare_probe(root)
    except OSError as error:
        return result(WEBROOT, f"cannot write a probe file under the webroot -w {root}: "
                      f"{error.strerror or error}")
    token = secrets.token_urlsafe(32)  # the shape of an ACME token
    content = f"certbot-incapsula pre-flight {secrets.token_urlsafe(16)}".encode()
    probe = directory / token
    try:
        try:
            descriptor = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            with os.fdopen(descriptor, "wb") as handle:
                handle.write(content)
            os.chmod(probe, 0o644)  # whatever the umask: the origin's server must read it
        except OSError as error:
            return result(WEBROOT, f"cannot write a probe file under the webroot -w {root}: "
                          f"{error.strerror or error}")

        def once(_: int) -> ProbeResult:
            return _probe(name, address, token, content, timeout, root, site_label, edge, result)

        if attempts <= 1:
            return once(0)
        with ThreadPoolExecutor(max_workers=attempts) as pool:
            tries = list(pool.map(once, range(attempts)))
        return summed(tries, edge, root, site_label)
    finally:
        try:
            probe.unlink()
        except OSError:
            pass  # already gone, or never written
        _remove_made(made)


def several_origins_text(carried: int, missing: int, edge: str, root: Union[str, Path],
                         site_label: str) -> str:
    """What to say when some answers carried the probe file and others were a 404."""
    return (f"{carried} of {carried + missing} answers through {edge} carried the probe file and "
            f"{missing} were a 404: {site_label} has several origin servers and this host's webroot "
            f"-w {root} is on only one of them. Serve {CHALLENGE_PATH} from one directory shared by "
            f"every origin server, or have the others proxy or redirect it to this host, or make "
            f"them standby servers, or use dns-01 (see docs/several-servers.md)")


def summed(tries: Sequence[ProbeResult], edge: str, root: Union[str, Path], site_label: str) -> ProbeResult:
    """One result for several fetches of one name: a failure the CA would meet wins."""
    first = tries[0]
    passed = [one for one in tries if one.ok]
    failed = [one for one in tries if one.checked and not one.ok]
    if passed and failed and all(one.outcome == ORIGIN_404 for one in failed):
        text = several_origins_text(len(passed), len(failed), edge, root, site_label)
        return dataclasses.replace(failed[0], outcome=SEVERAL_ORIGINS, message=f"{first.name}: {text}",
                                   tries=tuple(tries))
    if failed:
        chosen = failed[0]
        if passed:  # said, so that nobody reads a flaky answer as a settled one
            chosen = dataclasses.replace(chosen, message=f"{chosen.message} ({len(passed)} of "
                                         f"{len(tries)} answers carried the file)")
        return dataclasses.replace(chosen, tries=tuple(tries))
    chosen = passed[0] if passed else first
    return dataclasses.replace(chosen, tries=tuple(tries))


def _probe(
    name: str,
    address: str,
    token: str,
    content: bytes,
    timeout: float,
    root: Path,
    site_label: str,
    edge: str,
    result: Callable[..., ProbeResult],
) -> ProbeResult:
    exception = f"add a WAF/bot-protection exception for {CHALLENGE_PATH} on {site_label}"
    first_host = name.lower().rstrip(".")
    url = f"http://{name}{CHALLENGE_PATH}{token}"
    deadline = time.monotonic() + timeout  # one for the whole fetch, every redirect included
    redirects = 0
    while True:
        parts = urlsplit(url)
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:  # a port that is no number
            port = -1
        host = (parts.hostname or "").rstrip(".") if parts.hostname else ""
        if parts.scheme not in ("http", "https") or port not in (80, 443) or not host:
            return result(OTHER, f"{edge} redirects the challenge path to {url}, which the CA does not "
                          f"follow (http or https on ports 80 and 443 only): let {CHALLENGE_PATH} through "
                          f"on {site_label}", redirects=redirects, url=url)
        problem = _host_problem(host)
        if problem is not None:
            return result(OTHER, f"{edge} redirects the challenge path to {url}, whose host {problem}: "
                          f"no DNS lookup can find it, so the CA cannot follow it either; fix that "
                          f"redirect on {site_label} or at the origin", redirects=redirects, url=url)
        # The name itself goes to the edge Imperva names for it; a new host, as the CA finds it.
        who = edge if host == first_host else host
        try:
            addresses = [address] if host == first_host else _resolve(host, port, deadline)
            if host != first_host:
                who = f"{host} ({', '.join(addresses)})"
            status, headers, body = _get(addresses, url, deadline, who)
        except _NotReached as error:
            where = "" if host == first_host else f" after {edge} redirected the challenge path to {url}"
            return result(error.outcome, f"{error}{where}", url=url, redirects=redirects)
        except _NoAnswer as error:
            what = (f"no answer from {who} within {timeout:g} s" if error.status is None else
                    f"{who} sent HTTP {error.status} but not the whole answer within {timeout:g} s")
            return result(TIMEOUT, f"{what} after it accepted the connection (a CA waits about as "
                          f"long): check that {site_label} lets {CHALLENGE_PATH} through to an origin "
                          "that is up", url=url, redirects=redirects, status=error.status)
        except ssl.SSLError as error:
            return result(OTHER, f"the TLS handshake with {who} failed after a redirect to {url} "
                          f"({error.reason or error})", url=url, redirects=redirects)
        except (OSError, http.client.HTTPException) as error:
            return result(OTHER, f"{who} closed the connection without a usable answer "
                          f"({type(error).__name__}): check that {site_label} lets {CHALLENGE_PATH} "
                          "through to the origin", url=url, redirects=redirects)
        location = headers.get("Location")
        if status in REDIRECT_STATUSES and location:
            if redirects >= MAX_REDIRECTS:
                return result(OTHER, f"{edge} redirects the challenge path more than {MAX_REDIRECTS} times: "
                              "fix the redirect loop", status=status, url=url, redirects=redirects)
            try:
                url = urljoin(url, location.strip())
            except ValueError:  # e.g. an unbalanced [ in the host
                return result(OTHER, f"{edge} redirects the challenge path to {location.strip()!r}, "
                              "which is no URL the CA can follow", status=status, redirects=redirects)
            redirects += 1
            continue
        break

    extra = {"status": status, "url": url, "redirects": redirects}
    if status == 200 and body.strip() == content:
        return result(OK, f"the challenge path reaches the webroot through {edge}", **extra)
    text = body.decode("utf-8", "replace")
    incident = _INCIDENT.search(text)
    if incident is not None:
        return result(IMPERVA_BLOCK, f"{edge} blocked the request (HTTP {status}, Incapsula incident ID: "
                      f"{incident.group(1)}): {exception}", incident_id=incident.group(1), **extra)
    if "_Incapsula_Resource" in text:
        return result(IMPERVA_CHALLENGE, f"{edge} answered with a JavaScript challenge (HTTP {status}) "
                      f"that the CA cannot pass: {exception}", **extra)
    if status == 404:
        return result(ORIGIN_404, f"the origin answered 404 through {edge}: the webroot -w {root} is not "
                      f"where the origin serves {name} from", **extra)
    if status == 200:
        return result(CACHED, f"{edge} answered with another body (a cached or stale answer): exclude "
                      f"{CHALLENGE_PATH} from caching on {site_label}", **extra)
    return result(OTHER, f"{edge} answered HTTP {status} instead of the file: check that {site_label} "
                  f"serves {name} and lets {CHALLENGE_PATH} through to the webroot -w {root}", **extra)
