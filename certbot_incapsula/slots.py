"""What one key type's slot of a site holds, judged from what Imperva shows and this host's
records, and what a lineage should do about it. Knows nothing of certbot or of the API client.

Imperva keeps one custom certificate per site and key type (RSA, ECC), but `sites/status` (and
`sites/list`) may show only the most recently uploaded one, perhaps without its key type. What
is known, and how:

- the certificate shown is this lineage's: in sync (its inputHash, serial or fingerprint);
- the key type of the certificate shown: its `authType` when Imperva gives one, else the key
  type this host uploaded it as (the records), else unknown;
- a slot this host never uploaded this certificate to, or whose last upload from here was
  another certificate, does not hold it: upload;
- the shown certificate is of the other key type: this slot cannot be read. If this host
  uploaded this slot's certificate after the shown one, and Imperva shows the newest upload, the
  slot was emptied since: upload. Otherwise "not verifiable": nothing is uploaded on a guess;
- the slot belongs to another lineage of this host (deployed there last, explicitly): left to it;
- the slot holds a better certificate than this lineage's (another host's of an HA pair: valid,
  active, not expiring within a day, covering at least as many of the site's domains, and newer):
  "newer on site", left to it. Self-healing only; an explicit deployment uploads anyway.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, Optional

from certbot_incapsula import report, sites

if TYPE_CHECKING:
    from certbot_incapsula.certificate import LocalCertificate
    from certbot_incapsula.records import Records
    from certbot_incapsula.sites import SiteTarget

IN_SYNC = "in sync"
UPLOAD = "upload"
NOT_VERIFIABLE = "not verifiable"
HELD_BY_OTHER = "held by other lineage"
LEFT_ALONE = "left alone"
REPLACED = "not repaired"  # the lineage's certificate was replaced while it was being checked
NEWER_ON_SITE = "newer on site"  # a state name monitors match on: keep it
# Not this lineage's to fix.
NOT_UPLOADED = (NOT_VERIFIABLE, HELD_BY_OTHER, LEFT_ALONE, NEWER_ON_SITE, REPLACED)
DAY_MS = 24 * 3600 * 1000  # a certificate expiring sooner than this is replaced, however new
# Expiry dates less than a minute apart (the status view shows minutes) are of the same age: a
# certificate from elsewhere of the same age is replaced as before this rule (the self-healing of
# issues 4 and 9); between two hosts of the plugin the exact order decides, the same on both.
SAME_AGE_MS = 60 * 1000
KEY_WORDS = {"RSA": "RSA", "ECC": "ECDSA"}


@dataclass
class Verdict:
    action: str  # one of the constants above
    why: str = ""  # a few words, for the report and the status view
    owner: Optional[str] = None  # HELD_BY_OTHER: the lineage the slot belongs to
    wrong: bool = False  # NOT_VERIFIABLE: yet something is known to be wrong on the site


def key_type_of(held: Mapping[str, Any], records: Records) -> Optional[str]:
    """RSA or ECC: Imperva's authType, else what this host uploaded the certificate as."""
    shown = str(held.get("authType") or "").strip().upper()
    if shown in ("RSA", "ECC", "EC", "ECDSA"):
        return "RSA" if shown == "RSA" else "ECC"
    entry = records.find_certificate(held)
    kind = entry.get("auth_type") if entry else None
    return kind if kind in ("RSA", "ECC") else None


def _identified(held: Mapping[str, Any]) -> bool:
    return any(held.get(k) for k in ("inputHash", "serialNumber", "fingerPrint"))


def foreign(held: Mapping[str, Any], records: Records, site_id: int) -> bool:
    """Whether the certificate shown was not uploaded by this host (as far as its records say)."""
    if _identified(held):
        return records.find_certificate(held) is None
    return not records.uploaded_to(site_id)  # nothing identifies it: the site's past decides


def valid(held: Mapping[str, Any], now_ms: Optional[int] = None) -> bool:
    """A certificate that serves: not expired, not flagged invalid or revoked (unknown: valid)."""
    if held.get("validityError") in (True, "true") or held.get("revocationError") in (True, "true"):
        return False
    try:
        expires = int(held.get("expirationDate"))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return True
    return expires > (now_ms if now_ms is not None else int(time.time() * 1000))


def slot_expiry(cert: LocalCertificate, held: Optional[Mapping[str, Any]],
                verdict: Optional[Verdict], records: Records) -> Optional[float]:
    """When the certificate in `cert`'s key-type slot expires (Unix time), if Imperva shows it:
    the shown certificate is this one, or of this key type (or of none known, one slot in use)."""
    if not held or verdict is None or verdict.action == NOT_VERIFIABLE:
        return None
    if verdict.action != IN_SYNC and key_type_of(held, records) not in (cert.key_type, None):
        return None
    try:
        return int(held["expirationDate"]) / 1000
    except (KeyError, TypeError, ValueError):
        return None


def describe(held: Mapping[str, Any], records: Records) -> str:
    """What Imperva says of a certificate: key type, serial, expiry. It shows no issuer or names."""
    kind = key_type_of(held, records)
    parts = [f"{KEY_WORDS[kind]} key" if kind else "key type not shown"]
    if held.get("serialNumber"):
        parts.append(f"serial {held['serialNumber']}")
    parts.append(f"expires {report.expiry(held)}")
    return ", ".join(parts)


def owner_of(records: Records, site_id: int, key_type: str, lineage: str) -> Optional[str]:
    """The other lineage this slot belongs to, if it still exists on this host (its newest
    recorded certificate file is there: `certbot delete` frees its sites)."""
    slot = records.slot(site_id, key_type)
    owner = slot.get("owner") if slot else None
    if not owner or owner == lineage:
        return None
    history = records.history(owner)
    path = history[-1].get("fullchain") if history else None
    return owner if isinstance(path, str) and os.path.exists(path) else None


def _set(held: Mapping[str, Any], name: str) -> bool:
    return held.get(name) in (True, "true", "True", 1)


def outranks(cert: LocalCertificate, lineage: str, target: SiteTarget, held: Mapping[str, Any],
             records: Records, now_ms: Optional[int] = None) -> Optional[str]:
    """Why the certificate a slot holds is better than `cert`, so that self-healing leaves it (a
    few words for the report); None when `cert` should replace it. Better means: not flagged,
    active, not expiring within a day, covering at least as many of the site's domains, and
    newer. Imperva does not show which names a held certificate has: its coverage flag is the
    evidence (set: it lacks a domain of the site; clear: it covers them all). An earlier
    certificate of this same lineage never outranks its current one (say, a renewal that dropped
    a name and whose upload failed)."""
    now = now_ms if now_ms is not None else int(time.time() * 1000)
    if report.flags(held)[0] or report.active(held) == "no":
        return None
    entry = records.find_certificate(held) if _identified(held) else None
    if entry is not None and entry.get("lineage") == lineage:
        return None
    try:
        expires = int(held.get("expirationDate"))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None  # nothing shows it is newer
    if expires - now < DAY_MS:
        return None
    gaps = sites.uncovered(target.domains, cert.names) if target.domains else None
    shown = [name for name in report.COVERAGE_FLAGS if name in held]
    if gaps == [] and any(_set(held, name) for name in shown):
        return None  # it covers fewer of the site's domains than this certificate
    held_line = describe(held, records)
    if gaps and shown and not any(_set(held, name) for name in shown):
        # Ranked above age: a newer certificate that lacks a domain would take the site back
        # from a complete one on every run (and Imperva flags it), and be taken back again.
        return (f"the site holds a certificate ({held_line}) that covers all of its domains, "
                f"which this one does not ({', '.join(gaps)} missing)")
    ours = cert.expiration_ms
    if entry is None and isinstance(held.get("inputHash"), str) and held["inputHash"]:
        # Another host of the plugin (or a tool that sends an input hash): the exact order,
        # which that host sees the same way, so the two never take the site from each other.
        newer = (expires, held["inputHash"]) > (ours, cert.input_hash)
    else:
        newer = expires > ours + SAME_AGE_MS
    if not newer:
        return None
    origin = ("uploaded by another host or tool" if entry is None
              else f"uploaded from this host for {entry['lineage']}")
    mine = f"serial {cert.serial_hex}, expires {report.expiry({'expirationDate': ours})}"
    if expires == ours:  # both hosts break the tie the same way
        return (f"the site holds a certificate of the same age ({held_line}, {origin}) as this "
                f"one ({mine}), chosen over it by its input hash, as on the other host")
    later = f": {(expires - ours) / 1000:g} s newer" if expires - ours < SAME_AGE_MS else ""
    return f"the site holds a newer certificate ({held_line}, {origin}) than this one ({mine}){later}"


def take_back(lineage: str) -> str:
    """How to make a site left to a newer certificate hold this lineage's again."""
    return (f"to take the site back, deploy explicitly: certbot install --cert-name {lineage} "
            f"-i incapsula (or certbot-incapsula deploy --cert-name {lineage})")


def judge(cert: LocalCertificate, lineage: str, target: SiteTarget,
          held: Optional[Mapping[str, Any]], records: Records) -> Verdict:
    """What this lineage should do about one site, from the certificate Imperva shows there."""
    from certbot_incapsula.held import difference

    kind, site_id = cert.key_type, target.site_id
    if held and difference(cert, held) is None:
        return Verdict(IN_SYNC)
    owner = owner_of(records, site_id, kind, lineage)
    mine = records.slot(site_id, kind)
    if not held:
        verdict = Verdict(UPLOAD, "the site holds no custom certificate")
    else:
        shown = key_type_of(held, records)
        other = "RSA" if kind == "ECC" else "ECC"
        if shown is None and records.slot(site_id, other) is not None:
            # Both slots hold this host's certificates; which one this replaced is not said.
            return Verdict(NOT_VERIFIABLE, wrong=True, why=(
                f"Imperva shows a certificate this host did not upload ({describe(held, records)}) "
                f"and not its key type: it replaced this {KEY_WORDS[kind]} certificate or the "
                f"{KEY_WORDS[other]} one of {records.slot(site_id, other)['owner']}"))  # type: ignore[index]
        if shown in (kind, None):  # unknown, and no other key type of ours here: one slot in use
            better = outranks(cert, lineage, target, held, records)
            verdict = (Verdict(NEWER_ON_SITE, better) if better
                       else Verdict(UPLOAD, "the site holds another certificate"))
        elif mine is None or mine["input_hash"] != cert.input_hash:
            verdict = Verdict(UPLOAD, f"this {KEY_WORDS[kind]} certificate was not uploaded "
                                      "to the site from here")
        else:
            theirs = records.slot(site_id, shown)
            entry = records.find_certificate(held)
            if (theirs is not None and entry is not None
                    and entry.get("input_hash") == theirs["input_hash"]
                    and theirs["seq"] < mine["seq"] and not records.status_not_latest(site_id)):
                # Imperva shows the newest upload: an older one shown means this one is gone.
                verdict = Verdict(UPLOAD, f"the {KEY_WORDS[kind]} certificate was removed")
            else:
                return Verdict(NOT_VERIFIABLE, why=(
                    f"Imperva shows only the site's {KEY_WORDS[shown]} certificate; the "
                    f"{KEY_WORDS[kind]} one cannot be read there"))
    if owner is not None:
        return Verdict(HELD_BY_OTHER, owner=owner, why=(
            f"the site's {KEY_WORDS[kind]} certificate belongs to lineage {owner}, deployed "
            "there last"))
    return verdict


def guard_wildcard(target: SiteTarget, held: Optional[Mapping[str, Any]], records: Records,
                   verdict: Verdict) -> Verdict:
    """A site chosen only through a wildcard is not taken from a valid certificate that this
    host did not upload: the user never named it."""
    if (verdict.action == UPLOAD and target.wildcard and held
            and valid(held) and foreign(held, records, target.site_id)):
        return Verdict(LEFT_ALONE, why=(
            f"found only through a wildcard, it holds a valid certificate this host did not "
            f"upload ({describe(held, records)})"))
    return verdict
