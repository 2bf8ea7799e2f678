"""Door 1's pre-flight: when certbot is about to ask the CA (webroot authenticator, this plugin
the installer), the core's pre-flight of the challenge path, with the names certbot orders. Only
proof stops certbot (a ConfigurationError before the order); an edge this host cannot reach is
one warning per site, and the CA decides.

The installer imports this module only when it arms a pre-flight (certbot imports the installer
on every command, and every import there costs every command).
"""
from __future__ import annotations

import functools
import logging
from typing import TYPE_CHECKING, Any, Dict, List, Type

from certbot import errors
from certbot.display import util as display_util

if TYPE_CHECKING:
    from certbot_incapsula.core import Deployment

logger = logging.getLogger(__name__)

# Commands that may ask the CA for a certificate: prepare() runs the pre-flight for them (certbot
# calls prepare() on `renew` only for a lineage that is due).
ISSUING_VERBS = ("run", "certonly", "renew")


class OrderPreflight:
    """One certbot run's pre-flight: armed in the installer's prepare(), run just before certbot
    orders (or at once, where certbot offers no such moment), once."""

    def __init__(self, config: Any, deployment: Deployment) -> None:
        self.config = config
        self.deployment = deployment
        self.done = False

    def wanted(self) -> bool:
        """Whether certbot may ask the CA, with the webroot authenticator."""
        return self._verb() in ISSUING_VERBS and self._authenticator() == "webroot"

    def arm(self, installer_class: Type[Any]) -> None:
        """Runs when certbot is about to order, with the names it orders (a `run` that keeps a
        certificate that is not due and only installs it asks nothing). Where certbot offers no
        such moment, it runs now, with the names given."""
        if not _hook_before_order(installer_class):
            self.run([str(d) for d in (getattr(self.config, "domains", None) or [])])

    def before_order(self, csr_pem: bytes) -> None:
        """certbot is about to ask the CA for the names in `csr_pem`."""
        if self.done:
            return
        names = _csr_names(csr_pem) or [str(d) for d in (getattr(self.config, "domains", None) or [])]
        self.run(names)

    def run(self, names: List[str]) -> None:
        """Each failing name stops the run before the CA is contacted (ConfigurationError: during
        renew that lineage fails, and the renewal config keeps the installer). An edge this host
        cannot reach is no failure: one warning per site, and certbot goes on."""
        if not names:
            return
        self.done = True
        result = self.deployment.preflight(names, self._webroots(names))
        if result.unreadable:
            # The reason once, in the log: the upload meets it again and says it (issue 13).
            logger.debug("Imperva pre-flight: %s", result.unreadable)
            logger.warning("Imperva pre-flight: not checked, as the account's sites could not be "
                           "read (the reason is in certbot's log); the CA will decide")
            return
        for note in result.notes:
            display_util.notify(f"Imperva pre-flight: {note}")
        for line in result.unchecked:
            logger.warning("Imperva pre-flight: %s", line)
        if result.failures:
            raise errors.ConfigurationError(
                "Imperva pre-flight: the CA would not get the challenge file through Imperva's "
                "edge, so certbot did not ask it (no order, no failed validation):\n"
                + "\n".join("  " + line for line in result.failures)
                + "\nFix this and run again; --incapsula-preflight off skips the check.")
        if result.passed:
            display_util.notify(
                "Imperva pre-flight: the challenge path reaches the webroot through Imperva's "
                "edge for " + ", ".join(line.split(":", 1)[0] for line in result.passed))

    def _authenticator(self) -> str:
        """The authenticator certbot will use, as certbot's own plugin selection reads it."""
        if getattr(self.config, "webroot", False):
            return "webroot"
        return str(getattr(self.config, "authenticator", None)
                   or getattr(self.config, "configurator", None) or "")

    def _webroots(self, names: List[str]) -> Dict[str, str]:
        """Where certbot's webroot plugin will write each name's challenge: its -w, else the
        last -w given (as that plugin does)."""
        mapping = getattr(self.config, "webroot_map", None) or {}
        paths = getattr(self.config, "webroot_path", None) or []
        fallback = str(paths[-1]) if paths else ""
        found = {name: str(mapping.get(name) or fallback) for name in names}
        return {name: path for name, path in found.items() if path}

    def _verb(self) -> str:
        return str(getattr(self.config, "verb", "") or "")


def _csr_names(csr_pem: bytes) -> List[str]:
    """The names a CSR asks for (its DNS SANs, else its CN), as certbot's order carries them;
    [] when it cannot be read (never an error: the caller falls back to the names given)."""
    if isinstance(csr_pem, str):
        csr_pem = csr_pem.encode()
    try:
        from cryptography import x509
        from cryptography.x509.oid import NameOID

        csr = (x509.load_pem_x509_csr(csr_pem) if csr_pem.lstrip().startswith(b"-----")
               else x509.load_der_x509_csr(csr_pem))
        try:
            names = csr.extensions.get_extension_for_class(
                x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
        except x509.ExtensionNotFound:
            names = [str(a.value) for a in csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
        return [str(name) for name in names]
    except Exception as exc:  # certbot 1.x's pyOpenSSL writes CSR version 2, which newer
        logger.debug("CSR read with pyOpenSSL: %s", exc)  # cryptography refuses
    try:
        from OpenSSL import crypto

        kind = crypto.FILETYPE_PEM if csr_pem.lstrip().startswith(b"-----") else crypto.FILETYPE_ASN1
        req = crypto.load_certificate_request(kind, csr_pem)  # type: ignore[attr-defined]
        sans = [part.strip()[4:] for ext in req.get_extensions()
                if ext.get_short_name() == b"subjectAltName"
                for part in str(ext).split(",") if part.strip().startswith("DNS:")]
        common = req.get_subject().CN
        return sans or ([common] if common else [])
    except Exception:  # no pyOpenSSL, or one without these calls
        return []


def _hook_before_order(installer_class: Type[Any]) -> bool:
    """Makes certbot call Installer._before_order just before it asks the CA for an order:
    certbot's Client._get_order_and_authorizations (certbot 1.12 to 5.8) is where every order
    starts, for `run`, `certonly` and `renew`, dry run or not; wrapped once per process, for
    the clients whose installer is this plugin. False when this certbot has no such place."""
    try:
        from certbot._internal import client as certbot_client
    except ImportError:
        return False
    cls = getattr(certbot_client, "Client", None)
    original = getattr(cls, "_get_order_and_authorizations", None)
    if cls is None or original is None:
        return False
    if getattr(original, "incapsula_preflight", False):
        return True

    @functools.wraps(original)
    def before_order(client: Any, csr_pem: bytes, *args: Any, **kwargs: Any) -> Any:
        installer = getattr(client, "installer", None)
        if isinstance(installer, installer_class):
            try:
                installer._before_order(csr_pem)
            except errors.Error:
                raise  # the pre-flight's proof: certbot stops before the order
            except Exception as exc:  # inside certbot's issuance: a surprise must not stop it
                logger.debug("Imperva pre-flight failed", exc_info=True)
                logger.warning("Imperva pre-flight: not checked, as it failed unexpectedly (%s); "
                               "the CA will decide", type(exc).__name__)
        return original(client, csr_pem, *args, **kwargs)

    before_order.incapsula_preflight = True  # type: ignore[attr-defined]
    cls._get_order_and_authorizations = before_order
    return True
