"""The certbot glue: options, credentials, and certbot's installer calls mapped onto uploads.

Thin on purpose: the API client (api.py), the certificate checks (certificate.py), site matching
(sites.py), the upload orchestration (deploy.py) and the records (records.py) know nothing of
certbot. Heavy modules are imported inside methods: certbot imports this module on every command.
"""
from __future__ import annotations

import logging
import os
import re
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterable, List, Optional, Set, Tuple

from certbot import errors, interfaces
from certbot.display import util as display_util
from certbot.plugins import common

from certbot_incapsula import CREDENTIALS_HELP, DEFAULT_API_URL

if TYPE_CHECKING:
    from certbot_incapsula.certificate import LocalCertificate
    from certbot_incapsula.deploy import Deployer, SiteOutcome
    from certbot_incapsula.sites import SiteTarget

logger = logging.getLogger(__name__)

DESCRIPTION = "Upload certificates to Imperva Cloud WAF (Incapsula) sites"

# (lineage, certificate hash) uploaded by this process: certbot calls generic_updates right after
# renew_deploy, on a fresh installer object, and it must not pay for a second round of checks.
_DEPLOYED_THIS_RUN: Set[Tuple[str, str]] = set()


class Installer(common.Installer, interfaces.RenewDeployer, interfaces.GenericUpdater):
    """Uploads certbot's certificates to Imperva Cloud WAF sites through Imperva's API."""

    description = DESCRIPTION

    @classmethod
    def add_parser_arguments(cls, add: Callable[..., None]) -> None:
        add("credentials", metavar="PATH", default=None,
            help="Imperva API credentials INI file (mode 0600) with " + CREDENTIALS_HELP + ".")
        add("site-id", metavar="ID[,ID...]", default=None,
            help="Imperva site id(s) to upload to. Default: the sites whose domain is one of "
                 "the certificate's names (found with the API).")
        add("api-url", metavar="URL", default=DEFAULT_API_URL,
            help="Imperva API base URL (default: %(default)s).")
        add("allow-staging", action="store_true", default=False,
            help="Also upload certificates from a staging or test CA (replaces a trusted "
                 "certificate with an untrusted one: for test sites only).")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Offline and cheap: certbot builds an installer for every lineage on every renew.
        super().__init__(*args, **kwargs)
        self._settings: Optional[Dict[str, Any]] = None
        self._deployer_obj: Optional[Deployer] = None
        self._done: Set[str] = set()
        self._sites_by_name: Dict[str, List[SiteTarget]] = {}
        self._redirected: Set[int] = set()

    def more_info(self) -> str:
        return ("Uploads the certificate and key to the Imperva Cloud WAF site(s) that serve "
                "its names, with Imperva's API, and reports Imperva's validity flags.")

    # -- prepare: options and credentials -----------------------------------------------------

    def prepare(self) -> None:
        """Reads options and credentials; on --dry-run also checks them against Imperva.

        When this plugin is the chosen installer it raises ConfigurationError, never PluginError:
        during `renew` certbot takes a PluginError from prepare() as "installer missing" and
        silently drops it from the renewal config. When certbot merely prepares every plugin
        (`certbot plugins --prepare`, interactive choice) a MisconfigurationError lets it go on.
        """
        if self._settings is not None:
            return
        try:
            self._settings = self._read_settings()
        except (ValueError, errors.PluginError) as exc:
            if getattr(self.config, "installer", None) == self.name:
                raise errors.ConfigurationError(str(exc)) from None
            raise errors.MisconfigurationError(str(exc)) from None
        if getattr(self.config, "dry_run", False):
            self._dry_run_check()

    def _read_settings(self) -> Dict[str, Any]:
        from certbot_incapsula import api, credentials, sites

        path = self.conf("credentials")
        if not path:
            raise ValueError(
                "--incapsula-credentials PATH is required: an INI file (mode 0600) with "
                + CREDENTIALS_HELP + ".")
        path = os.path.abspath(os.path.expanduser(str(path)))
        # Stored in the renewal config as absolute: a timer runs certbot from /.
        setattr(self.config, self.dest("credentials"), path)
        api_id, api_key = credentials.read(path, self.dest)
        return {
            "api_id": api_id,
            "api_key": api_key,
            "site_ids": sites.parse_site_ids(self.conf("site-id")),
            "api_url": api.check_api_url(str(self.conf("api-url") or DEFAULT_API_URL)),
            "allow_staging": bool(self.conf("allow-staging")),
        }

    def _settings_now(self) -> Dict[str, Any]:
        self.prepare()
        assert self._settings is not None
        return self._settings

    def _deployer(self) -> Deployer:
        if self._deployer_obj is None:
            from certbot_incapsula.api import ImpervaClient
            from certbot_incapsula.deploy import Deployer
            from certbot_incapsula.records import Records

            settings = self._settings_now()
            client = ImpervaClient(settings["api_id"], settings["api_key"], settings["api_url"])
            self._deployer_obj = Deployer(client, Records(self.config.config_dir))
        return self._deployer_obj

    def _dry_run_check(self) -> None:
        """Read-only: the key works and each configured site answers to it."""
        from certbot_incapsula.api import ImpervaError

        deployer = self._deployer()
        names = [str(d) for d in (getattr(self.config, "domains", None) or [])]
        lineage = getattr(self.config, "certname", None) or (names[0] if names else "")
        try:
            deployer.client.verify_account()
            targets = self._resolve(lineage, names, quiet=True) if names else []
        except (ImpervaError, errors.PluginError) as exc:
            raise errors.ConfigurationError(f"Dry run: {exc}") from None
        failed = [o for o in deployer.check(targets) if o.error]
        if failed:
            raise errors.ConfigurationError("Dry run: " + "; ".join(
                f"{o.target.label()}: {o.error}" for o in failed))
        display_util.notify("Imperva: the API key works" + (
            "; reachable: " + ", ".join(t.label() for t in targets) if targets else ""))

    # -- deployment --------------------------------------------------------------------------

    def deploy_cert(self, domain: str, cert_path: str, key_path: str,
                    chain_path: Optional[str] = None, fullchain_path: Optional[str] = None) -> None:
        """certbot calls this once per name: the first call uploads to every site, once."""
        if not fullchain_path:
            raise errors.PluginError("The incapsula installer needs certbot's fullchain.pem.")
        fullchain = os.path.realpath(fullchain_path)
        if fullchain in self._done:
            return
        self._done.add(fullchain)
        self._deploy(_lineage_name(fullchain_path), fullchain, os.path.realpath(key_path))

    def renew_deploy(self, lineage: interfaces.RenewableCert, *args: Any, **kwargs: Any) -> None:
        """certbot renew: uploads the renewed certificate (deploy_cert is not called on renew)."""
        self._deploy(lineage.lineagename, os.path.realpath(lineage.fullchain_path),
                     os.path.realpath(lineage.key_path))

    def generic_updates(self, lineage: interfaces.RenewableCert, *args: Any, **kwargs: Any) -> None:
        """Every `certbot renew`, due or not: re-uploads where Imperva does not hold the
        lineage's current certificate (a failed or skipped upload heals here)."""
        self.prepare()  # certbot does not prepare the installer for lineages not due
        name = lineage.lineagename
        cert = self._load(os.path.realpath(lineage.fullchain_path),
                          os.path.realpath(lineage.key_path))
        if (name, cert.input_hash) in _DEPLOYED_THIS_RUN:
            return
        self._check_staging(cert)  # before any upload the self-check might make
        deployer = self._deployer()
        if deployer.records.lineage(name).get("pinned"):
            logger.warning("Imperva: %s is held at an older certificate by `certbot rollback`; "
                           "self-healing is paused until `certbot install --cert-name %s -i "
                           "incapsula` or the next renewal uploads the current one.", name, name)
            return
        targets = self._resolve(name, cert.names)
        outcomes = deployer.sync(cert, targets, name, _archive_version(cert.fullchain_path))
        changed = [o for o in outcomes if o.action != "in sync" or o.failed]
        if not changed:
            logger.info("Imperva: %s is in sync on %d site(s)", name, len(outcomes))
            return
        self._report(cert, changed, f"Imperva self-check of {name}")

    def _deploy(self, lineage: str, fullchain: str, key: str) -> None:
        cert = self._load(fullchain, key)
        self._check_staging(cert)
        targets = self._resolve(lineage, cert.names)
        deployer = self._deployer()
        # An explicit upload ends the hold that a rollback put on self-healing.
        deployer.records.lineage(lineage)["pinned"] = None
        outcomes = deployer.upload(cert, targets, lineage, _archive_version(fullchain))
        _DEPLOYED_THIS_RUN.add((lineage, cert.input_hash))
        self._report(cert, outcomes, f"Imperva upload of {cert.describe()}")

    def _load(self, fullchain: str, key: str) -> LocalCertificate:
        from certbot_incapsula import certificate

        try:
            return certificate.load(fullchain, key)
        except certificate.CertificateError as exc:
            raise errors.PluginError(f"{exc} Nothing was uploaded.") from None

    def _check_staging(self, cert: LocalCertificate) -> None:
        if self._settings_now()["allow_staging"]:
            return
        server = str(getattr(self.config, "server", "") or "")
        if cert.is_test_ca or "staging" in server.lower():
            raise errors.PluginError(
                f"{cert.fullchain_path} comes from a staging or test CA ({cert.issuer}): "
                "uploading it would replace the trusted certificate that Imperva serves with an "
                "untrusted one. Nothing was uploaded. Obtain the certificate from a production "
                "CA, or pass --incapsula-allow-staging for test sites.")

    def _resolve(self, lineage: str, names: List[str], quiet: bool = False) -> List[SiteTarget]:
        from certbot_incapsula.api import ImpervaError
        from certbot_incapsula.sites import SiteMatchError

        deployer = self._deployer()
        try:
            found = deployer.resolve(lineage, names, self._settings_now()["site_ids"])
        except (ImpervaError, SiteMatchError) as exc:
            raise errors.PluginError(f"{exc} Nothing was uploaded.") from None
        if not found.targets:
            raise errors.PluginError(
                "No Imperva site serves any of these names: " + ", ".join(names)
                + ". Add the site in Imperva, or name it with --incapsula-site-id. "
                "Nothing was uploaded.")
        for target in found.targets:
            for name in target.names:
                self._sites_by_name.setdefault(name, []).append(target)
            if found.discovered and not quiet:
                display_util.notify(f"Imperva {target.label()} chosen for "
                                    + ", ".join(target.names))
        if found.unmatched:
            logger.warning("Imperva: no site serves %s; the certificate is not uploaded for "
                           "these names.", ", ".join(found.unmatched))
        return found.targets

    def _report(self, cert: LocalCertificate, outcomes: List[SiteOutcome], title: str) -> None:
        lines = [title + ":"]
        for outcome in outcomes:
            lines += ["  " + line for line in outcome.lines()]
        display_util.notify("\n".join(lines))
        warned = [o for o in outcomes if o.warnings and not o.failed]
        for outcome in warned:
            logger.warning("Imperva %s: %s", outcome.target.label(), "; ".join(outcome.warnings))
        failed = [o for o in outcomes if o.failed]
        if failed:
            raise errors.PluginError(
                f"Imperva: {len(failed)} of {len(outcomes)} site(s) failed for "
                f"{cert.fullchain_path}: " + "; ".join(
                    f"{o.target.label()}: " + (o.error or "now holds the certificate flagged "
                                               + ", ".join(o.fatal_flags)) for o in failed))

    # -- enhancements --------------------------------------------------------------------------

    def supported_enhancements(self) -> List[str]:
        return ["redirect"]

    def enhance(self, domain: str, enhancement: str,
                options: Optional[Any] = None) -> None:
        from certbot_incapsula.api import ImpervaError

        if enhancement != "redirect":
            raise errors.PluginError(f"The incapsula installer does not support {enhancement}.")
        if getattr(self.config, "redirect", None) is None:
            # certbot asks for a redirect by default; on a live WAF site it must be asked for.
            logger.info("Imperva: HTTP-to-HTTPS redirect left as it is (pass --redirect).")
            return
        targets = self._sites_by_name.get(domain)
        if targets is None:  # `certbot enhance`: nothing was deployed in this run
            try:
                targets = self._deployer().sites_for(domain, self._settings_now()["site_ids"])
            except ImpervaError as exc:
                raise errors.PluginError(str(exc)) from None
        for target in targets:
            if target.site_id in self._redirected:
                continue
            try:
                self._deployer().client.set_redirect_to_https(target.site_id, True)
            except ImpervaError as exc:
                raise errors.PluginError(str(exc)) from None
            self._redirected.add(target.site_id)
            display_util.notify(f"Imperva {target.label()}: HTTP is now redirected to HTTPS.")

    # -- certbot's file-based installer calls: nothing local to change -------------------------

    def get_all_names(self) -> Iterable[str]:
        """The names the account's sites serve (certbot offers them when no -d is given)."""
        from certbot_incapsula.api import ImpervaError

        try:
            found = {str(site.get("domain") or "") for site in self._deployer().client.list_sites()}
        except ImpervaError as exc:
            raise errors.PluginError(str(exc)) from None
        names = set(found)
        names.update(name[4:] for name in found if name.startswith("www."))
        return sorted(name for name in names if name)

    def save(self, title: Optional[str] = None, temporary: bool = False) -> None:
        """Nothing to save: uploads happen in deploy_cert and renew_deploy."""

    def config_test(self) -> None:
        """No local configuration exists to test."""

    def restart(self) -> None:
        """Imperva serves an upload at once: nothing to restart."""

    def recovery_routine(self) -> None:
        """Uploads are not local changes: a failed one leaves the site's certificate as it was."""

    def rollback_checkpoints(self, rollback: int = 1) -> None:
        """Uploads again, for each lineage, the certificate deployed `rollback` uploads ago."""
        from certbot_incapsula.rollback import plan

        records = self._deployer().records
        try:
            steps = plan(records, rollback)
        except ValueError as exc:
            raise errors.PluginError(str(exc)) from None
        if not steps:
            raise errors.PluginError("Imperva: no earlier certificate is recorded to roll back to.")
        for step in steps:
            self._resolve_for_rollback(step)

    def _resolve_for_rollback(self, step: Any) -> None:
        from certbot_incapsula.sites import SiteTarget

        cert = self._load(step.fullchain, step.privkey)
        self._check_staging(cert)
        deployer = self._deployer()
        deployer.records.lineage(step.lineage)["pinned"] = cert.input_hash
        targets = [SiteTarget(site_id, domain) for site_id, domain in step.sites]
        outcomes = deployer.upload(cert, targets, step.lineage, step.version,
                                   action=f"rolled back to archive version {step.version}")
        self._report(cert, outcomes, f"Imperva rollback of {step.lineage}")


def _lineage_name(live_path: str) -> str:
    """certbot's live/NAME/fullchain.pem -> NAME."""
    return os.path.basename(os.path.dirname(os.path.abspath(live_path)))


def _archive_version(archive_path: str) -> Optional[int]:
    match = re.search(r"(\d+)\.pem$", os.path.basename(archive_path))
    return int(match.group(1)) if match else None


if not hasattr(interfaces, "Installer"):  # pragma: no cover - certbot < 1.18 knows only zope
    import zope.interface

    Installer = zope.interface.implementer(interfaces.IInstaller)(Installer)  # type: ignore
    zope.interface.directlyProvides(Installer, interfaces.IPluginFactory)  # type: ignore
