"""Reads the credentials INI file with certbot's helper, without ever quoting its content."""
from __future__ import annotations

import os
from typing import Callable, Tuple

from certbot_incapsula import CREDENTIALS_HELP


def read(path: str, mapper: Callable[[str], str] = lambda name: "incapsula_" + name.replace("-", "_")
         ) -> Tuple[str, str]:
    """Reads the INI file with certbot's helper (which warns when it is world-readable)."""
    import configobj
    from certbot.plugins import dns_common

    if not os.path.exists(path):
        raise ValueError(f"The credentials file {path} does not exist: create it (mode 0600) "
                         f"with {CREDENTIALS_HELP}.")
    if os.path.isdir(path):
        raise ValueError(f"The credentials path {path} is a directory: give the INI file.")
    if not os.access(path, os.R_OK):
        raise ValueError(f"The credentials file {path} is not readable by this user: run "
                         "certbot as root, or fix the file's owner.")
    try:
        # Parsed first on our own: configobj's messages quote the bad line, which may be the key.
        configobj.ConfigObj(path, raise_errors=True)
    except configobj.ConfigObjError as exc:
        line = getattr(exc, "line_number", None)
        raise ValueError(f"The credentials file {path} is not a valid INI file"
                         + (f" (line {line})" if line else "")
                         + f": write it as {CREDENTIALS_HELP}.") from None
    except (OSError, UnicodeDecodeError):
        raise ValueError(f"The credentials file {path} cannot be read as text.") from None
    from certbot import errors

    try:
        credentials = dns_common.CredentialsConfiguration(path, mapper)
        credentials.require({"api-id": "the Imperva API ID", "api-key": "the Imperva API key"})
    except errors.Error as exc:  # certbot's words: which property is missing or empty
        raise ValueError(str(exc)) from None
    api_id = str(credentials.conf("api-id")).strip()
    api_key = str(credentials.conf("api-key")).strip()
    if not api_id.isdigit():
        raise ValueError(f"incapsula_api_id in {path} is not a number: copy the API ID (digits) "
                         "from Imperva's console, Account > API Keys.")
    return api_id, api_key
