"""Every link of the README, of docs/ and of bench/README.md points at a file, or a heading, that
exists (issue 19). Anchors follow GitHub's rules: the heading's text, lowercased, punctuation
dropped, spaces turned into hyphens, and -1, -2... for a repeated heading. Web links are not
fetched: the suite runs offline."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, Iterator, List, Set, Tuple

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = sorted([ROOT / "README.md", ROOT / "bench" / "README.md", *(ROOT / "docs").glob("**/*.md")])
LINK = re.compile(r"(?<!!)\[(?:[^\]\[]|\[[^\]]*\])*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def prose(text: str) -> Iterator[Tuple[int, str]]:
    """(line number, line) outside fenced and indented code blocks, inline code removed."""
    fenced = False
    previous_blank = True
    in_indented = False
    for number, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
            continue
        blank = not line.strip()
        # An indented block starts after a blank line (a list item's continuation does not).
        if line.startswith(("    ", "\t")) and (previous_blank or in_indented) and not _list_context(line):
            in_indented = True
        elif not blank:
            in_indented = False
        previous_blank = blank
        if fenced or in_indented:
            continue
        yield number, re.sub(r"`[^`]*`", "", line)


def _list_context(line: str) -> bool:
    return bool(re.match(r"\s+([-*+]|\d+\.)\s", line))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading's text."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link: its text
    text = text.replace("`", "").replace("*", "")
    text = text.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> Set[str]:
    seen: Dict[str, int] = {}
    found: Set[str] = set()
    fenced = False
    for line in page.read_text(encoding="utf-8").splitlines():
        if line.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
            continue
        match = None if fenced else HEADING.match(line)
        if match:
            base = slug(match.group(2))
            count = seen.get(base, 0)
            seen[base] = count + 1
            found.add(base if count == 0 else f"{base}-{count}")
    return found


def links(page: Path) -> List[Tuple[int, str]]:
    return [(number, match.group(1)) for number, line in prose(page.read_text(encoding="utf-8"))
            for match in LINK.finditer(line)]


def _shown(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def broken(page: Path) -> List[str]:
    wrong = []
    for number, target in links(page):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:: not fetched
            continue
        path, _, anchor = target.partition("#")
        where = (page.parent / path).resolve() if path else page
        if not where.exists():
            wrong.append(f"{_shown(page)}:{number}: {target}: no such file")
        elif anchor and (where.is_dir() or where.suffix != ".md"):
            wrong.append(f"{_shown(page)}:{number}: {target}: an anchor in a non-page")
        elif anchor and anchor not in anchors(where):
            wrong.append(f"{_shown(page)}:{number}: {target}: no such heading in "
                         f"{_shown(where)}")
    return wrong


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_link_points_at_a_file_or_heading_that_exists(page: Path) -> None:
    assert broken(page) == []


def test_the_readme_links_to_every_docs_page() -> None:
    linked = {(ROOT / target.partition("#")[0]).resolve() for _, target in links(ROOT / "README.md")
              if target.startswith("docs/")}
    pages = {page.resolve() for page in (ROOT / "docs").glob("*.md")}
    assert pages - linked == set()


def test_the_checker_sees_links_and_github_anchors(tmp_path: Path) -> None:
    # The checks above prove nothing if links or anchors were never found.
    assert slug("See what Imperva holds: `certbot-incapsula status`") == \
        "see-what-imperva-holds-certbot-incapsula-status"
    assert slug("After the upload: what Imperva's edge serves") == \
        "after-the-upload-what-impervas-edge-serves"
    assert slug("sync, twice a day") == "sync-twice-a-day"
    page = tmp_path / "page.md"
    page.write_text("# A title\n\n## Again\n\n## Again\n\nSee [this](#again-1), [that](#nowhere),\n"
                    "[a file](missing.md) and `[code](#not-a-link)`:\n\n    [indented](#not-either)\n")
    assert anchors(page) == {"a-title", "again", "again-1"}
    assert [target for _, target in links(page)] == ["#again-1", "#nowhere", "missing.md"]
    assert len(broken(page)) == 2
    assert len(links(ROOT / "README.md")) > 20
