"""The core: deploys one certificate to its Imperva sites, keeps them in sync, checks, rolls back,
and tells what each site holds. Knows nothing of certbot or of argv.

Both doors (the certbot installer and the `certbot-incapsula` command) call `Deployment` with a
lineage's files and settings and turn the `Report` it returns into their caller's conventions.
A `Refusal` is raised before anything was sent to Imperva; everything after that is a `Report`.

Parts: lineage.py (what every entry point shares), upload.py (per site: upload, read back,
restore, the per-site self-check), sync.py (a lineage's self-check), status.py (dry run and
status), edge_requests.py (the pre-flight and the edge checks), deployment.py (`Deployment`),
rollback.py. The shared types are in outcomes.py, what a site holds in held.py.
"""
from certbot_incapsula.core.deployment import Deployment
from certbot_incapsula.core.rollback import rollback
from certbot_incapsula.core.upload import Deployer

__all__ = ["Deployer", "Deployment", "rollback"]
