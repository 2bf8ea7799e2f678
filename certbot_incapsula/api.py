"""A small client of Imperva's v1 provisioning API (my.imperva.com), as certbot-incapsula uses it.

Knows nothing of certbot. Every call is a form-encoded POST with the credentials in headers (never
in a URL); transient faults are retried with capped exponential backoff and jitter inside a time
budget; every other failure becomes an ImpervaError whose message says what to fix.
"""
from __future__ import annotations

import base64
import json
import logging
import random
import threading
import time
from dataclasses import dataclass
from typing import Any, Dict, Iterator, Mapping, Optional, Tuple
from urllib.parse import urljoin, urlsplit

import requests
from requests.adapters import HTTPAdapter

logger = logging.getLogger(__name__)

from certbot_incapsula import DEFAULT_API_URL  # noqa: E402  (one definition, import-free)
from certbot_incapsula.api_errors import ImpervaError, refused  # noqa: E402

API_PREFIX = "/api/prov/v1/"
USER_AGENT = "certbot-incapsula"

# Calls that only read: whatever happens to them, nothing was changed at Imperva.
READ_ONLY = frozenset({"account/verify", "sites/list", "sites/status"})
# Operations that are always retried: Imperva's "try again" answers.
TRANSIENT_RES = {3015: "internal error, please try again", 4: "server unavailable or timed out"}
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}
MAX_PAGES = 1000  # of sites/list: 100,000 sites, far above any real account


@dataclass(frozen=True)
class RetryPolicy:
    """Like Imperva's Terraform provider: 1 s doubling, capped at 30 s, jittered, within a budget."""

    attempts: int = 5
    base: float = 1.0
    cap: float = 30.0
    budget: float = 120.0  # seconds one call may spend, retries included

    def delay(self, attempt: int) -> float:
        return min(self.cap, self.base * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)  # noqa: S311


class RateLimiter:
    """Spaces request starts so that the account never sees more than `rate` calls a second.

    Each start is spaced from the previous *actual* start, with a 5 % margin for network jitter
    on the way to Imperva: planned slots let 11 calls land within one second.
    """

    def __init__(self, rate: float, margin: float = 0.05) -> None:
        self._interval = (1.0 + margin) / rate if rate > 0 else 0.0
        self._next = 0.0
        self._lock = threading.Lock()

    def wait(self) -> None:
        with self._lock:  # callers queue here and leave one interval apart
            now = time.monotonic()
            if now < self._next:
                time.sleep(self._next - now)
                now = time.monotonic()
            self._next = now + self._interval


class _Transient(Exception):
    def __init__(self, reason: str, retry_after: Optional[float] = None,
                 unanswered: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after
        self.unanswered = unanswered  # no answer came: the request may have been acted on


def _shown_url(url: str) -> str:
    """The URL without user:password@, query or fragment: fit for an error message."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "(unparsable)"
    netloc = parts.netloc.rpartition("@")[2]
    return parts._replace(netloc=netloc, query="", fragment="").geturl()


def check_api_url(url: str) -> str:
    """Validates --incapsula-api-url; returns it without a trailing slash."""
    shown = repr(_shown_url(url))
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError:
        raise ValueError(f"the Imperva API URL {shown} is not a valid https://HOST[:PORT] URL.") from None
    if parts.scheme == "https" and parts.hostname:
        pass
    elif parts.scheme == "http" and parts.hostname in LOOPBACK_HOSTS:
        pass  # the project's test server; nothing leaves the machine
    else:
        raise ValueError(
            f"the Imperva API URL {shown} is not https://HOST: credentials are sent only over TLS "
            "(plain http is allowed only to a loopback address, for tests)."
        )
    if parts.path.rstrip("/"):
        # The client adds /api/prov/v1/ itself; a pasted endpoint URL would double it.
        raise ValueError(f"the Imperva API URL {shown} has a path ({parts.path[:40]}): give only "
                         f"the scheme and host, e.g. {DEFAULT_API_URL}.")
    if parts.query or parts.fragment or parts.username or parts.password or "@" in parts.netloc:
        # Never echo the URL as given: user:password@ or a query may hold a secret.
        raise ValueError(f"the Imperva API URL {shown} must be a plain https://HOST[:PORT] URL "
                         "(no user:password@, query or fragment).")
    return url.rstrip("/")


def _retry_after(value: Optional[str]) -> Optional[float]:
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None  # an HTTP date: fall back to our own backoff


class _NoRedirectSession(requests.Session):
    """A session that never follows a redirect, whatever a caller passes: the API id and key
    travel in headers and an upload's body holds the private key, so a 3xx to another host (or
    from https to http) would hand them over. The 3xx comes back as the answer instead."""

    def get_redirect_target(self, resp: requests.Response) -> Optional[str]:
        return None


def _redirect_target(url: str, location: Optional[str]) -> str:
    """Where a redirect points, as scheme://host[:port] only: its path and query may hold
    anything, the host is what the user needs to see."""
    if not location:
        return "no Location given"
    try:
        parts = urlsplit(urljoin(url, location.strip()))
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return "an unparsable Location"
    if not host:
        return "a Location without a host"
    host = "".join(ch for ch in host if ch.isprintable())[:100]
    shown = f"[{host}]" if ":" in host else host
    return f"{parts.scheme}://{shown}" + (f":{port}" if port else "")


class ImpervaClient:
    """One HTTP session per run; thread-safe for the bounded concurrency of a fleet deployment."""

    def __init__(self, api_id: str, api_key: str, api_url: str = DEFAULT_API_URL, *,
                 timeout: Tuple[float, float] = (10.0, 30.0),
                 retry: RetryPolicy = RetryPolicy(),
                 rate: float = 10.0, pool: int = 10) -> None:
        self.api_url = check_api_url(api_url)
        self.timeout = timeout
        self.retry = retry
        self._limiter = RateLimiter(rate)
        self._session = _NoRedirectSession()
        self._session.max_redirects = 0  # belt and braces: a follow would raise, not send
        adapter = HTTPAdapter(pool_connections=1, pool_maxsize=pool, max_retries=0)
        self._session.mount("https://", adapter)
        self._session.mount("http://", adapter)
        self._session.headers.update({
            "x-API-Id": str(api_id), "x-API-Key": str(api_key),
            "Accept": "application/json", "User-Agent": USER_AGENT,
        })
        self.calls = 0  # requests sent, retries included (tests assert what was not retried)

    def close(self) -> None:
        self._session.close()

    def __enter__(self) -> ImpervaClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the calls certbot-incapsula makes ------------------------------------------------

    def verify_account(self) -> Dict[str, Any]:
        return self.call("account/verify", {})

    def list_sites(self, page_size: int = 100,
                   account_id: Optional[int] = None) -> Iterator[Dict[str, Any]]:
        """Every site the key can see (or of one (sub-)account), page by page (Imperva caps a
        page at 100)."""
        # Above 100 Imperva sends 100: a "short" page would end the listing too early.
        page_size = max(1, min(100, page_size))
        page = 0
        form: Dict[str, Any] = {} if account_id is None else {"account_id": account_id}
        seen: set = set()
        while True:
            answer = self.call("sites/list", {**form, "page_size": page_size, "page_num": page})
            sites = answer.get("sites") or []
            ids = [item.get("site_id") if isinstance(item, dict) else None for item in sites]
            if page and ids and None not in ids and all(site_id in seen for site_id in ids):
                # A server that ignores page_num answers the same page forever.
                logger.warning("Imperva's sites/list answered page %d with sites it had already "
                               "listed: paging stops there, with the %d site(s) listed so far.",
                               page, len(seen))
                return
            seen.update(ids)
            yield from sites
            if len(sites) < page_size:
                return
            page += 1
            if page >= MAX_PAGES:
                logger.warning("Imperva's sites/list still gave full pages after %d pages (%d "
                               "sites): paging stops there; sites beyond are not seen.",
                               page, page * page_size)
                return

    def site_status(self, site_id: int) -> Dict[str, Any]:
        return self.call("sites/status", {"site_id": site_id}, site_id=site_id)

    def upload_certificate(self, site_id: int, fullchain_pem: bytes, key_pem: bytes,
                           auth_type: str, input_hash: Optional[str] = None) -> Dict[str, Any]:
        """Create-or-replace the site's custom certificate; returns Imperva's `details` flags."""
        form = {
            "site_id": site_id,
            "certificate": base64.b64encode(fullchain_pem).decode("ascii"),
            "private_key": base64.b64encode(key_pem).decode("ascii"),
            "auth_type": auth_type,
        }
        if input_hash:
            form["input_hash"] = input_hash
        answer = self.call("sites/customCertificate/upload", form, site_id=site_id)
        details = (answer.get("debug_info") or {}).get("details")
        return details if isinstance(details, dict) else {}

    def set_redirect_to_https(self, site_id: int, enabled: bool = True) -> Dict[str, Any]:
        return self.call("sites/performance/advanced", {
            "site_id": site_id, "param": "redirect_http_to_https",
            "value": "true" if enabled else "false",
        }, site_id=site_id)

    # -- transport ------------------------------------------------------------------------

    def call(self, operation: str, form: Mapping[str, Any],
             site_id: Optional[int] = None) -> Dict[str, Any]:
        """POSTs one v1 operation; retries transient faults; raises ImpervaError otherwise."""
        url = self.api_url + API_PREFIX + operation
        started = time.monotonic()
        attempt = 0
        while True:
            attempt += 1
            elapsed = time.monotonic() - started
            # The read timeout is cut (to 1 s at least) so that one call stays within its budget;
            # it never exceeds the configured one.
            read = min(self.timeout[1], max(1.0, self.retry.budget - elapsed))
            try:
                return self._once(url, operation, form, site_id, (self.timeout[0], read))
            except _Transient as fault:
                delay = fault.retry_after if fault.retry_after is not None \
                    else self.retry.delay(attempt)
                elapsed = time.monotonic() - started
                if attempt >= self.retry.attempts or elapsed + delay > self.retry.budget:
                    # After a timeout or a lost connection Imperva may have acted: do not claim otherwise.
                    if operation in READ_ONLY:
                        changed = "this call only reads, so nothing was changed"
                    elif fault.unanswered:
                        changed = "whether Imperva applied this call is unknown"
                    else:
                        changed = "nothing was changed by this call"
                    raise ImpervaError(
                        f"Imperva's API did not answer {operation} usefully after {attempt} "
                        f"attempt(s) in {elapsed:.0f} s (last: {fault.reason}); {changed}. "
                        "Try again later; if it persists, check "
                        f"{self.api_url} and status.imperva.com.",
                        operation=operation, site_id=site_id, transient=True) from None
                logger.warning("Imperva API %s%s: %s; retrying in %.1f s (attempt %d of %d)",
                               operation, f" (site {site_id})" if site_id is not None else "",
                               fault.reason, delay, attempt + 1, self.retry.attempts)
                time.sleep(delay)

    def _once(self, url: str, operation: str, form: Mapping[str, Any],
              site_id: Optional[int], timeout: Tuple[float, float]) -> Dict[str, Any]:
        self._limiter.wait()
        self.calls += 1
        t0 = time.monotonic()
        try:
            response = self._session.post(url, data=dict(form), timeout=timeout,
                                          allow_redirects=False)
        except requests.exceptions.TooManyRedirects:  # never reached: no redirect is followed
            raise self._redirected(operation, site_id, None, url, None) from None
        except requests.exceptions.SSLError:
            raise ImpervaError(
                f"TLS verification of {self.api_url} failed: if a proxy or private CA is in the "
                "way, point REQUESTS_CA_BUNDLE at its CA bundle.",
                operation=operation, site_id=site_id) from None
        except requests.exceptions.Timeout:
            raise _Transient("timed out", unanswered=True) from None
        except requests.exceptions.InvalidHeader:
            raise self._bad_header(operation, site_id) from None
        except requests.exceptions.RequestException as exc:
            raise _Transient(f"connection failed ({type(exc).__name__})", unanswered=True) from None
        except ValueError:  # http.client's own header check (old requests)
            raise self._bad_header(operation, site_id) from None
        status = response.status_code
        logger.debug("Imperva API %s%s: HTTP %d in %.2f s", operation,
                     f" site {site_id}" if site_id is not None else "", status,
                     time.monotonic() - t0)
        if 300 <= status < 400:
            # Never followed, never retried: the API does not redirect, a proxy or a wrong URL does.
            raise self._redirected(operation, site_id, status, url, response.headers.get("Location"))
        if status == 429:
            raise _Transient("HTTP 429 (rate limited)",
                             _retry_after(response.headers.get("Retry-After")))
        if status >= 500:
            raise _Transient(f"HTTP {status}")
        try:
            answer = response.json()
        except (ValueError, json.JSONDecodeError):
            answer = None
        if not isinstance(answer, dict) or "res" not in answer:
            if status in (401, 403):
                answer = {"res": 9411, "res_message": f"HTTP {status}"}
            elif status >= 400:
                raise ImpervaError(
                    f"Imperva's API answered HTTP {status} to {operation} at {url}: check "
                    "--incapsula-api-url (default https://my.imperva.com).",
                    operation=operation, site_id=site_id)
            else:
                kind = response.headers.get("Content-Type", "").split(";")[0] or "no type"
                raise _Transient(f"an answer that is not Imperva's JSON ({kind})")
        try:
            res = int(answer["res"])
        except (TypeError, ValueError):
            raise _Transient(f"an unreadable res code {answer.get('res')!r}") from None
        if res == 0:
            return answer
        if res in TRANSIENT_RES:
            raise _Transient(f"res {res} ({TRANSIENT_RES[res]})")
        raise refused(operation, site_id, res, answer)

    def _redirected(self, operation: str, site_id: Optional[int], status: Optional[int],
                    url: str, location: Optional[str]) -> ImpervaError:
        target = _redirect_target(url, location)
        if operation in READ_ONLY:
            changed = "this call only reads, so nothing was changed"
        elif status == 303:  # "see other": a server may send it after acting on the request
            changed = ("HTTP 303 can follow a request that was acted on: check the site in "
                       "Imperva's console")
        else:
            changed = ("the request was answered with a redirect, not by Imperva's API, so "
                       "Imperva did not act on it")
        where = f" for site {site_id}" if site_id is not None else ""
        said = f"HTTP {status}" if status is not None else "a redirect"
        return ImpervaError(
            f"Imperva's API answered {operation}{where} with a redirect ({said} to {target}), "
            f"which is never followed: the API id and key (and an upload's private key) go only "
            f"to {self.api_url}; {changed}. Check --incapsula-api-url (default "
            f"{DEFAULT_API_URL}) and any proxy in the way.",
            operation=operation, site_id=site_id)

    @staticmethod
    def _bad_header(operation: str, site_id: Optional[int]) -> ImpervaError:
        # The library's text quotes the header value, i.e. maybe the key: never shown, not retried.
        return ImpervaError(
            "the API id or key holds a character that cannot travel in an HTTP header (a line "
            "break or a leading space?): check incapsula_api_id and incapsula_api_key in the "
            "credentials file.", operation=operation, site_id=site_id)
