"""What every entry point of one lineage's deployment shares: its settings bound to the account's
client and the process's records, the certificate loaded and checked, the sites resolved (and
found again when the records are stale), the records saved, and the warnings about sites left to
another lineage. Knows nothing of certbot or of argv.
"""
from __future__ import annotations

import logging
import os
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Set

from certbot_incapsula import certificate, sites, slots
from certbot_incapsula.api_errors import ImpervaError
from certbot_incapsula.certificate import LocalCertificate
from certbot_incapsula.context import PROCESS, Context
from certbot_incapsula.core.upload import Deployer
from certbot_incapsula.outcomes import LineageFiles, Refusal, Report, SiteOutcome
from certbot_incapsula.records import Records, RecordsBusy
from certbot_incapsula.settings import Settings

logger = logging.getLogger(__name__)

NOTHING_UPLOADED = "Nothing was uploaded."


def _include(lineage: str, site_id: Optional[int]) -> str:
    """How to upload to a site left alone: once, by id; it then holds this host's certificate
    and is the lineage's like its other sites (discovery goes on for new ones)."""
    return (f"upload once to it by id: certbot install --cert-name {lineage} -i incapsula "
            f"--incapsula-site-id {site_id}")


def _sites_of(outcomes: Sequence[SiteOutcome]) -> str:
    ids = [str(o.target.site_id) for o in outcomes]
    return ("site " if len(ids) == 1 else "sites ") + ", ".join(ids)


class LineageBase:
    """One lineage's settings, bound to its account's client and the process's records."""

    def __init__(self, settings: Settings, config_dir: str, *, context: Context = PROCESS) -> None:
        # Offline and cheap: certbot makes one per lineage on every renew, due or not.
        self.settings = settings
        self.config_dir = config_dir
        self.context = context
        self._deployer: Optional[Deployer] = None
        self._redirected: Set[int] = set()  # certbot asks once per name; a site needs it once

    # -- plumbing ---------------------------------------------------------------------------

    @property
    def deployer(self) -> Deployer:
        if self._deployer is None:
            api_id, api_key = self.context.credentials(self.settings.credentials)
            client = self.context.client(api_id, api_key, self.settings.api_url)
            account = self.settings.account_id
            self._deployer = Deployer(client, self.context.records(self.config_dir),
                                      listing=lambda fetch: self.context.listing(client, account, fetch))
        return self._deployer

    @property
    def records(self) -> Records:
        return self.context.records(self.config_dir)

    def load(self, files: LineageFiles, *, check: bool = True) -> LocalCertificate:
        """The lineage's certificate, checked (with `check`, as fit to replace what a site
        holds: chain, validity, names); a Refusal names the file and the fix."""
        try:
            cert = certificate.load(os.path.realpath(files.fullchain), os.path.realpath(files.key))
            if check:
                certificate.check(cert, shown_path=files.fullchain)
        except certificate.CertificateError as exc:
            raise Refusal(f"{exc} {NOTHING_UPLOADED}") from None
        if not self.settings.allow_staging and (
                cert.is_test_ca or "staging" in files.acme_server.lower()):
            raise Refusal(
                f"{files.fullchain} comes from a staging or test CA ({cert.issuer}): uploading it "
                "would replace the trusted certificate that Imperva serves with an untrusted one. "
                f"{NOTHING_UPLOADED} Obtain the certificate from a production CA, or allow "
                "staging certificates for test sites (--incapsula-allow-staging).")
        return cert

    def _resolve(self, lineage: str, names: Sequence[str], rep: Optional[Report],
                 fresh: bool = False) -> sites.Resolution:
        try:
            found = self.deployer.resolve(lineage, names, self.settings.site_ids, fresh)
        except (ImpervaError, sites.SiteMatchError) as exc:
            raise Refusal(f"{exc} {NOTHING_UPLOADED}") from None
        except ValueError as exc:  # the credentials file
            raise Refusal(str(exc)) from None
        if not found.targets:
            raise Refusal(
                "No Imperva site serves any of these names: " + ", ".join(names)
                + ". Add the site in Imperva, or name it with --incapsula-site-id. "
                + NOTHING_UPLOADED)
        if rep is not None:
            if found.discovered:
                rep.notes += sites.chosen_lines(found.targets)
            if found.unmatched:
                rep.warnings.append("no site serves " + ", ".join(found.unmatched)
                                    + "; the certificate is not uploaded for these names.")
        return found

    def _rediscover(self, lineage: str, names: Sequence[str], rep: Report,
                    found: sites.Resolution, outcomes: List[SiteOutcome],
                    again: Callable[[List[sites.SiteTarget]], List[SiteOutcome]]
                    ) -> List[SiteOutcome]:
        """Sites taken from the records that Imperva no longer knows, or that serve none of the
        names, are a stale record: it is dropped, the sites are found again, and `again` does
        the ones found that were not done yet."""
        stale = [o for o in outcomes if o.stale]
        if found.discovered or self.settings.site_ids or not stale:
            return outcomes
        self.records.forget_sites(lineage)
        rep.warnings.append(
            f"the sites recorded for {lineage} in {self.records.path} ("
            + ", ".join(o.target.label() for o in stale) + ") no longer serve its names: the "
            "record is dropped and the sites are found again.")
        try:
            found = self._resolve(lineage, names, rep)
        except Refusal as exc:
            rep.warnings.append(f"finding the sites again failed: {exc}")
            return outcomes
        kept = [o for o in outcomes if not o.stale]
        done = {o.target.site_id for o in kept}
        return kept + again([t for t in found.targets if t.site_id not in done])

    def _save_records(self, rep: Report, what: str) -> None:
        """Saves the records; a file that cannot be written is a warning saying what it lacks."""
        try:
            self.records.save()
        except RecordsBusy as exc:  # the upload stands; only this process's records are lost
            rep.warnings.append(
                f"{what} is not recorded in {self.records.path}: {exc}. What was uploaded stays "
                "uploaded, and self-healing sees it on the site; only the records lack it, so a "
                "rollback will not offer it and a shared site's owner is not updated.")
        except OSError as exc:  # RecordsError: the reason in a few words
            rep.warnings.append(
                f"{what} is not recorded: {self.records.path} cannot be written ({exc}). "
                "Self-healing, rollback and the status view will not know of it, and sites are "
                "looked up again, until the file can be written.")

    def _explain(self, rep: Report, lineage: str, cert: LocalCertificate,
                 outcomes: Sequence[SiteOutcome],
                 owners: Optional[Mapping[int, Optional[str]]] = None) -> None:
        """Warnings, once per process, for sites this lineage leaves to another lineage or to a
        certificate it did not upload; notes for the slots an explicit deployment took over."""
        key_word = slots.KEY_WORDS[cert.key_type]
        held: Dict[str, List[str]] = {}
        for outcome in outcomes:
            verdict, label = outcome.verdict, outcome.target.label()
            if owners and owners.get(outcome.target.site_id) and outcome.error is None \
                    and not outcome.judged_only:
                rep.notes.append(
                    f"Imperva {label}: its {key_word} certificate is now {lineage}'s, no longer "
                    f"{owners[outcome.target.site_id]}'s, which leaves the site alone from now on.")
            if verdict is None:
                continue
            if verdict.action == slots.HELD_BY_OTHER and verdict.owner:
                held.setdefault(verdict.owner, []).append(outcome.target.label())
            elif verdict.action == slots.LEFT_ALONE:
                self._warn_once(rep, f"{lineage} left alone {outcome.target.site_id}", (
                    f"{label} was left alone: {verdict.why}. Imperva's API shows no issuer or "
                    "names of a held certificate: check them in Imperva's console. To replace "
                    f"it, {_include(lineage, outcome.target.site_id)}."))
            elif verdict.action == slots.NEWER_ON_SITE:  # no fault: one line, not a warning
                rep.notes.append(f"Imperva {label}: left alone: {verdict.why}; "
                                 f"{slots.take_back(lineage)}.")
            elif verdict.action == slots.NOT_VERIFIABLE and verdict.wrong:
                self._warn_once(rep, f"{lineage} unverifiable {outcome.target.site_id}", (
                    f"{label}: {verdict.why}. Not verifiable which, so nothing was uploaded: "
                    f"upload the right one again with certbot install --cert-name {lineage} "
                    "-i incapsula (or certbot-incapsula deploy --cert-name NAME)."))
            elif verdict.action == slots.NOT_VERIFIABLE:
                logger.info("Imperva %s: %s (%s): not verifiable, nothing uploaded",
                            outcome.target.label(), verdict.why, lineage)
        for owner, labels in held.items():
            self._warn_once(rep, f"{lineage} held by {owner}", (
                f"{', '.join(labels)} hold{'s' if len(labels) == 1 else ''} the {key_word} "
                f"certificate of lineage {owner}, deployed there last; {lineage} leaves "
                f"{'it' if len(labels) == 1 else 'them'} alone (a site holds one {key_word} "
                f"certificate). To deploy {lineage} there instead: certbot install --cert-name "
                f"{lineage} -i incapsula (or certbot-incapsula deploy --cert-name {lineage}); to "
                "end the overlap, narrow either lineage with --incapsula-site-id."))

    def _warn_once(self, rep: Report, key: str, text: str) -> None:
        if self.context.first_time(key):
            rep.warnings.append(text)
