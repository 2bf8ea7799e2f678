"""`Deployment`: one lineage's entry points, as the doors call them: deploy (upload to every
site), sync (sync.py), check and status (status.py), preflight (edge_requests.py), redirect and
the names the account serves. Knows nothing of certbot or of argv.
"""
from __future__ import annotations

from typing import List

from certbot_incapsula import sites, slots
from certbot_incapsula.api_errors import ImpervaError
from certbot_incapsula.core.lineage import _sites_of
from certbot_incapsula.core.status import StatusView
from certbot_incapsula.core.sync import SelfCheck
from certbot_incapsula.outcomes import LineageFiles, Refusal, Report, SiteOutcome


class Deployment(SelfCheck, StatusView):
    """One lineage's settings, bound to its account's client and the process's records."""

    def deploy(self, files: LineageFiles, *, action: str = "uploaded", pin: bool = False) -> Report:
        """Uploads the certificate to every site of its names, reads each back, records it."""
        cert = self.load(files)
        rep = Report(f"Imperva upload of {cert.describe()}")
        found = self._resolve(files.name, cert.names, rep)
        # An explicit upload ends the hold a rollback put on self-healing; a rollback sets it.
        self.records.pin(files.name, cert.input_hash if pin else None)
        owners = {t.site_id: slots.owner_of(self.records, t.site_id, cert.key_type, files.name)
                  for t in found.targets}

        def upload(targets: List[sites.SiteTarget]) -> List[SiteOutcome]:
            return self.deployer.upload(cert, targets, files.name, files.version, action)

        rep.outcomes = self._rediscover(files.name, cert.names, rep, found,
                                        upload(found.targets), upload)
        self.context.deployed.add((files.name, cert.input_hash))
        self._explain(rep, files.name, cert, rep.outcomes, owners)
        self._save_records(rep, f"The upload of serial {cert.serial_hex} to "
                                f"{_sites_of(rep.outcomes)}")
        self.edge_check(cert, files.name, rep.outcomes, rep)
        return rep

    def redirect(self, name: str) -> Report:
        """Turns on Imperva's HTTP-to-HTTPS redirect on the sites of `name`."""
        rep = Report("Imperva redirect")
        try:
            targets = self.deployer.sites_for(name, self.settings.site_ids)
            for target in targets:
                if target.site_id in self._redirected:
                    continue
                if target.wildcard and not self.records.uploaded_to(target.site_id):
                    rep.notes.append(f"Imperva {target.label()}: left as it is (found only "
                                     f"through {name}; no certificate was deployed there from "
                                     "here).")
                    self._redirected.add(target.site_id)
                    continue
                self.deployer.client.set_redirect_to_https(target.site_id, True)
                self._redirected.add(target.site_id)
                rep.notes.append(f"Imperva {target.label()}: HTTP is now redirected to HTTPS.")
        except (ImpervaError, ValueError) as exc:
            raise Refusal(str(exc)) from None
        return rep

    def served_names(self) -> List[str]:
        """Every name the account's sites serve (certbot offers them when no -d is given)."""
        try:
            listing = self.deployer.listing(True)
            found = {str(site.get("domain") or "") for site in (listing.items() if listing else [])}
        except (ImpervaError, ValueError) as exc:
            raise Refusal(str(exc)) from None
        names = set(found)
        names.update(name[4:] for name in found if name.startswith("www."))
        return sorted(name for name in names if name)
