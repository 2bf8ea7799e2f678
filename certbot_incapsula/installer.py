"""Door 1, the certbot installer: certbot's calls -> core calls; reports -> certbot's messages
and errors. The deployment itself is in core/, shared with the command (cli.py).

Heavy modules are imported inside methods: certbot imports this module on every command.
"""
from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterable, List, Optional, Set

from certbot import errors, interfaces
from certbot.display import util as display_util
from certbot.plugins import common

from certbot_incapsula import CREDENTIALS_HELP, DEFAULT_API_URL

# settings.EDGE_WAIT_DEFAULT, written out: importing settings here would cost every certbot
# command a millisecond (its dataclass); tests/test_settings.py checks that the two agree.
EDGE_WAIT_HELP_DEFAULT = 60

if TYPE_CHECKING:
    from certbot_incapsula.core import Deployment
    from certbot_incapsula.installer_preflight import OrderPreflight
    from certbot_incapsula.outcomes import LineageFiles, Report
    from certbot_incapsula.settings import Settings

logger = logging.getLogger(__name__)

DESCRIPTION = "Upload certificates to Imperva Cloud WAF (Incapsula) sites"
# certbot hands stored options back without saying where they came from.
SOURCE = "--incapsula-{option} (or {key} in cli.ini or the lineage's renewal config)"
# Commands that act on stored lineages, each with its own renewal options.
PER_LINEAGE_VERBS = ("rollback", "enhance")


class Installer(common.Installer, interfaces.RenewDeployer, interfaces.GenericUpdater):
    """Uploads certbot's certificates to Imperva Cloud WAF sites through Imperva's API."""

    description = DESCRIPTION

    @classmethod
    def add_parser_arguments(cls, add: Callable[..., None]) -> None:
        # Defaults are None: a value means the user set it, and it then wins over a lineage's
        # stored one (rollback, enhance), as certbot's own flags do.
        add("credentials", metavar="PATH", default=None,
            help="Imperva API credentials INI file (mode 0600) with " + CREDENTIALS_HELP + ".")
        add("site-id", metavar="ID[,ID...]", default=None,
            help="Imperva site id(s) to upload to. Default: the sites whose domain is one of "
                 "the certificate's names (found with the API).")
        add("api-url", metavar="URL", default=None,
            help=f"Imperva API base URL (default: {DEFAULT_API_URL}).")
        add("account-id", metavar="ID", default=None,
            help="Look for sites in this Imperva (sub-)account only (default: every site the "
                 "API key can see).")
        add("allow-staging", action="store_true", default=None,
            help="Also upload certificates from a staging or test CA (replaces a trusted "
                 "certificate with an untrusted one: for test sites only).")
        add("preflight", metavar="on|off", default=None,
            help="Just before certbot orders (webroot authenticator), fetch a probe file of each "
                 "name three times through its site's Imperva edge as the CA would, and stop with "
                 "the reason when the edge's answer shows the CA would fail; an edge this host "
                 "cannot reach is a warning, and the CA decides (default: on).")
        add("edge-wait", metavar="SECONDS", default=None,
            help="After an upload, wait up to this long (one wait for all sites) for each "
                 "site's Imperva edge to serve the new certificate, and warn if it does not "
                 f"(default: {EDGE_WAIT_HELP_DEFAULT}; "
                 "0 turns the edge check off, here and in the status view).")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Offline and cheap: certbot builds an installer for every lineage on every renew.
        super().__init__(*args, **kwargs)
        self._settings: Optional[Settings] = None
        self._deployment: Optional[Deployment] = None
        self._lineage_cores: Dict[str, Deployment] = {}  # rollback, enhance: one per lineage
        self._done: Set[str] = set()
        self._order_preflight: Optional[OrderPreflight] = None

    def more_info(self) -> str:
        return ("Uploads the certificate and key to the Imperva Cloud WAF site(s) that serve "
                "its names, with Imperva's API, and reports Imperva's validity flags.")

    # -- prepare: options and credentials -----------------------------------------------------

    def prepare(self) -> None:
        """Reads options and credentials; on --dry-run also checks them against Imperva; before
        an issuance with the webroot authenticator, runs the pre-flight.

        When this plugin is the chosen installer it raises ConfigurationError, never PluginError:
        during `renew` certbot takes a PluginError from prepare() as "installer missing" and
        silently drops it from the renewal config. When certbot merely prepares every plugin
        (`certbot plugins --prepare`, interactive choice) a MisconfigurationError lets it go on.
        """
        self._setup()
        self._preflight()

    def _setup(self) -> None:
        """prepare() without the pre-flight: what the deployment calls need (generic_updates
        runs on every renew, due or not, and must not probe)."""
        if self._deployment is not None:
            return
        from certbot_incapsula.core import Deployment
        from certbot_incapsula.outcomes import Refusal

        if self.conf("credentials") is None and self._verb() in PER_LINEAGE_VERBS:
            return  # each lineage's own renewal options are read when it is acted on
        try:
            self._settings = self._read_settings()
            self._deployment = Deployment(self._settings, self.config.config_dir)
            self._deployment.deployer  # noqa: B018 - reads the credentials file now
        except ValueError as exc:  # SettingsError, and the credentials file's errors
            self._deployment = None
            if getattr(self.config, "installer", None) == self.name:
                raise errors.ConfigurationError(str(exc)) from None
            raise errors.MisconfigurationError(str(exc)) from None
        if getattr(self.config, "dry_run", False):
            names = [str(d) for d in (getattr(self.config, "domains", None) or [])]
            lineage = getattr(self.config, "certname", None) or (names[0] if names else "")
            try:
                rep = self._deployment.check(lineage, names)
            except Refusal as exc:
                raise errors.ConfigurationError(str(exc)) from None
            if rep.failed:
                raise errors.ConfigurationError("Dry run: " + "; ".join(
                    f"{o.target.label()}: {o.error}" for o in rep.failed))
            display_util.notify("Imperva: the API key works" + (
                "; reachable: " + ", ".join(o.target.label() for o in rep.outcomes)
                if rep.outcomes else ""))

    def _preflight(self) -> None:
        """Arms the core's pre-flight (installer_preflight.py) when this plugin is the installer
        and certbot may ask the CA with the webroot authenticator."""
        if (self._order_preflight is not None or self._deployment is None
                or self._settings is None or not self._settings.preflight
                or getattr(self.config, "installer", None) != self.name):
            return
        from certbot_incapsula.installer_preflight import OrderPreflight

        preflight = OrderPreflight(self.config, self._deployment)
        if preflight.wanted():
            self._order_preflight = preflight
            preflight.arm(Installer)

    def _before_order(self, csr_pem: bytes) -> None:
        """certbot is about to ask the CA for the names in `csr_pem` (installer_preflight.py)."""
        if self._order_preflight is not None:
            self._order_preflight.before_order(csr_pem)

    def _verb(self) -> str:
        return str(getattr(self.config, "verb", "") or "")

    def _flags(self) -> Dict[str, Any]:
        from certbot_incapsula.settings import OPTIONS

        return {option: self.conf(option) for option in OPTIONS
                if hasattr(self.config, self.dest(option))}

    def _read_settings(self) -> Settings:
        from certbot_incapsula import settings

        parsed = settings.parse(self._flags().get, SOURCE, "--incapsula-credentials PATH")
        # Stored in the renewal config as absolute: a timer runs certbot from /.
        setattr(self.config, self.dest("credentials"), parsed.credentials)
        return parsed

    def _core(self) -> Deployment:
        self._setup()
        if self._deployment is None:
            raise errors.PluginError(
                "--incapsula-credentials PATH is required: an INI file (mode 0600) with "
                + CREDENTIALS_HELP + ".")
        return self._deployment

    def _for_lineage(self, name: str) -> Deployment:
        """The deployment of a stored lineage through its own renewal options; the flags given
        now win over them."""
        from certbot_incapsula.core import Deployment

        if name not in self._lineage_cores:  # certbot calls enhance() once per name
            self._lineage_cores[name] = Deployment(self._lineage_settings(name),
                                                   self.config.config_dir)
        return self._lineage_cores[name]

    def _lineage_settings(self, name: str) -> Settings:
        from certbot_incapsula import lineages

        stored = lineages.from_renewal_config(self.config.config_dir, name,
                                              require_installer=False)
        if stored is None or stored.settings is None:
            hook = lineages.from_hook_file(self.config.config_dir, name)
            stored = hook if hook.settings is not None else stored
        try:
            if stored is not None and stored.settings is not None:
                return stored.settings.with_overrides(self._flags(), SOURCE)
            if self.conf("credentials") is not None:
                return self._read_settings()
        except ValueError as exc:
            raise errors.PluginError(str(exc)) from None
        why = stored.error if stored is not None and stored.error else "no settings are stored"
        raise errors.PluginError(
            f"Imperva: cannot act on {name}: {why}. Pass --incapsula-credentials PATH, or attach "
            f"the plugin to it (certbot reconfigure --cert-name {name} -i incapsula ...).")

    # -- deployment --------------------------------------------------------------------------

    def _files(self, name: str, fullchain: str, key: str) -> LineageFiles:
        from certbot_incapsula.outcomes import LineageFiles

        return LineageFiles(name, fullchain, key, str(getattr(self.config, "server", "") or ""))

    def deploy_cert(self, domain: str, cert_path: str, key_path: str,
                    chain_path: Optional[str] = None, fullchain_path: Optional[str] = None) -> None:
        """certbot calls this once per name: the first call uploads to every site, once."""
        if not fullchain_path:
            raise errors.PluginError("The incapsula installer needs certbot's fullchain.pem.")
        fullchain = os.path.realpath(fullchain_path)
        if fullchain in self._done:
            return
        self._done.add(fullchain)
        name = os.path.basename(os.path.dirname(os.path.abspath(fullchain_path)))
        self._deploy(self._files(name, fullchain_path, key_path))

    def renew_deploy(self, lineage: interfaces.RenewableCert, *args: Any, **kwargs: Any) -> None:
        """certbot renew: uploads the renewed certificate (deploy_cert is not called on renew)."""
        self._deploy(self._files(lineage.lineagename, lineage.fullchain_path, lineage.key_path))

    def generic_updates(self, lineage: interfaces.RenewableCert, *args: Any, **kwargs: Any) -> None:
        """Every `certbot renew`, due or not: re-uploads where Imperva does not hold the
        lineage's current certificate (a failed or skipped upload heals here)."""
        from certbot_incapsula.outcomes import Refusal

        files = self._files(lineage.lineagename, lineage.fullchain_path, lineage.key_path)
        try:
            # certbot renew runs this for every lineage, one after another, twice a day: a
            # handshake per in-sync site would cost one round trip per lineage on every timer run.
            # Uploads are still checked at the edge; `certbot-incapsula sync` and `status` look
            # at the edge for in-sync sites too.
            rep = self._core().sync(files, look_at_edge=False)
        except Refusal as exc:
            raise errors.PluginError(str(exc)) from None
        self._show(rep)

    def _deploy(self, files: LineageFiles) -> None:
        from certbot_incapsula.outcomes import Refusal

        try:
            rep = self._core().deploy(files)
        except Refusal as exc:
            raise errors.PluginError(str(exc)) from None
        self._show(rep)

    def _show(self, rep: Report) -> None:
        """The report once on the console, warnings once in certbot's log and stderr, and one
        sentence as the error when a site failed."""
        for note in rep.notes:
            display_util.notify(note)
        lines = rep.lines()
        if lines:
            display_util.notify("\n".join(lines))
        for warning in rep.warnings:
            logger.warning("Imperva: %s", warning)
        error = rep.error()
        if error:
            raise errors.PluginError(error)

    # -- enhancements --------------------------------------------------------------------------

    def supported_enhancements(self) -> List[str]:
        return ["redirect"]

    def enhance(self, domain: str, enhancement: str,
                options: Optional[Any] = None) -> None:
        from certbot_incapsula.outcomes import Refusal

        if enhancement != "redirect":
            raise errors.PluginError(f"The incapsula installer does not support {enhancement}.")
        if getattr(self.config, "redirect", None) is None:
            # certbot asks for a redirect by default; on a live WAF site it must be asked for.
            logger.info("Imperva: HTTP-to-HTTPS redirect left as it is (pass --redirect).")
            return
        certname = getattr(self.config, "certname", None)
        if self._deployment is None and certname:
            core = self._for_lineage(str(certname))  # `certbot enhance --cert-name N`
        else:
            core = self._core()
        try:
            rep = core.redirect(domain)
        except Refusal as exc:
            raise errors.PluginError(str(exc)) from None
        self._show(rep)

    # -- certbot's file-based installer calls: nothing local to change -------------------------

    def get_all_names(self) -> Iterable[str]:
        """The names the account's sites serve (certbot offers them when no -d is given)."""
        from certbot_incapsula.outcomes import Refusal

        try:
            return self._core().served_names()
        except Refusal as exc:
            raise errors.PluginError(str(exc)) from None

    def save(self, title: Optional[str] = None, temporary: bool = False) -> None:
        """Nothing to save: uploads happen in deploy_cert and renew_deploy."""

    def config_test(self) -> None:
        """No local configuration exists to test."""

    def restart(self) -> None:
        """Imperva serves an upload at once: nothing to restart."""

    def recovery_routine(self) -> None:
        """Uploads are not local changes: a failed one leaves the site's certificate as it was."""

    def rollback_checkpoints(self, rollback: int = 1) -> None:
        """Uploads again, for each lineage, the certificate deployed `rollback` uploads ago,
        each through that lineage's own renewal options."""
        from certbot_incapsula import core
        from certbot_incapsula.outcomes import Refusal

        def settings_for(name: str) -> Settings:
            try:
                return self._lineage_settings(name)
            except errors.PluginError as exc:  # that lineage alone cannot be rolled back
                raise Refusal(str(exc)) from None

        try:
            reports = core.rollback(self.config.config_dir, rollback, settings_for)
        except Refusal as exc:
            raise errors.PluginError(str(exc)) from None
        errors_seen = []
        for rep in reports:
            try:
                self._show(rep)
            except errors.PluginError as exc:
                errors_seen.append(str(exc))
        if errors_seen:
            raise errors.PluginError(" ".join(errors_seen))


if not hasattr(interfaces, "Installer"):  # pragma: no cover - certbot < 1.18 knows only zope
    import zope.interface

    Installer = zope.interface.implementer(interfaces.IInstaller)(Installer)  # type: ignore
    zope.interface.directlyProvides(Installer, interfaces.IPluginFactory)  # type: ignore
