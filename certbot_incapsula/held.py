"""What a site holds, from Imperva's answers: the custom certificate a `sites/status` (or
`sites/list` item) shows, whether it is a given certificate, and which domains the site serves.
Knows nothing of certbot or of the API client.
"""
from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional, Sequence

from certbot_incapsula import report, sites

if TYPE_CHECKING:
    from certbot_incapsula.certificate import LocalCertificate


def held_certificate(status: Mapping[str, Any]) -> Optional[Dict[str, Any]]:
    ssl = status.get("ssl")
    held = ssl.get("custom_certificate") if isinstance(ssl, dict) else None
    return held if isinstance(held, dict) and held else None


def _hex(value: Any) -> str:
    return str(value).replace(":", "").replace(" ", "").upper().lstrip("0")


def difference(cert: LocalCertificate, held: Optional[Mapping[str, Any]]) -> Optional[str]:
    """None when the site holds `cert`; otherwise why not, in a few words."""
    if not held:
        return "the site holds no custom certificate"
    if held.get("inputHash"):
        return None if held["inputHash"] == cert.input_hash else "the site holds another certificate"
    if held.get("serialNumber") and _hex(held["serialNumber"]) != _hex(cert.serial_hex):
        return f"the site holds serial {held['serialNumber']}, not {cert.serial_hex}"
    fingerprint = str(held.get("fingerPrint") or "").split("=")[-1]
    if fingerprint and _hex(fingerprint) != _hex(cert.sha1_fingerprint):
        return "the site holds a certificate of another fingerprint"
    try:
        expires = int(held.get("expirationDate"))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        expires = None
    if expires is not None and abs(expires - cert.expiration_ms) > 1000:
        return "the site holds a certificate of another expiry date"
    if expires is None and not held.get("serialNumber") and not fingerprint:
        return "Imperva shows nothing that identifies the certificate it holds"
    return None


def site_domains(status: Mapping[str, Any]) -> List[str]:
    """The domains a site serves: its own, and the names its DNS instructions cover."""
    names = [str(status.get("domain") or "")]
    for entry in status.get("dns") or []:
        if isinstance(entry, dict):
            names.append(str(entry.get("dns_record_name") or ""))
    seen: List[str] = []
    for name in names:
        name = name.strip().lower().rstrip(".")
        if name and name not in seen:
            seen.append(name)
    return seen


def _bare(name: str) -> str:
    name = name.strip().lower().rstrip(".")
    for prefix in ("*.", "www."):
        if name.startswith(prefix):
            name = name[len(prefix):]
    return name


def serves_none(domains: Sequence[str], names: Sequence[str]) -> bool:
    """Whether a site's domains and a certificate's names have nothing in common (a wrong site
    id, or a stale record): not even www./bare or a wildcard relates them."""
    return bool(domains) and not any(
        sites.covers(name, domain) or _bare(name) == _bare(domain)
        for name in names for domain in domains)


def held_label(held: Mapping[str, Any]) -> str:
    """A held certificate in a few words: its serial, else its expiry."""
    if held.get("serialNumber"):
        return f"serial {held['serialNumber']}"
    return f"expiring {report.expiry(held)}"


def _held_problem(held: Mapping[str, Any]) -> Optional[str]:
    """Why a certificate a site holds is not a good one (flagged, or expired); None if good."""
    fatal = report.flags(held)[0]
    if fatal:
        return "flagged " + ", ".join(flag.split(":")[0] for flag in fatal)
    try:
        expired = int(held.get("expirationDate")) <= time.time() * 1000  # type: ignore[arg-type]
    except (TypeError, ValueError):
        expired = False
    return "expired" if expired else None


def normal_fingerprint(value: str) -> str:
    """A fingerprint as plain lowercase hex, whatever its colons, spaces or Imperva's prefix
    ("SHA1 Fingerprint=AA:BB...")."""
    text = value.split("=", 1)[1] if "=" in value else value
    return re.sub(r"[\s:]", "", text).lower()


def is_fingerprint(value: str) -> bool:
    """Whether `value` is a SHA-1 or SHA-256 fingerprint in hex: one of another length can never
    be compared with what an edge serves."""
    return re.fullmatch(r"[0-9a-f]{40}|[0-9a-f]{64}", normal_fingerprint(str(value))) is not None
