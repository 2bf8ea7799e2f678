"""Back to an earlier certificate: for each lineage on record, the certificate deployed N
deployments ago (rollback.py plans it from the records), uploaded again to the sites that held
it, each through that lineage's own settings. Knows nothing of certbot or of argv.
"""
from __future__ import annotations

from typing import Callable, List

from certbot_incapsula import sites
from certbot_incapsula.context import PROCESS, Context
from certbot_incapsula.core.deployment import Deployment
from certbot_incapsula.core.lineage import _sites_of
from certbot_incapsula.outcomes import LineageFiles, Refusal, Report
from certbot_incapsula.settings import Settings


def rollback(config_dir: str, back: int, settings_for: Callable[[str], Settings], *,
             context: Context = PROCESS) -> List[Report]:
    """Uploads again, for each lineage on record, the certificate deployed `back` deployments
    ago, to the sites that held it, each through that lineage's own settings (its account)."""
    from certbot_incapsula.rollback import plan

    try:
        steps = plan(context.records(config_dir), back)
    except ValueError as exc:
        raise Refusal(str(exc)) from None
    if not steps:
        raise Refusal("Imperva: no earlier certificate is recorded to roll back to.")
    reports = []
    for step in steps:
        rep = Report(f"Imperva rollback of {step.lineage}")
        reports.append(rep)
        try:  # one lineage that cannot be acted on does not stop the others
            deployment = Deployment(settings_for(step.lineage), config_dir, context=context)
            files = LineageFiles(step.lineage, step.fullchain, step.privkey)
            cert = deployment.load(files)
            deployer = deployment.deployer  # reads the lineage's credentials file
        except Refusal as exc:
            rep.refusal = str(exc)
            continue
        except ValueError as exc:  # its settings or credentials file
            rep.refusal = f"Imperva: cannot roll back {step.lineage}: {exc}"
            continue
        deployment.records.pin(step.lineage, cert.input_hash)
        targets = [sites.SiteTarget(site_id, domain) for site_id, domain in step.sites]
        rep.outcomes = deployer.upload(
            cert, targets, step.lineage, step.version,
            action=f"rolled back to archive version {step.version}")
        deployment._save_records(rep, f"The rollback of {step.lineage} to serial "
                                      f"{cert.serial_hex} on {_sites_of(rep.outcomes)}")
    return reports
