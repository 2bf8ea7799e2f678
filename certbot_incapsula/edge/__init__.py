"""What the world sees through a site's Imperva edge: the challenge path before the CA is asked,
and the certificate the edge serves after an upload. Knows nothing of certbot or its options; the
standard library and `cryptography` only.

- where.py: `edge_addresses(status, name)`, where the site's DNS must point (the `dns` entries of
  a sites/status answer or a sites/list item: A, the addresses; CNAME, the target resolved), and
  `EdgeError`.
- fetch.py: one GET as the CA makes it, within one deadline (DNS, connection, TLS, body).
- probe.py: `probe_challenge_path(name, address, webroot)` writes a random file under the
  webroot's `.well-known/acme-challenge/`, fetches it through the edge as the CA would (port 80,
  `Host: NAME`, up to 10 redirects, a new host looked up in DNS), several times at once, compares
  the body, always deletes the file, and says what answered and what to fix.
- served.py: `served_certificate(name, address, key_type)`, the leaf the edge serves to an SNI
  client that offers only ECDSA ("ECC") or only RSA; `wait_for_edge(...)` retries it until the
  expected leaf is served or the wait (or a deadline shared by all sites) is over.
"""
from certbot_incapsula.edge.fetch import REFUSED, UNREACHED, USER_AGENT
from certbot_incapsula.edge.probe import (
    CACHED,
    CHALLENGE_PATH,
    IMPERVA_BLOCK,
    IMPERVA_CHALLENGE,
    NOT_CHECKED,
    OK,
    ORIGIN_404,
    OTHER,
    SEVERAL_ORIGINS,
    TIMEOUT,
    WEBROOT,
    ProbeResult,
    challenge_directory,
    probe_challenge_path,
    several_origins_text,
    summed,
)
from certbot_incapsula.edge.served import (
    OFF,
    SERVES,
    STALE,
    UNREACHABLE,
    EdgeResult,
    describe,
    matches,
    served_certificate,
    wait_for_edge,
)
from certbot_incapsula.edge.where import KEY_TYPES, EdgeError, EdgeLookupError, edge_addresses

__all__ = [
    "CACHED", "CHALLENGE_PATH", "IMPERVA_BLOCK", "IMPERVA_CHALLENGE", "KEY_TYPES", "NOT_CHECKED",
    "OFF", "OK", "ORIGIN_404", "OTHER", "REFUSED", "SERVES", "SEVERAL_ORIGINS", "STALE", "TIMEOUT",
    "UNREACHABLE", "UNREACHED", "USER_AGENT", "WEBROOT", "EdgeError", "EdgeLookupError",
    "EdgeResult", "ProbeResult", "challenge_directory", "describe", "edge_addresses",
    "matches", "probe_challenge_path", "served_certificate",
    "several_origins_text", "summed", "wait_for_edge",
]
