"""The lineages a config dir holds for this plugin, and the settings each was deployed with.

Two kinds: certbot lineages whose renewal config names `installer = incapsula` (the installer's
options are stored there), and lineages deployed by the `certbot-incapsula deploy` hook, whose
settings the command remembers in `<config-dir>/incapsula/lineages/NAME.conf` (paths and options,
never a secret). Read strictly, with `settings.parse`: a file that cannot be understood is an
error for that lineage alone. Knows certbot's files, not certbot's code.
"""
from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

from certbot_incapsula.outcomes import LineageFiles
from certbot_incapsula.settings import Settings, SettingsError, parse, read_stored

HOOK_DIR = os.path.join("incapsula", "lineages")
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,200}$")


@dataclass
class StoredLineage:
    name: str
    source: str  # the file its settings come from
    files: Optional[LineageFiles] = None
    settings: Optional[Settings] = None
    error: Optional[str] = None  # why it cannot be used, naming the file


def renewal_config(config_dir: str, name: str) -> str:
    return os.path.join(config_dir, "renewal", f"{name}.conf")


def hook_file(config_dir: str, name: str) -> str:
    return os.path.join(config_dir, HOOK_DIR, f"{name}.conf")


def safe_name(name: str) -> str:
    """A lineage name fit for a file name (lego names a wildcard's files _.example.com)."""
    name = name.replace("*", "_")
    if not _SAFE_NAME.match(name) or name in (".", ".."):
        raise SettingsError(f"{name[:60]!r} cannot be used as a lineage name: give --cert-name "
                            "with letters, digits, dots, dashes or underscores.")
    return name


def _top(path: str) -> Dict[str, Any]:
    import configobj

    try:
        return dict(configobj.ConfigObj(path, encoding="utf-8", raise_errors=True, file_error=True))
    except (configobj.ConfigObjError, OSError, UnicodeDecodeError, ValueError, SyntaxError):
        raise SettingsError(f"{path} cannot be read as a configuration file: restore it from a "
                            "backup or write it again.") from None


def certbot_files(config_dir: str, name: str) -> LineageFiles:
    """A certbot lineage's files and its CA, as its renewal config names them, whatever its
    installer (a deploy hook's lineage names none); live/NAME and no CA when the config is
    missing or cannot be read (the certificate's issuer is still checked)."""
    live = os.path.join(config_dir, "live", name)
    top: Dict[str, Any] = {}
    try:
        top = _top(renewal_config(config_dir, name))
    except SettingsError:
        pass
    params = top.get("renewalparams")
    server = params.get("server") if isinstance(params, dict) else None
    return LineageFiles(name, str(top.get("fullchain") or os.path.join(live, "fullchain.pem")),
                        str(top.get("privkey") or os.path.join(live, "privkey.pem")),
                        str(server or ""))


def from_renewal_config(config_dir: str, name: str, *, require_installer: bool = True
                        ) -> Optional[StoredLineage]:
    """The lineage of a certbot renewal config; None when the config does not name this plugin
    (and `require_installer`). A damaged config is a StoredLineage with an error."""
    path = renewal_config(config_dir, name)
    entry = StoredLineage(name, path)
    try:
        top = _top(path)
        params = top.get("renewalparams")
        if not isinstance(params, dict):
            raise SettingsError(f"{path} has no [renewalparams] section: restore it from a backup.")
        if require_installer and params.get("installer") != "incapsula":
            return None
        stored = read_stored(path, "renewalparams")
        entry.settings = parse(stored.get, "{key} in " + path)
        live = os.path.join(config_dir, "live", name)
        entry.files = LineageFiles(
            name, str(top.get("fullchain") or os.path.join(live, "fullchain.pem")),
            str(top.get("privkey") or os.path.join(live, "privkey.pem")),
            str(params.get("server") or ""))
    except SettingsError as exc:
        entry.error = str(exc)
    return entry


def from_hook_file(config_dir: str, name: str) -> StoredLineage:
    path = hook_file(config_dir, name)
    entry = StoredLineage(name, path)
    try:
        top = _top(path)
        fullchain, key = top.get("fullchain"), top.get("privkey")
        if not isinstance(fullchain, str) or not isinstance(key, str):
            raise SettingsError(f"{path} lacks fullchain or privkey: run certbot-incapsula "
                                "deploy for this certificate again.")
        entry.settings = parse(read_stored(path).get, "{key} in " + path)
        entry.files = LineageFiles(name, fullchain, key, str(top.get("acme_server") or ""))
    except SettingsError as exc:
        entry.error = str(exc)
    return entry


def remember(config_dir: str, files: LineageFiles, settings: Settings) -> str:
    """Writes what `sync` and `status` need for a hook-deployed lineage; returns the path.

    Written by ConfigObj, which reads it back: it quotes a value holding `#`, `,`, quotes or
    leading spaces (a path of any name), where a hand-written `key = value` line would be cut at
    `#` or split at `,`. Files written before are read the same way, and rewritten at the next
    deploy. SettingsError for a value that cannot be written so that it reads back the same."""
    import configobj

    path = hook_file(config_dir, safe_name(files.name))
    values = {"fullchain": os.path.abspath(files.fullchain),
              "privkey": os.path.abspath(files.key),
              "acme_server": files.acme_server}
    values.update({f"incapsula_{option.replace('-', '_')}": value
                   for option, value in settings.stored().items()})
    conf = configobj.ConfigObj()  # no encoding: write() gives text lines, written as UTF-8 below
    conf.initial_comment = [
        "# Written by `certbot-incapsula deploy` for `certbot-incapsula sync` and `status`.",
        "# Paths and options only: the API key stays in the credentials file."]
    conf.update(values)
    try:
        lines = [str(line) for line in conf.write()]
        back = configobj.ConfigObj(lines, raise_errors=True)
    except (configobj.ConfigObjError, SyntaxError):
        back = None
    for key, value in values.items():
        if back is None or back.get(key) != value:
            raise SettingsError(
                f"{value[:200]!r} cannot be stored in {path} so that it reads back the same "
                f"({key}): give it by another path (a symbolic link, say). Nothing was uploaded.")
    directory = os.path.dirname(path)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".lineage-", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write("\n".join(lines) + "\n")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def all_lineages(config_dir: str, only: Optional[str] = None) -> List[StoredLineage]:
    """Every lineage of this plugin in the config dir, by name; a certbot renewal config that
    names the installer wins over a hook file of the same name."""
    found: Dict[str, StoredLineage] = {}
    renewal_dir = os.path.join(config_dir, "renewal")
    for filename in sorted(_listdir(renewal_dir)):
        if filename.endswith(".conf") and (only is None or filename[:-5] == only):
            entry = from_renewal_config(config_dir, filename[:-5])
            if entry is not None:
                found[entry.name] = entry
    for filename in sorted(_listdir(os.path.join(config_dir, HOOK_DIR))):
        name = filename[:-5]
        if filename.endswith(".conf") and name not in found and (only is None or name == only):
            found[name] = from_hook_file(config_dir, name)
    return [found[name] for name in sorted(found)]


def _listdir(path: str) -> List[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []
