"""End to end, issue 14: nothing lost, nothing misread. Real certbot, pebble and the Imperva
test double: a worse certificate never replaces a good one, a flagged upload is undone, stored
options are read strictly, the status view and the state file survive damage.

Each test sets up one lineage and goes through its cases in turn (a certbot run costs ~2.5 s),
putting back what a case changed before the next one.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
import shutil
import subprocess
from typing import Dict, List

from certmaker import make_chain, make_self_signed, write_lineage
from conftest import write_credentials
from cryptography import x509

WWW = "www.example.test"
NAMES = ["-d", WWW, "-d", "example.test"]
RENEW = ["renew", "--no-random-sleep-on-renew"]


def obtain(certbot_runner, pebble, plugin_args, *names: str) -> None:
    certbot_runner.run("run", "-a", "webroot", "-w", pebble.webroot, *plugin_args,
                       *(names or NAMES))


def live_serial(certbot_runner, name: str = WWW) -> str:
    pem = (certbot_runner.live(name) / "cert.pem").read_bytes()
    return format(x509.load_pem_x509_certificate(pem).serial_number, "X")


def held(imperva, site_id: int = 101) -> str:
    return (imperva.held(site_id) or {}).get("serialNumber", "nothing")


def plugin_lines(conf: str) -> List[str]:
    """The renewal config's lines about the plugin (certbot adds ARI dates on its own)."""
    return [line for line in conf.splitlines() if line.startswith(("installer", "incapsula_"))]


def snapshot(certbot_runner) -> Dict[str, str]:
    """certbot's own files: the lineage (live links, archive) and the renewal configs' plugin
    lines."""
    found = {}
    for part in ("live", "archive", "renewal"):
        for path in sorted((certbot_runner.config_dir / part).rglob("*")):
            if path.is_file():
                data = path.read_bytes()
                if part == "renewal":
                    data = "\n".join(plugin_lines(data.decode())).encode()
                found[str(path.relative_to(certbot_runner.config_dir))] = \
                    hashlib.sha256(data).hexdigest()
    return found


def clean_failure(result, *phrases: str, code: int = 1) -> str:
    output = result.stdout + result.stderr
    assert result.returncode == code, output
    assert "Traceback" not in output and "unexpected error" not in output.lower(), output
    for phrase in phrases:
        assert phrase in output, output
    return output


def clean_success(result, *phrases: str) -> str:
    return clean_failure(result, *phrases, code=0)


def command(certbot_runner, verb: str, *args: str,
            alias: bool = False) -> subprocess.CompletedProcess:
    """`certbot-incapsula VERB` on this config dir, or its certbot-incapsula-status alias."""
    if alias:
        assert verb == "status"
        return certbot_runner.status(*args)
    return certbot_runner.incapsula(verb, "--config-dir", str(certbot_runner.config_dir), *args)


# ----- check before replacing: nothing worse than what the site holds is uploaded ----------------

def test_a_worse_certificate_never_replaces_a_good_one(certbot_runner, pebble, imperva,
                                                       plugin_args, tmp_path):
    obtain(certbot_runner, pebble, plugin_args)
    good = held(imperva)
    assert good == live_serial(certbot_runner)
    live = certbot_runner.live(WWW)
    before = snapshot(certbot_runner)

    def files(name: str, fullchain: bytes, key: bytes) -> Dict[str, str]:
        directory = tmp_path / name
        directory.mkdir()
        (directory / "fullchain.pem").write_bytes(fullchain)
        (directory / "privkey.pem").write_bytes(key)
        return {"cert": str(directory / "fullchain.pem"), "fullchain": str(directory / "fullchain.pem"),
                "privkey": str(directory / "privkey.pem")}

    names = [WWW, "example.test"]
    ahead = make_chain(names, start=dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=2))
    soon = make_chain(names, start=dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=20),
                      days=1)
    cases = [
        # The easy slip: certbot's leaf-only cert.pem given as the fullchain.
        ({"cert": str(live / "cert.pem"), "fullchain": str(live / "cert.pem"),
          "privkey": str(live / "privkey.pem")},
         [f"{live / 'cert.pem'} holds only the leaf certificate",
          f"give certbot's fullchain.pem (--fullchain-path {live / 'fullchain.pem'}"]),
        (write_lineage(tmp_path / "ahead", ahead), ["is not valid before", "validityError"]),
        (files("self-signed", *make_self_signed(names)), ["is self-signed", "chainError"]),
        (write_lineage(tmp_path / "soon", soon), ["in less than a day: renew it first"]),
    ]
    for paths, phrases in cases:
        result = certbot_runner.run("install", *plugin_args, "--cert-path", paths["cert"],
                                    "--key-path", paths["privkey"], "--fullchain-path",
                                    paths["fullchain"], "-d", WWW, check=False)
        clean_failure(result, *phrases, "Nothing was uploaded.")
        assert len(imperva.uploads()) == 1, phrases  # the first deployment's only
        assert held(imperva) == good
    assert snapshot(certbot_runner) == before


# ----- when Imperva flags an upload anyway: the previous certificate goes back -------------------

def test_a_revoked_renewal_is_undone_and_not_retried(certbot_runner, pebble, imperva,
                                                     plugin_args):
    obtain(certbot_runner, pebble, plugin_args)
    first = held(imperva)
    # Imperva finds every later certificate revoked (say, a CA incident).
    imperva.revoked = lambda leaf: format(leaf.serial_number, "X") != first
    result = certbot_runner.run("renew", "--force-renewal", "--no-random-sleep-on-renew",
                                check=False)
    second = live_serial(certbot_runner)
    assert second != first
    clean_failure(result, "ERROR revocationError: the certificate is revoked",
                  f"Restored the previous certificate (serial {first}",
                  "Imperva flagged the certificate uploaded (revocationError); restored the "
                  f"previous certificate (serial {first}")
    assert held(imperva) == first  # the site serves the good one again
    hashes = [u.form["input_hash"] for u in imperva.uploads()]
    assert len(hashes) == 3 and hashes[2] == hashes[0] != hashes[1]  # first, flagged, first again
    conf = certbot_runner.renewal_conf(WWW)
    assert "installer = incapsula" in conf

    # The next renew (nothing due) does not put the flagged certificate up again, and says why.
    uploads = len(imperva.uploads())
    again = certbot_runner.run(*RENEW, check=False)
    clean_failure(again, "Imperva flagged this certificate (revocationError) when it was "
                         "uploaded", "self-healing does not upload it again",
                  f"certbot renew --cert-name {WWW} --force-renewal")
    assert len(imperva.uploads()) == uploads and held(imperva) == first
    assert plugin_lines(certbot_runner.renewal_conf(WWW)) == plugin_lines(conf)

    status = command(certbot_runner, "status")
    clean_failure(status, f"{WWW}  site 101 (www.example.test)  FLAGGED  Imperva flagged this "
                          "certificate (revocationError) at its upload")

    # A good certificate ends it: the next forced renewal is uploaded and serves.
    imperva.revoked = None
    certbot_runner.run("renew", "--force-renewal", "--no-random-sleep-on-renew")
    assert held(imperva) == live_serial(certbot_runner) not in (first, second)


# ----- stored options read strictly ---------------------------------------------------------------

def test_stored_options_are_read_strictly(certbot_runner, pebble, imperva, plugin_args):
    obtain(certbot_runner, pebble, plugin_args)
    conf_path = certbot_runner.config_dir / "renewal" / f"{WWW}.conf"
    original = conf_path.read_text()
    assert re.search(r"^incapsula_allow_staging = True$", original, re.M), original
    good = held(imperva)
    # A renewal config edited by hand: certbot hands "false", "no" and "0" back as strings, and
    # "False" as False. Each keeps the staging guard on: pebble's certificate is refused.
    for value in ("false", "no", "0", "False"):
        conf_path.write_text(original.replace("incapsula_allow_staging = True",
                                              f"incapsula_allow_staging = {value}"))
        result = certbot_runner.run(*RENEW, check=False)
        clean_failure(result, "comes from a staging or test CA")
        assert held(imperva) == good and len(imperva.uploads()) == 1, value
        assert plugin_lines(conf_path.read_text()) == \
            plugin_lines(original.replace("= True", f"= {value}")), value
    # Anything else fails that lineage with the key and the file named, and keeps the plugin.
    conf_path.write_text(original.replace("incapsula_allow_staging = True",
                                          "incapsula_allow_staging = maybe"))
    result = certbot_runner.run(*RENEW, check=False)
    # certbot names the lineage; the plugin names the key (certbot does not say which file a
    # value came from).
    clean_failure(result, f"Failed to renew certificate {WWW} with error: ",
                  "incapsula_allow_staging in cli.ini or the lineage's renewal config) is "
                  "'maybe', which is neither true nor false: write true or false")
    assert "installer = incapsula" in conf_path.read_text()
    assert "incapsula_allow_staging = maybe" in conf_path.read_text()
    assert len(imperva.uploads()) == 1

    # An API URL with a path names the option and the form, before anything is sent.
    conf_path.write_text(original)
    imperva.clear()
    certbot_runner.env["HTTPS_PROXY"] = "http://127.0.0.1:9"  # nothing may leave the machine
    result = certbot_runner.run("install", "--cert-name", WWW, *plugin_args[:-3],
                                "--incapsula-api-url", "https://my.imperva.com/api/prov/v1",
                                check=False)
    clean_failure(result, "--incapsula-api-url", "has a path (/api/prov/v1)",
                  "give only the scheme and host, e.g. https://my.imperva.com")
    assert imperva.requests == []
    assert plugin_lines(conf_path.read_text()) == plugin_lines(original)


# ----- the status view never crashes ---------------------------------------------------------------

def test_the_status_view_has_a_row_per_lineage_whatever_happens(certbot_runner, pebble, imperva,
                                                                plugin_args, credentials, tmp_path):
    obtain(certbot_runner, pebble, plugin_args)
    # A second lineage, deployed by the command's hook door with its own credentials file.
    shop = write_lineage(tmp_path / "shop", make_chain(["shop.example.test"]))
    shop_credentials = write_credentials(tmp_path / "shop.ini", imperva.api_id, imperva._api_key)
    clean_success(command(certbot_runner, "deploy", "--fullchain", shop["fullchain"], "--key",
                          shop["privkey"], "--cert-name", "shop.example.test", "--credentials",
                          str(shop_credentials), "--api-url", imperva.url, "--edge-wait", "0"))
    conf = certbot_runner.config_dir / "renewal" / f"{WWW}.conf"
    chain = certbot_runner.config_dir / "archive" / WWW / "fullchain1.pem"
    saved = {path: path.read_bytes() for path in (conf, chain, credentials)}
    shop_in_sync = "shop.example.test  site 102 (shop.example.test)  IN SYNC"

    cases: List = [
        (credentials, b"incapsula_api_id = 12345\n",
         f'credentials configuration file {credentials}: * Property "incapsula_api_key" not found'),
        (credentials, b"", f"credentials configuration file {credentials}: * Property "
                           '"incapsula_api_id" not found'),
        (conf, saved[conf].replace(b"[renewalparams]", b"renewalparams = x\n[old]"),
         f"{conf} has no [renewalparams] section"),
        (conf, b"\x00\xff\xfe binary \x80 garbage\n" * 20,
         f"{conf} cannot be read as a configuration file"),
        (chain, b"garbage\n", f"{chain} holds no PEM certificate"),
    ]
    for path, content, reason in cases:
        path.write_bytes(content)
        for alias in (False, True):
            result = command(certbot_runner, "status", alias=alias)
            output = clean_failure(result, shop_in_sync, code=2)
            (row,) = [line for line in result.stdout.splitlines() if line.startswith(WWW)]
            assert row.startswith(f"{WWW}  -  ERROR  ") and reason in row, output
        path.write_bytes(saved[path])
    chain.write_bytes(b"")
    rows = json.loads(command(certbot_runner, "status", "--json").stdout)
    assert [(r["lineage"], r["state"], r["detail"]) for r in rows] == [
        ("shop.example.test", "in sync", rows[0]["detail"]),
        (WWW, "error", f"The certificate file {chain} is empty.")]
    chain.write_bytes(saved[chain])
    assert command(certbot_runner, "status").returncode == 0
    assert len(imperva.uploads()) == 2


# ----- the state file is a cache, not a trust anchor ------------------------------------------------

def test_a_damaged_or_unwritable_state_file_costs_a_rediscovery_never_a_crash(
        certbot_runner, pebble, imperva, plugin_args):
    obtain(certbot_runner, pebble, plugin_args)
    directory = certbot_runner.config_dir / "incapsula"
    state = directory / "state.json"
    good_state = json.loads(state.read_text())
    before = snapshot(certbot_runner)
    serial = live_serial(certbot_runner)

    def with_target(**changes) -> str:
        document = json.loads(json.dumps(good_state))
        document["lineages"][WWW]["sites"]["targets"][0].update(changes)
        return json.dumps(document)

    # Wrong shapes: renew (self-check), install (upload) and status each work, and warn.
    install = ["install", "--cert-name", WWW, *plugin_args]
    shapes = [
        (with_target(site_id="abc"), "holds 1 damaged part(s)", [RENEW, install]),
        (with_target(names=None), "holds 1 damaged part(s)", [install]),
        ('{"lineages": ' * 100000 + "{}" + "}" * 100000, "is damaged (nested too deep)", [RENEW]),
        (json.dumps(good_state)[:-40], "is damaged (not JSON", [install]),
    ]
    for text, warning, verbs in shapes:
        for verb in verbs:
            state.write_text(text)
            imperva.clear()
            result = certbot_runner.run(*verb, check=False)
            clean_success(result, warning)
            assert imperva.calls("sites/list"), "the sites are found again"
            assert imperva.uploads(102) == [] and held(imperva) == serial
        state.write_text(text)
        clean_success(command(certbot_runner, "status"), "IN SYNC", warning)

    # A record that sends the certificate to the wrong site: checked, dropped, found again.
    state.write_text(with_target(site_id=102, domain="shop.example.test"))
    imperva.clear()
    result = certbot_runner.run("install", "--cert-name", WWW, *plugin_args, check=False)
    clean_success(result, "no longer serve its names: the record is dropped")
    assert imperva.uploads(102) == [] and len(imperva.uploads(101)) == 1
    assert json.loads(state.read_text())["lineages"][WWW]["sites"]["targets"][0]["site_id"] == 101

    # Unwritable: the upload happens, and a warning says what was not recorded.
    for layout in ("state-is-a-directory", "incapsula-is-a-file"):
        if directory.is_dir():
            shutil.rmtree(directory)
        if layout == "state-is-a-directory":
            state.mkdir(parents=True)
            why = f"{state} is a directory, not a file"
        else:
            directory.write_text("not a directory")
            why = f"{directory} is a file, not a directory"
        imperva.clear()
        result = certbot_runner.run("install", "--cert-name", WWW, *plugin_args, check=False)
        clean_success(result, "Imperva site 101 (www.example.test): uploaded",
                      f"The upload of serial {serial} to site 101 is not recorded: {state} cannot "
                      f"be written ({why})")
        assert len(imperva.uploads(101)) == 1 and held(imperva) == serial
        # The command's door too; it keeps the lineage's settings (for sync) beside the state
        # file, and uploads nothing when it cannot.
        result = command(certbot_runner, "deploy", "--cert-name", WWW, "--credentials",
                         plugin_args[3], "--api-url", imperva.url, "--allow-staging",
                         "--edge-wait", "0")  # no edge here
        if layout == "state-is-a-directory":
            clean_success(result, "Imperva site 101 (www.example.test): uploaded",
                          f"is not recorded: {state} cannot be written ({why})")
            assert len(imperva.uploads(101)) == 2
        else:
            clean_failure(result, f"cannot write {directory}/lineages/{WWW}.conf",
                          "Nothing was uploaded.")
            assert len(imperva.uploads(101)) == 1
        assert held(imperva) == serial
    assert snapshot(certbot_runner) == before
