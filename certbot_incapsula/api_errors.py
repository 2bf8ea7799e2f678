"""What Imperva's `res` codes mean to the user: `ImpervaError`, whose str() is a sentence naming
the fix first and Imperva's own words after (cf. certbot-dns-cloudflare). Knows nothing of certbot.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional

# Refusals of the key or the account, whatever the site.
ACCOUNT_RES = frozenset({9403, 9411, 9414, 9415, 9418})


class ImpervaError(Exception):
    """A call to Imperva's API that did not succeed; str() is a sentence meant for the user."""

    def __init__(self, message: str, *, operation: str, res: Optional[int] = None,
                 site_id: Optional[int] = None, transient: bool = False) -> None:
        super().__init__(message)
        self.operation = operation
        self.res = res
        self.site_id = site_id
        self.transient = transient


def _fix_for(res: int, operation: str, site_id: Optional[int]) -> str:
    """The sentence that tells the user what to do about an error code (cf. certbot-dns-cloudflare)."""
    site = f"site {site_id}" if site_id is not None else "the site"
    return {
        9411: "Imperva did not accept the API id and key: check incapsula_api_id and "
              "incapsula_api_key in the credentials file (API keys are under Account > API Keys).",
        9415: f"the API key is not allowed to do {operation}: give it the "
              "'Manage SSL Certificates' permission (and site view) in Imperva's console.",
        9414: "the account's plan does not include custom certificates: upgrade the plan or "
              "ask Imperva to enable custom certificates.",
        4205: f"{site} does not have SSL enabled: enable SSL for it in Imperva's console first.",
        9413: f"Imperva does not know {site} for this API key: check --incapsula-site-id (the "
              "site may have been deleted, or belongs to an account this key cannot reach).",
        9403: "the account is unknown or not reachable with this API key: check the key's account.",
        9418: "the API key exists but is disabled (Imperva creates new API keys disabled): switch "
              "it on in Imperva's console, in the account's list of API keys.",
    }.get(res, "")


def refused(operation: str, site_id: Optional[int], res: int,
            answer: Mapping[str, Any]) -> ImpervaError:
    """The ImpervaError for a non-zero `res`: the fix first, then Imperva's own words."""
    message = str(answer.get("res_message") or "no message")
    debug = answer.get("debug_info")
    detail = debug.get("Error") if isinstance(debug, dict) else None
    said = f"res {res}: {message}" + (f" - {detail}" if detail else "")
    # An account's refusal is the same for every site: worded once, it is said once.
    where = f" for site {site_id}" if site_id is not None and res not in ACCOUNT_RES else ""
    fix = _fix_for(res, operation, site_id)
    if fix:
        # The fix first: it is what the user acts on; Imperva's own words follow.
        text = f"{fix[0].upper()}{fix[1:]} (Imperva answered {operation}{where} with {said})"
    else:
        text = f"Imperva refused {operation}{where} ({said})" + (
            ": the site keeps the certificate it had." if res == 2 else ".")
    return ImpervaError(text, operation=operation, res=res, site_id=site_id)
