"""certbot_incapsula.lineages: the settings `certbot-incapsula deploy` remembers for a
hook-deployed lineage are read back exactly, whatever the paths hold (issue 20)."""
from __future__ import annotations

from pathlib import Path

import pytest

from certbot_incapsula import lineages
from certbot_incapsula.outcomes import LineageFiles
from certbot_incapsula.settings import Settings, SettingsError

ODD = ['odd #1, "q" \'x\'', " lead and trail ", "comma,only", "hash#only", "'single'",
       '"double"', "a'''b", "semi;colon = equals", "ünïcode", "[section]"]


@pytest.mark.parametrize("name", ODD)
def test_any_path_is_read_back_exactly(tmp_path: Path, name: str) -> None:
    odd = tmp_path / name
    files = LineageFiles("www.example.test", str(odd / "fullchain.pem"), str(odd / "privkey.pem"),
                         "https://acme.example.test/dir?x=1#y")
    chosen = Settings(str(odd / "incapsula, #1.ini"), site_ids=(101, 102), edge_wait=7)
    lineages.remember(str(tmp_path), files, chosen)
    entry = lineages.from_hook_file(str(tmp_path), "www.example.test")
    assert entry.error is None
    assert entry.files == files
    assert entry.settings == chosen


def test_plain_paths_stay_plain_lines(tmp_path: Path) -> None:
    files = LineageFiles("n", "/etc/x/fullchain.pem", "/etc/x/privkey.pem", "")
    path = lineages.remember(str(tmp_path), files, Settings("/etc/x/incapsula.ini", edge_wait=0))
    text = Path(path).read_text()
    assert "fullchain = /etc/x/fullchain.pem\n" in text
    assert "incapsula_credentials = /etc/x/incapsula.ini\n" in text
    assert "incapsula_edge_wait = 0\n" in text
    assert text.startswith("# Written by `certbot-incapsula deploy`")


def test_a_file_written_before_is_still_read(tmp_path: Path) -> None:
    """The earlier writer's raw `key = value` lines (site ids unquoted: a list to ConfigObj)."""
    path = Path(lineages.hook_file(str(tmp_path), "n"))
    path.parent.mkdir(parents=True)
    path.write_text("# Written by `certbot-incapsula deploy` for `certbot-incapsula sync` and "
                    "`status`.\nfullchain = /etc/x/fullchain.pem\nprivkey = /etc/x/privkey.pem\n"
                    "acme_server = \nincapsula_credentials = /etc/x/incapsula.ini\n"
                    "incapsula_site_id = 101,102\nincapsula_edge_wait = 5\n")
    entry = lineages.from_hook_file(str(tmp_path), "n")
    assert entry.error is None and entry.files is not None and entry.settings is not None
    assert entry.files.fullchain == "/etc/x/fullchain.pem" and entry.files.acme_server == ""
    assert entry.settings.site_ids == (101, 102) and entry.settings.edge_wait == 5


def test_a_path_that_cannot_be_quoted_is_refused_and_nothing_is_written(tmp_path: Path) -> None:
    """Holding both ''' and \"\"\": no ConfigObj quoting reads it back."""
    odd = tmp_path / "a'''b\"\"\"c"
    files = LineageFiles("n", str(odd / "fullchain.pem"), str(odd / "privkey.pem"))
    with pytest.raises(SettingsError) as info:
        lineages.remember(str(tmp_path), files, Settings("/etc/x/incapsula.ini"))
    assert "cannot be stored in" in str(info.value) and "(fullchain)" in str(info.value)
    assert "Nothing was uploaded." in str(info.value)
    assert not Path(lineages.hook_file(str(tmp_path), "n")).exists()
