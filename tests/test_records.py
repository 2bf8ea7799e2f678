"""The state file (records.py) and the rollback plan made from it (rollback.py)."""
from __future__ import annotations

import json
import os
import random
import re
import stat
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import pytest

from certbot_incapsula import records as records_module
from certbot_incapsula import rollback
from certbot_incapsula.records import HISTORY_LIMIT, Records
from certbot_incapsula.records_format import MAX_DEPTH

NAMES = ["www.example.test", "example.test"]
TARGETS = [{"site_id": 101, "domain": "www.example.test", "names": NAMES}]


def state(config_dir: Path) -> Path:
    return config_dir / "incapsula" / "state.json"


def deployment(cert: str, site_id: int = 101, outcome: str = "ok", version: Optional[int] = None,
               domain: Optional[str] = "www.example.test", **extra: Any) -> Dict[str, Any]:
    entry = {
        "site_id": site_id, "domain": domain, "serial": cert.upper(), "input_hash": f"sha256:{cert}",
        "auth_type": "ECC", "archive_version": version,
        "fullchain": f"/etc/letsencrypt/archive/a/fullchain{version}.pem",
        "privkey": f"/etc/letsencrypt/archive/a/privkey{version}.pem",
        "outcome": outcome, "action": "uploaded", "error": None,
    }
    entry.update(extra)
    return entry


def deploy(records: Records, cert: str, version: int, sites: List[int], lineage: str = "a",
           outcome: str = "ok") -> None:
    for site_id in sites:
        records.add_deployment(lineage, deployment(cert, site_id, outcome, version))


# ----- the file --------------------------------------------------------------------------------

def test_save_writes_json_at_mode_0600(tmp_path):
    records = Records(str(tmp_path))
    records.remember_sites("a", NAMES, TARGETS)
    records.add_deployment("a", deployment("c1", version=1))
    records.save()
    path = state(tmp_path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    data = json.loads(path.read_text())
    assert data["version"] == 1 and list(data["lineages"]) == ["a"]
    assert data["lineages"]["a"]["history"][0]["input_hash"] == "sha256:c1"
    # No temporary file left behind; the lock file stays (deleting it would race its waiters).
    assert sorted(os.listdir(path.parent)) == ["state.json", "state.json.lock"]


def test_save_stays_0600_even_with_a_lax_umask_and_an_old_lax_file(tmp_path):
    path = state(tmp_path)
    path.parent.mkdir(parents=True)
    path.write_text("{}")
    os.chmod(path, 0o644)
    old = os.umask(0)
    try:
        records = Records(str(tmp_path))
        records.add_deployment("a", deployment("c1"))
        records.save()
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_save_replaces_atomically(tmp_path, monkeypatch):
    first = Records(str(tmp_path))
    first.add_deployment("a", deployment("c1"))
    first.save()
    before = state(tmp_path).read_bytes()

    second = Records(str(tmp_path))
    second.add_deployment("a", deployment("c2"))

    def broken(*args: Any, **kwargs: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(records_module.json, "dump", broken)
    with pytest.raises(OSError):
        second.save()
    assert state(tmp_path).read_bytes() == before  # the old file is whole
    assert sorted(os.listdir(state(tmp_path).parent)) == ["state.json", "state.json.lock"]


def test_reading_back_what_was_saved(tmp_path):
    records = Records(str(tmp_path))
    records.remember_sites("a", NAMES, TARGETS)
    deploy(records, "c1", 1, [101, 102])
    records.save()
    again = Records(str(tmp_path))
    assert again.lineage_names() == ["a"]
    assert [h["site_id"] for h in again.history("a")] == [101, 102]
    assert again.cached_sites("a", list(reversed(NAMES))) == TARGETS


def test_nothing_to_save_writes_nothing(tmp_path):
    Records(str(tmp_path)).save()
    assert not state(tmp_path).exists()


@pytest.mark.parametrize("content", [
    "{not json", "", "[1, 2]", "null", '"text"', '{"lineages": [1]}', '{"lineages": "x"}',
    b"\xff\xfe\x00garbage",
])
def test_a_damaged_file_is_treated_as_empty(tmp_path, content):
    path = state(tmp_path)
    path.parent.mkdir(parents=True)
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    records = Records(str(tmp_path))
    assert records.lineage_names() == []
    assert records.cached_sites("a", NAMES) is None
    assert records.history("a") == []
    records.add_deployment("a", deployment("c1"))
    records.save()
    assert [h["input_hash"] for h in Records(str(tmp_path)).history("a")] == ["sha256:c1"]


def test_damaged_entries_inside_a_good_file(tmp_path):
    path = state(tmp_path)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"version": 1, "lineages": {
        "a": "not a dict",
        "b": {"sites": {"names": "www.example.test", "targets": 5}, "history": {"x": 1}},
        "c": {"sites": {"names": NAMES, "targets": [7, {"site_id": 3}]}, "history": [1, deployment("c1")]},
    }}))
    records = Records(str(tmp_path))
    assert records.history("a") == [] and records.history("b") == []
    assert records.cached_sites("a", NAMES) is None
    assert records.cached_sites("b", ["www.example.test"]) is None
    assert records.cached_sites("c", NAMES) is None  # one bad target spoils the cache
    assert [h["input_hash"] for h in records.history("c")] == ["sha256:c1"]
    with pytest.raises(ValueError):
        rollback.plan(records, 1)


def test_no_secret_fields_are_written(tmp_path):
    records = Records(str(tmp_path))
    deploy(records, "c1", 1, [101])
    records.save()
    text = state(tmp_path).read_text()
    assert "PRIVATE KEY" not in text and "api_key" not in text.lower()


# ----- cached sites and history ---------------------------------------------------------------

def test_cached_sites_only_while_the_names_are_unchanged(tmp_path):
    records = Records(str(tmp_path))
    assert records.cached_sites("a", NAMES) is None
    records.remember_sites("a", NAMES, TARGETS)
    assert records.cached_sites("a", ["example.test", "www.example.test"]) == TARGETS
    assert records.cached_sites("a", ["www.example.test"]) is None
    assert records.cached_sites("a", [*NAMES, "shop.example.test"]) is None
    assert records.cached_sites("other", NAMES) is None


def test_add_deployment_stamps_the_time(tmp_path):
    records = Records(str(tmp_path))
    records.add_deployment("a", deployment("c1"))
    records.add_deployment("a", deployment("c2", time="2024-01-01T00:00:00Z"))
    first, second = records.history("a")
    assert first["time"].endswith("Z") and len(first["time"]) == 20
    assert second["time"] == "2024-01-01T00:00:00Z"


def test_history_is_capped_by_certificates(tmp_path):
    records = Records(str(tmp_path))
    for n in range(HISTORY_LIMIT + 7):
        deploy(records, f"c{n}", n, [101, 102])
    history = records.history("a")
    kept = sorted({h["input_hash"] for h in history}, key=lambda h: int(h.split("c")[-1]))
    assert kept == [f"sha256:c{n}" for n in range(7, HISTORY_LIMIT + 7)]
    assert len(history) == 2 * HISTORY_LIMIT
    records.save()
    assert len(Records(str(tmp_path)).history("a")) == 2 * HISTORY_LIMIT


def test_a_deployment_to_many_sites_is_kept_whole(tmp_path):
    records = Records(str(tmp_path))
    sites = list(range(1, HISTORY_LIMIT + 31))  # more sites than HISTORY_LIMIT
    deploy(records, "c1", 1, sites)
    deploy(records, "c2", 2, sites)
    assert len(records.history("a")) == 2 * len(sites)
    [step] = rollback.plan(records, 1)
    assert [site_id for site_id, _ in step.sites] == sites


def test_history_is_a_copy(tmp_path):
    records = Records(str(tmp_path))
    records.add_deployment("a", deployment("c1"))
    records.history("a").clear()
    assert len(records.history("a")) == 1


# ----- rollback ---------------------------------------------------------------------------------

def test_rollback_picks_the_certificate_n_distinct_deployments_back(tmp_path):
    records = Records(str(tmp_path))
    deploy(records, "c1", 1, [101, 102])
    deploy(records, "c2", 2, [101, 102])
    deploy(records, "c2", 2, [101])  # a repair of the same certificate is no new checkpoint
    deploy(records, "c3", 3, [101, 102])
    [step] = rollback.plan(records, 1)
    assert (step.lineage, step.version) == ("a", 2)
    assert step.fullchain.endswith("fullchain2.pem") and step.privkey.endswith("privkey2.pem")
    assert step.sites == [(101, "www.example.test"), (102, "www.example.test")]
    [step] = rollback.plan(records, 2)
    assert step.version == 1
    with pytest.raises(ValueError, match="fewer than 4 different certificates"):
        rollback.plan(records, 3)


def test_rollback_counts_a_certificate_by_its_last_deployment(tmp_path):
    records = Records(str(tmp_path))
    deploy(records, "c1", 1, [101])
    deploy(records, "c2", 2, [101])
    deploy(records, "c1", 1, [101])  # rolled back to c1 once already
    [step] = rollback.plan(records, 1)
    assert step.version == 2


def test_rollback_returns_only_to_sites_that_held_the_certificate(tmp_path):
    records = Records(str(tmp_path))
    deploy(records, "c1", 1, [101])
    deploy(records, "c2", 2, [101, 102, 103])
    deploy(records, "c3", 3, [101, 102, 103])
    assert [s for s, _ in rollback.plan(records, 2)[0].sites] == [101]
    assert [s for s, _ in rollback.plan(records, 1)[0].sites] == [101, 102, 103]


def test_rollback_ignores_failed_deployments(tmp_path):
    records = Records(str(tmp_path))
    deploy(records, "c1", 1, [101])
    deploy(records, "bad", 2, [101], outcome="failed")
    deploy(records, "c3", 3, [101])
    [step] = rollback.plan(records, 1)
    assert step.version == 1
    with pytest.raises(ValueError):
        rollback.plan(records, 2)


def test_rollback_lists_each_site_once(tmp_path):
    records = Records(str(tmp_path))
    records.add_deployment("a", deployment("c1", 101, version=1, domain=None))
    records.add_deployment("a", deployment("c1", 101, version=1))
    records.add_deployment("a", deployment("c2", 101, version=2))
    assert rollback.plan(records, 1)[0].sites == [(101, "www.example.test")]


def test_rollback_skips_entries_that_cannot_be_put_back(tmp_path):
    records = Records(str(tmp_path))
    records.add_deployment("a", deployment("c0", version=0, input_hash=None))
    records.add_deployment("a", deployment("c1", version=1))
    records.add_deployment("a", deployment("cx", version=9, site_id="not a number"))
    records.add_deployment("a", deployment("c2", version=2))
    assert rollback.plan(records, 1)[0].version == 1
    with pytest.raises(ValueError):
        rollback.plan(records, 2)  # neither damaged entry is a checkpoint


def test_rollback_over_several_lineages(tmp_path):
    records = Records(str(tmp_path))
    deploy(records, "a1", 1, [101], lineage="a")
    deploy(records, "a2", 2, [101], lineage="a")
    deploy(records, "b1", 1, [201], lineage="b")
    steps = rollback.plan(records, 1)
    assert [(s.lineage, s.version) for s in steps] == [("a", 1)]  # b has nothing to go back to
    with pytest.raises(ValueError, match="nothing that far back"):
        rollback.plan(records, 2)


def test_rollback_with_no_records_plans_nothing(tmp_path):
    assert rollback.plan(Records(str(tmp_path)), 1) == []


@pytest.mark.parametrize("back", [0, -1])
def test_rollback_needs_one_checkpoint_at_least(tmp_path, back):
    with pytest.raises(ValueError, match="--checkpoints"):
        rollback.plan(Records(str(tmp_path)), back)


# ----- key-type slots and their owners ---------------------------------------------------------

def test_an_explicit_upload_takes_the_slot_a_repair_does_not(tmp_path):
    records = Records(str(tmp_path))
    assert records.record_upload(101, "ECC", "a", "sha256:a1", explicit=True) is None
    assert records.record_upload(101, "ECC", "b", "sha256:b1", explicit=True) == "a"
    records.record_upload(101, "ECC", "a", "sha256:a1", explicit=False)  # a repair by a
    slot = records.slot(101, "ECC")
    assert (slot["owner"], slot["lineage"], slot["input_hash"]) == ("b", "a", "sha256:a1")
    records.record_upload(101, "RSA", "r", "sha256:r1", explicit=False)  # no owner yet: r
    assert records.slot(101, "RSA")["owner"] == "r"
    assert records.slot(101, "RSA")["seq"] > records.slot(101, "ECC")["seq"]
    assert records.slot(102, "ECC") is None
    records.save()
    again = Records(str(tmp_path))
    assert again.slots(101) == records.slots(101)
    # The order survives the file: the next upload is newer than everything before it.
    again.record_upload(102, "ECC", "a", "sha256:a1", explicit=True)
    assert again.slot(102, "ECC")["seq"] > again.slot(101, "RSA")["seq"]


def test_slots_are_validated_when_read(tmp_path):
    path = state(tmp_path)
    path.parent.mkdir(parents=True)
    good = {"owner": "a", "lineage": "a", "input_hash": "sha256:x", "seq": 3}
    path.write_text(json.dumps({"version": 1, "lineages": {}, "seq": "seven", "sites": {
        "101": {"slots": {"ECC": good, "DSA": good, "RSA": {**good, "seq": "3"}}},
        "102": {"slots": {"ECC": {**good, "owner": None}}},
        "abc": {"slots": {"ECC": good}},
        "103": "not a dict",
        "104": {"slots": [good], "status_not_latest": True},
        "105": {"slots": {"RSA": {**good, "seq": True}}},
    }}))
    records = Records(str(tmp_path))
    assert records.slots(101) == {"ECC": good}
    assert records.slots(102) == {} and records.slots(103) == {} and records.slots(105) == {}
    assert records.status_not_latest(104) and not records.status_not_latest(101)
    records.record_upload(106, "ECC", "a", "sha256:y", explicit=True)
    assert records.slot(106, "ECC")["seq"] == 4  # the damaged counter starts after the newest


def test_find_certificate_by_hash_serial_or_fingerprint(tmp_path):
    records = Records(str(tmp_path))
    records.add_deployment("a", deployment("c1", fingerprint="AB:0C:DE"))
    assert records.find_certificate({"inputHash": "sha256:c1"})["lineage"] == "a"
    assert records.find_certificate({"serialNumber": "00C1"})["input_hash"] == "sha256:c1"
    assert records.find_certificate({"fingerPrint": "SHA1 Fingerprint=AB:0C:DE"}) is not None
    assert records.find_certificate({"inputHash": "sha256:zz", "serialNumber": "C1"}) is not None
    assert records.find_certificate({"inputHash": "sha256:zz"}) is None
    assert records.find_certificate({}) is None
    assert records.uploaded_to(101) and not records.uploaded_to(102)


# ----- a cache, not a trust anchor: every field is checked on read ------------------------------

def write_state(config_dir: Path, content: Any) -> None:
    path = state(config_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content if isinstance(content, str) else json.dumps(content))


def good_document() -> Dict[str, Any]:
    document = {"version": 1, "lineages": {"a": {
        "sites": {"names": sorted(NAMES), "targets": TARGETS},
        "history": [deployment("c1", version=1), deployment("c2", version=2)],
        "pinned": None}}}
    return json.loads(json.dumps(document))  # a deep copy: tests mutate it


@pytest.mark.parametrize("mutate, sites_kept, history_kept", [
    (lambda d: d["lineages"]["a"]["sites"]["targets"][0].update(site_id="abc"), False, 2),
    (lambda d: d["lineages"]["a"]["sites"]["targets"][0].update(site_id=True), False, 2),
    (lambda d: d["lineages"]["a"]["sites"]["targets"][0].update(site_id=-3), False, 2),
    (lambda d: d["lineages"]["a"]["sites"]["targets"][0].update(names=None), False, 2),
    (lambda d: d["lineages"]["a"]["sites"]["targets"][0].update(domain=7), False, 2),
    (lambda d: d["lineages"]["a"]["sites"].update(names=None), False, 2),
    (lambda d: d["lineages"]["a"]["sites"].update(targets=[]), False, 2),
    (lambda d: d["lineages"]["a"]["history"][0].update(site_id="abc"), True, 1),
    (lambda d: d["lineages"]["a"]["history"][0].update(input_hash=None), True, 1),
    (lambda d: d["lineages"]["a"]["history"][0].update(fullchain=["x"]), True, 1),
    (lambda d: d["lineages"]["a"]["history"][0].update(archive_version="2"), True, 1),
    (lambda d: d["lineages"]["a"]["history"][0].update(outcome=None), True, 1),
    (lambda d: d["lineages"]["a"]["history"][0].update(flags="chainError"), True, 1),
    (lambda d: d["lineages"]["a"]["history"][0].update(fingerprint="AB:CD"), True, 1),
    (lambda d: d["lineages"]["a"]["history"][0].update(fingerprint="Z" * 40), True, 1),
])
def test_wrong_types_are_dropped_with_a_warning(tmp_path, caplog, mutate, sites_kept, history_kept):
    document = good_document()
    mutate(document)
    write_state(tmp_path, document)
    records = Records(str(tmp_path))
    cached = records.cached_sites("a", NAMES)
    assert (cached is not None) == sites_kept
    for target in cached or []:
        assert isinstance(target["site_id"], int) and target["domain"] in (None, "www.example.test")
    history = records.history("a")
    assert len(history) == history_kept
    for entry in history:
        assert isinstance(entry["site_id"], int) and isinstance(entry["input_hash"], str)
        assert entry["fullchain"] is None or isinstance(entry["fullchain"], str)
        assert entry["archive_version"] is None or isinstance(entry["archive_version"], int)
    assert "damaged part(s)" in caplog.text and str(state(tmp_path)) in caplog.text


def test_a_site_id_in_digits_is_read_as_a_number(tmp_path):
    document = good_document()
    document["lineages"]["a"]["sites"]["targets"][0]["site_id"] = "101"
    write_state(tmp_path, document)
    assert Records(str(tmp_path)).cached_sites("a", NAMES) == TARGETS


def test_pinned_must_be_a_certificate_identity(tmp_path):
    document = good_document()
    document["lineages"]["a"]["pinned"] = {"x": 1}
    write_state(tmp_path, document)
    assert Records(str(tmp_path)).lineage("a")["pinned"] is None


@pytest.mark.parametrize("content, reason", [
    ("[" * 100000 + "]" * 100000, "nested too deep"),
    ('{"lineages": ' * 50000 + "{}" + "}" * 50000, "nested too deep"),
    (b"\xff\xfe\x00garbage", "not UTF-8 text"),
    ('{"version": 1, "lineages": {"a": {"sites"', "not JSON"),
])
def test_a_damaged_file_is_a_warning(tmp_path, caplog, content, reason):
    write_state(tmp_path, content)
    records = Records(str(tmp_path))
    assert records.lineage_names() == []
    assert f"is damaged ({reason}" in caplog.text and "found again" in caplog.text


def test_a_huge_file_is_not_read_whole(tmp_path, caplog, monkeypatch):
    write_state(tmp_path, good_document())
    monkeypatch.setattr(records_module, "MAX_BYTES", 100)
    assert Records(str(tmp_path)).lineage_names() == []
    assert "is damaged (larger than" in caplog.text


def test_a_missing_file_is_no_warning(tmp_path, caplog):
    assert Records(str(tmp_path)).lineage_names() == []
    assert caplog.text == ""


@pytest.mark.parametrize("layout", ["state-is-a-directory", "incapsula-is-a-file"])
def test_an_unusable_location_reads_as_empty_and_fails_to_save_clearly(tmp_path, caplog, layout):
    if layout == "state-is-a-directory":
        state(tmp_path).mkdir(parents=True)
        why = f"{state(tmp_path)} is a directory, not a file"
    else:
        state(tmp_path).parent.parent.mkdir(parents=True, exist_ok=True)
        state(tmp_path).parent.write_text("not a directory")
        why = f"{state(tmp_path).parent} is a file, not a directory"
    records = Records(str(tmp_path))
    assert records.cached_sites("a", NAMES) is None
    assert "cannot read the plugin's state file" in caplog.text
    records.add_deployment("a", deployment("c1"))
    with pytest.raises(records_module.RecordsError) as err:
        records.save()
    assert str(err.value) == why
    assert isinstance(err.value, OSError)  # callers that know only OSError still catch it


def test_fields_of_other_versions_are_kept_unless_too_deep(tmp_path):
    document = good_document()
    document["lineages"]["a"]["owner"] = {"ECC": "a"}
    document["lineages"]["a"]["history"][0]["note"] = "kept"
    deep: Any = "bottom"
    for _ in range(MAX_DEPTH + 5):
        deep = [deep]
    document["lineages"]["a"]["deep"] = deep
    write_state(tmp_path, document)
    records = Records(str(tmp_path))
    records.lineage_names()  # read: save() writes only what was read
    records.save()
    saved = json.loads(state(tmp_path).read_text())["lineages"]["a"]
    assert saved["owner"] == {"ECC": "a"} and saved["history"][0]["note"] == "kept"
    assert "deep" not in saved


def test_flagged_is_the_last_upload_of_that_certificate_to_that_site(tmp_path):
    records = Records(str(tmp_path))
    records.add_deployment("a", deployment("c1", outcome="failed", flags=["revocationError"]))
    assert records.flagged("a", 101, "sha256:c1")["flags"] == ["revocationError"]
    assert records.flagged("a", 102, "sha256:c1") is None
    records.add_deployment("a", deployment("c1", outcome="failed", error="res 4"))  # no verdict
    assert records.flagged("a", 101, "sha256:c1")["flags"] == ["revocationError"]
    records.add_deployment("a", deployment("c1"))  # uploaded again, unflagged this time
    assert records.flagged("a", 101, "sha256:c1") is None


# ----- fuzz: no document makes a reader raise --------------------------------------------------

def _random_value(rng: random.Random, depth: int = 0) -> Any:
    kinds = ["none", "bool", "int", "float", "str", "digits", "list", "dict", "deep"]
    kind = rng.choice(kinds if depth < 3 else kinds[:6])
    if kind == "none":
        return None
    if kind == "bool":
        return rng.random() < 0.5
    if kind == "int":
        return rng.choice([0, -1, 1, 101, 2 ** 64, -(2 ** 70)])
    if kind == "float":
        return rng.choice([0.5, -1e308, 1e308, 101.0])
    if kind == "str":
        return rng.choice(["", "abc", "sha256:c1", "ok", "failed", "/etc/passwd", "\u00e9\u0000"])
    if kind == "digits":
        return rng.choice(["101", "0", "-5", " 7 "])
    if kind == "list":
        return [_random_value(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    if kind == "dict":
        keys = ["site_id", "names", "domain", "targets", "history", "sites", "input_hash", "x"]
        return {rng.choice(keys): _random_value(rng, depth + 1) for _ in range(rng.randint(0, 3))}
    # Too deep for json.dumps to write: a placeholder that _text() expands.
    return f"@@deep{rng.randint(30, 3000)}@@"


def _text(document: Any) -> str:
    """The document as JSON, placeholders expanded into nested lists and objects."""
    text = json.dumps(document)
    for depth in {int(d) for d in re.findall(r'"@@deep(\d+)@@"', text)}:
        text = text.replace(f'"@@deep{depth}@@"', '[{"history": ' * depth + "[]" + "}]" * depth)
    return text


def _nodes(value: Any, path: Tuple[Any, ...] = ()) -> List[Tuple[Any, ...]]:
    found = [path]
    if len(path) > 8:
        return found
    if isinstance(value, dict):
        for key, item in value.items():
            found += _nodes(item, path + (key,))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += _nodes(item, path + (index,))
    return found


def _mutated(rng: random.Random) -> Any:
    document: Any = good_document()
    document["lineages"]["b"] = good_document()["lineages"]["a"]
    for _ in range(rng.randint(1, 4)):
        path = rng.choice(_nodes(document))
        if not path:
            document = _random_value(rng)
            continue
        parent = document
        for step in path[:-1]:
            parent = parent[step]
        if isinstance(parent, dict) and rng.random() < 0.2:
            del parent[path[-1]]
        else:
            parent[path[-1]] = _random_value(rng)
    return document


def _exercise(records: Records) -> None:
    """Every reader of the state file, as the plugin uses it; none may raise."""
    from certbot_incapsula import sites

    for name in [*records.lineage_names(), "a", "b", "zz"]:
        for cached in (records.cached_sites(name, NAMES) or []):
            target = sites.SiteTarget(int(cached["site_id"]), cached.get("domain"),
                                      list(cached.get("names", [])))
            assert target.site_id > 0
        entry = records.lineage(name)
        assert entry["pinned"] is None or isinstance(entry["pinned"], str)
        assert entry["sites"] is None or isinstance(entry["sites"], dict)
        for item in records.history(name):
            assert isinstance(item["site_id"], int) and isinstance(item["input_hash"], str)
            assert item["outcome"] in ("ok", "failed") and isinstance(item["flags"], list)
        records.version_of(name, "sha256:c1")
        records.flagged(name, 101, "sha256:c1")
    try:
        for step in rollback.plan(records, 1):
            assert isinstance(step.fullchain, str) and all(isinstance(s, int) for s, _ in step.sites)
    except ValueError as exc:  # the plugin's own "nothing that far back" error
        assert str(exc).startswith("Imperva:")
    records.add_deployment("a", deployment("c9", version=9))
    records.remember_sites("a", NAMES, TARGETS)
    records.save()


def test_fuzz_the_state_file_reader(tmp_path, caplog):
    rng = random.Random(14)  # seeded: a failure is reproducible
    good = json.dumps(good_document())
    for case in range(600):
        config = tmp_path / str(case)
        choice = case % 4
        if choice == 0:
            text = good[:rng.randint(0, len(good))]  # truncated
            write_state(config, text)
        elif choice == 1:
            write_state(config, bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 64))))
        else:
            write_state(config, _text(_mutated(rng)))
        _exercise(Records(str(config)))
        # What was saved reads back whole: the reader drops nothing of it.
        data, dropped = records_module.sound(json.loads(state(config).read_text()))
        assert dropped == 0 and data["lineages"]["a"]["history"][-1]["input_hash"] == "sha256:c9"


def test_a_fingerprint_of_the_wrong_length_drops_its_entry_with_one_line(tmp_path, caplog):
    """The records are a cache: an entry whose fingerprint could never be compared with what an
    edge serves is dropped on read, said once, and the rest is used."""
    document = good_document()
    good = "AB:" * 19 + "CD"
    document["lineages"]["a"]["history"][0]["fingerprint"] = "AB:CD:EF"  # 3 bytes, not 20 or 32
    document["lineages"]["a"]["history"][1]["fingerprint"] = good
    write_state(tmp_path, document)
    history = Records(str(tmp_path)).history("a")
    assert [entry["fingerprint"] for entry in history] == [good]
    damaged = [r for r in caplog.records if "damaged part(s)" in r.getMessage()]
    assert len(damaged) == 1 and "holds 1 damaged part(s)" in damaged[0].getMessage()
# ----- two processes on one file: each save merges into what is there, under the lock -----------

def test_two_processes_saving_keep_each_others_records(tmp_path):
    # Two views of one file, read before either saved: two processes started at once.
    first, second = Records(str(tmp_path)), Records(str(tmp_path))
    assert first.lineage_names() == second.lineage_names() == []
    first.remember_sites("a", NAMES, TARGETS)
    first.add_deployment("a", deployment("a1", 101, version=1))
    first.add_deployment("shared", deployment("s1", 101, version=1))
    assert first.record_upload(101, "ECC", "a", "sha256:a1", explicit=True) is None
    second.add_deployment("b", deployment("b1", 102, version=1))
    second.add_deployment("shared", deployment("s2", 102, version=2))
    second.record_upload(102, "ECC", "b", "sha256:b1", explicit=True)
    second.record_upload(101, "ECC", "b", "sha256:b1", explicit=False)  # a repair: not the owner
    second.mark_status_not_latest(101)
    second.pin("b", "sha256:b1")
    first.save()
    second.save()  # the later writer: before the lock and the merge, it dropped a's records

    again = Records(str(tmp_path))
    assert again.lineage_names() == ["a", "b", "shared"]
    assert [h["input_hash"] for h in again.history("a")] == ["sha256:a1"]
    assert [h["input_hash"] for h in again.history("b")] == ["sha256:b1"]
    # One lineage's entries from both: appended in the order the saves were made.
    assert [h["input_hash"] for h in again.history("shared")] == ["sha256:s1", "sha256:s2"]
    assert again.cached_sites("a", NAMES) == TARGETS
    assert again.lineage("b")["pinned"] == "sha256:b1" and again.lineage("a")["pinned"] is None
    # Slots: the second save's uploads take the numbers after the first's, in its order.
    slot_a, slot_b = again.slot(101, "ECC"), again.slot(102, "ECC")
    assert (slot_a["owner"], slot_a["lineage"], slot_a["input_hash"]) == ("a", "b", "sha256:b1")
    assert slot_b["owner"] == "b" and slot_a["seq"] > slot_b["seq"] > 1
    assert again.status_not_latest(101)
    # The saver's own view now holds what the other process recorded, and the next change in
    # either process numbers its slot after everything in the file.
    assert second.history("a") == again.history("a")
    first.record_upload(103, "RSA", "a", "sha256:a1", explicit=True)
    first.save()
    assert Records(str(tmp_path)).slot(103, "RSA")["seq"] > slot_a["seq"]


def test_a_merge_keeps_what_this_version_does_not_know_and_replays_changes_in_order(tmp_path):
    document = good_document()
    document["lineages"]["a"]["note"] = "a future version's field"
    write_state(tmp_path, document)
    mine = Records(str(tmp_path))
    mine.remember_sites("x", NAMES, TARGETS)
    mine.forget_sites("x")  # then dropped again: the last change is what is saved
    mine.pin("a", "sha256:c1")
    mine.pin("a", None)
    # Meanwhile another process caches x's sites and pins a; this process changed both after.
    other = Records(str(tmp_path))
    other.remember_sites("x", NAMES, TARGETS)
    other.pin("a", "sha256:c2")
    other.save()
    mine.save()
    saved = json.loads(state(tmp_path).read_text())
    assert saved["lineages"]["a"]["note"] == "a future version's field"
    assert saved["lineages"]["x"]["sites"] is None and saved["lineages"]["a"]["pinned"] is None
    assert len(saved["lineages"]["a"]["history"]) == len(document["lineages"]["a"]["history"])


def test_a_merge_onto_a_file_damaged_since_keeps_this_process_s_view(tmp_path, caplog):
    write_state(tmp_path, good_document())
    records = Records(str(tmp_path))
    before = records.history("a")
    records.add_deployment("a", deployment("c9", version=9))
    write_state(tmp_path, "{not json")  # damaged after this process read it
    records.save()
    assert [h["input_hash"] for h in Records(str(tmp_path)).history("a")] == [
        h["input_hash"] for h in before] + ["sha256:c9"]
    assert "damaged" not in caplog.text  # the damage at save time costs nothing to say


def test_a_save_waits_for_the_lock_and_says_plainly_when_it_gives_up(tmp_path):
    import fcntl
    import threading

    first = Records(str(tmp_path))
    first.add_deployment("a", deployment("c1"))
    first.save()
    before = state(tmp_path).read_bytes()
    holder = os.open(first.lock_path, os.O_RDWR)
    fcntl.flock(holder, fcntl.LOCK_EX)  # another process in the middle of its save
    try:
        records = Records(str(tmp_path), lock_wait=0.3)
        records.add_deployment("a", deployment("c2"))
        with pytest.raises(records_module.RecordsBusy) as err:
            records.save()
        assert str(err.value) == ("another certbot-incapsula process (or certbot with this "
                                  f"plugin) held its lock {first.lock_path} for 0.3 s")
        assert isinstance(err.value, records_module.RecordsError)  # callers' OSError handling
        assert state(tmp_path).read_bytes() == before  # nothing half-written
        # Released within the wait, the lock is taken and the save goes through.
        records.lock_wait = 10
        release = threading.Timer(0.2, fcntl.flock, (holder, fcntl.LOCK_UN))
        release.start()
        records.save()
        release.join()
    finally:
        os.close(holder)
    assert [h["input_hash"] for h in Records(str(tmp_path)).history("a")] == ["sha256:c1",
                                                                             "sha256:c2"]
