"""What one lineage's deployment needs, parsed strictly from wherever it was stored.

One parser and one set of messages for every source: certbot's flags and cli.ini, a renewal
config (certbot hands stored values back as strings: "false" must not mean true), the command's
argv, and the settings the command remembers for hook-deployed lineages. Knows nothing of certbot.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

from certbot_incapsula import CREDENTIALS_HELP, DEFAULT_API_URL

# The option names, as in --incapsula-NAME, `incapsula-NAME` (cli.ini) and `incapsula_NAME`
# (renewal config).
OPTIONS = ("credentials", "site-id", "api-url", "account-id", "allow-staging", "preflight",
           "edge-wait")
TRUE_WORDS = ("true", "yes", "on", "1")
FALSE_WORDS = ("false", "no", "off", "0")
EDGE_WAIT_DEFAULT = 60
EDGE_WAIT_MAX = 3600


class SettingsError(ValueError):
    """A setting that cannot be understood; the message names the key, where it came from, and
    what to write instead."""


@dataclass(frozen=True)
class Settings:
    credentials: str  # absolute path of the INI file holding the API id and key
    api_url: str = DEFAULT_API_URL
    site_ids: Tuple[int, ...] = ()
    account_id: Optional[int] = None
    allow_staging: bool = False
    preflight: bool = True
    edge_wait: int = EDGE_WAIT_DEFAULT

    def stored(self) -> Dict[str, str]:
        """The settings as strings, for a config file: no secret is among them."""
        out = {"credentials": self.credentials, "api-url": self.api_url,
               "allow-staging": str(self.allow_staging).lower(),
               "preflight": "on" if self.preflight else "off", "edge-wait": str(self.edge_wait)}
        if self.site_ids:
            out["site-id"] = ",".join(map(str, self.site_ids))
        if self.account_id is not None:
            out["account-id"] = str(self.account_id)
        return out

    def with_overrides(self, overrides: Mapping[str, Any], source: str) -> Settings:
        """These settings with the options given in `overrides` (e.g. command-line flags) in place."""
        changes: Dict[str, Any] = {}
        for option, value in overrides.items():
            if value is None:
                continue
            changes.update(_parse_one(option, value, source))
        return replace(self, **changes)


def _say(option: str, source: str) -> str:
    return f"{source.format(option=option, key='incapsula_' + option.replace('-', '_'))}"


def parse_bool(value: Any, option: str, source: str) -> bool:
    """certbot's own words for yes and no, any case; anything else is an error, not a guess."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in TRUE_WORDS:
        return True
    if text in FALSE_WORDS:
        return False
    raise SettingsError(
        f"{_say(option, source)} is {str(value)[:40]!r}, which is neither true nor false: "
        "write true or false (yes/no, on/off and 1/0 work too).")


def parse_site_ids(value: Any, option: str = "site-id",
                   source: str = "--incapsula-{option}") -> Tuple[int, ...]:
    """"101,102", or a list from cli.ini; raises SettingsError."""
    if value is None or value == "":
        return ()
    items = value if isinstance(value, (list, tuple)) else str(value).split(",")
    ids = []
    for item in items:
        text = str(item).strip()
        if not text:
            continue
        if not text.isdigit() or int(text) <= 0:
            raise SettingsError(
                f"{_say(option, source)}: {text[:40]!r} is not a site id: give the numeric id(s) "
                "that Imperva's console shows for the site, separated by commas (e.g. 123456,234567).")
        if int(text) not in ids:
            ids.append(int(text))
    return tuple(ids)


def parse_api_url(value: Any, option: str = "api-url", source: str = "--incapsula-{option}") -> str:
    from certbot_incapsula.api import check_api_url

    try:
        return check_api_url(str(value))
    except ValueError as exc:
        raise SettingsError(f"{_say(option, source)}: {exc}") from None


def parse_edge_wait(value: Any, option: str = "edge-wait", source: str = "--{option}") -> int:
    text = str(value).strip()
    if not text.isdigit() or int(text) > EDGE_WAIT_MAX:
        raise SettingsError(f"{_say(option, source)}: {text[:40]!r} is not a number of seconds "
                            f"from 0 to {EDGE_WAIT_MAX} (0 turns the edge check off).")
    return int(text)


def _parse_one(option: str, value: Any, source: str) -> Dict[str, Any]:
    if option == "credentials":
        text = str(value).strip()
        if not text:
            raise SettingsError(f"{_say(option, source)} is empty: give the path of an INI file "
                                f"(mode 0600) with {CREDENTIALS_HELP}.")
        # Absolute: a timer runs certbot and the command from /.
        return {"credentials": os.path.abspath(os.path.expanduser(text))}
    if option == "api-url":
        return {"api_url": parse_api_url(value or DEFAULT_API_URL, option, source)}
    if option == "site-id":
        return {"site_ids": parse_site_ids(value, option, source)}
    if option == "account-id":
        text = str(value).strip()
        if not text:
            return {"account_id": None}
        if not text.isdigit() or int(text) <= 0:
            raise SettingsError(f"{_say(option, source)}: {text[:40]!r} is not an account id: give "
                                "the numeric (sub-)account id shown in Imperva's console.")
        return {"account_id": int(text)}
    if option == "allow-staging":
        return {"allow_staging": parse_bool(value, option, source)}
    if option == "preflight":
        return {"preflight": parse_bool(value, option, source)}
    if option == "edge-wait":
        return {"edge_wait": parse_edge_wait(value, option, source)}
    raise SettingsError(f"unknown setting {option}")  # a programming error, worded all the same


def parse(get: Callable[[str], Any], source: str, missing: Optional[str] = None) -> Settings:
    """Settings from a getter of option values (None: not set). `source` words where they came
    from, with {option} and {key} placeholders, e.g. "--incapsula-{option}" or
    "{key} in /etc/letsencrypt/renewal/x.conf"; `missing` how to name absent credentials."""
    credentials = get("credentials")
    if credentials is None or str(credentials).strip() == "":
        raise SettingsError(
            f"{missing or _say('credentials', source)} is required: the path of an INI file "
            f"(mode 0600) with {CREDENTIALS_HELP}.")
    values: Dict[str, Any] = {}
    for option in OPTIONS:
        value = get(option)
        if value is not None:
            values.update(_parse_one(option, value, source))
    return Settings(**values)


def read_stored(path: str, section: Optional[str] = None) -> Dict[str, Any]:
    """The incapsula_* values of a certbot renewal config or of the command's own lineage
    file, by option name; raises SettingsError when the file cannot be read as a config."""
    import configobj

    try:
        conf = configobj.ConfigObj(path, encoding="utf-8", raise_errors=True, file_error=True)
    except (configobj.ConfigObjError, OSError, UnicodeDecodeError, ValueError, SyntaxError):
        raise SettingsError(f"{path} cannot be read as a configuration file: restore it from a "
                            "backup or write it again.") from None
    params = conf.get(section) if section else conf
    if not isinstance(params, Mapping):
        raise SettingsError(f"{path} has no [{section}] section: restore it from a backup.")
    return {option: params.get("incapsula_" + option.replace("-", "_")) for option in OPTIONS}

