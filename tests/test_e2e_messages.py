"""End to end, issue 13: one problem, one message; the status view words a rollback as such."""
from __future__ import annotations

from conftest import write_credentials

TWO_SITES = ["-d", "www.example.test", "-d", "shop.example.test"]
WRONG_KEY = "Imperva did not accept the API id and key"


def test_a_wrong_key_is_said_once_per_site_and_once_as_the_error(certbot_runner, pebble, imperva,
                                                                plugin_args, credentials):
    certbot_runner.run("run", "-a", "webroot", "-w", pebble.webroot, *plugin_args, *TWO_SITES)
    write_credentials(credentials, imperva.api_id, "not-the-key")
    result = certbot_runner.run("renew", "--force-renewal", "--no-random-sleep-on-renew",
                                check=False)
    output = result.stdout + result.stderr
    assert result.returncode == 1
    # Each site's line in the report, then one sentence naming both sites.
    assert output.count(WRONG_KEY) == 3, output
    assert "sites 101, 102: " + WRONG_KEY in output
    assert "Traceback" not in output


def test_status_after_a_rollback_says_rolled_back(certbot_runner, pebble, imperva, plugin_args):
    certbot_runner.run("run", "-a", "webroot", "-w", pebble.webroot, *plugin_args,
                       "-d", "www.example.test")
    certbot_runner.run("renew", "--force-renewal", "--no-random-sleep-on-renew")
    # No other flag: the lineage's own renewal options say which account and key.
    certbot_runner.run("rollback", "--checkpoints", "1", "-i", "incapsula")
    result = certbot_runner.status()
    assert "site 101 (www.example.test)  ROLLED BACK  held at archive version 1 by a rollback" \
        in result.stdout, result.stdout + result.stderr
    assert result.returncode == 1
