"""Certbot installer plugin for Imperva Cloud WAF (Incapsula).

Kept import-free: certbot imports every installed plugin on every command.
"""

DEFAULT_API_URL = "https://my.imperva.com"
CREDENTIALS_HELP = "incapsula_api_id = <API ID> and incapsula_api_key = <API key>"
