"""The package's shape (issue 19): no import cycle among its modules, no part importing the core
or a door, the core never importing certbot, and every module short enough to read in one
sitting. Read from the source tree's text (every import counts: top level, inside functions,
and under TYPE_CHECKING), so it needs no installed package and no network."""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, List, Set

PACKAGE = Path(__file__).resolve().parent.parent / "certbot_incapsula"
NAME = "certbot_incapsula"
DOORS = {f"{NAME}.installer", f"{NAME}.installer_preflight", f"{NAME}.cli", f"{NAME}.cli_args",
         f"{NAME}.cli_commands"}
CORE = f"{NAME}.core"
MAX_LINES = 400


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> Dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imports(path: Path, known: Set[str]) -> Set[str]:
    """The package's modules that `path` imports, wherever the import statement is."""
    found: Set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from pkg import mod` imports pkg and, when mod is a module, mod too.
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        found.update(name for name in names if name in known)
    return found


def graph() -> Dict[str, Set[str]]:
    known = set(modules())
    # A package's own __init__ is imported with any of its modules; the root one is a leaf.
    return {name: imports(path, known) - {name, NAME} for name, path in modules().items()}


def cycles(edges: Dict[str, Set[str]]) -> List[List[str]]:
    """Each import cycle, as the path that closes it (a depth-first search)."""
    found: List[List[str]] = []
    state: Dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: List[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                found.append(path[path.index(nxt):] + [node, nxt] if nxt in path else [node, nxt])
            elif nxt not in state:
                visit(nxt, path + [node])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [])
    return found


def test_the_package_has_no_import_cycle():
    assert cycles(graph()) == []


def test_no_part_imports_the_core_or_a_door():
    wrong = {(name, target) for name, targets in graph().items() for target in targets
             if not name.startswith(CORE) and name not in DOORS
             and (target.startswith(CORE) or target in DOORS)}
    assert wrong == set()


def test_the_core_never_imports_certbot():
    wrong = []
    for name, path in modules().items():
        if not name.startswith(CORE):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                wrong += [(name, a.name) for a in node.names if a.name.split(".")[0] in ("certbot", "acme")]
            elif isinstance(node, ast.ImportFrom) and node.module:
                if node.module.split(".")[0] in ("certbot", "acme"):
                    wrong.append((name, node.module))
    assert wrong == []


def test_every_module_reads_in_one_sitting():
    long = {name: len(path.read_text(encoding="utf-8").splitlines())
            for name, path in modules().items()}
    assert {name: n for name, n in long.items() if n > MAX_LINES} == {}


def test_the_cycle_finder_finds_a_cycle():
    # The check above proves nothing if the search cannot see a cycle at all.
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) != []
    assert cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []
