"""The house rules of docs/architecture.md, checked on the import statements themselves (ast, not text search)."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("btembed", "training", "hub", "devdata")
# A string constant that starts like an SQL statement; only the catalog may hold one.
SQL_START = re.compile(r"^\s*(SELECT|INSERT|UPDATE|DELETE|CREATE|DROP|ALTER|PRAGMA|BEGIN|COMMIT|ROLLBACK|REPLACE|"
                       r"VACUUM|ATTACH|WITH\s+\w+\s+AS)\b")
SQL_OWNER = "btembed.search.catalog"


def module_name(path: Path) -> str:
    """The dotted module name of a file under the repository root."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def package_files() -> dict[str, Path]:
    """Every module of the project's packages, by dotted name."""
    files = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            files[module_name(path)] = path
    return files


MODULES = package_files()


def _absolute(module: str, path: Path, node: ast.ImportFrom) -> str:
    """The absolute module a (possibly relative) `from ... import` names."""
    if not node.level:
        return node.module or ""
    base = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(module: str) -> set[str]:
    """Every module a file imports, anywhere in it (lazy imports inside functions count too)."""
    path = MODULES[module]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            target = _absolute(module, path, node)
            # `from pkg import sub` imports the submodule when there is one, else a name of pkg itself.
            subs = {f"{target}.{alias.name}" for alias in node.names} & MODULES.keys()
            found.update(subs or {target})
            if len(subs) < len(node.names):
                found.add(target)
    return found


def internal(name: str) -> str | None:
    """The project module an import resolves to (the longest known prefix), or None for third-party ones."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in MODULES:
            return candidate
    return None


GRAPH = {m: {t for t in map(internal, imports_of(m)) if t and t != m} for m in MODULES}


def _in(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def violations(source: str, forbidden: tuple[str, ...]) -> list[str]:
    """Imports from modules of `source` into any `forbidden` package."""
    return sorted(f"{m} imports {t}" for m in GRAPH if _in(m, source)
                  for t in GRAPH[m] if any(_in(t, f) for f in forbidden))


@pytest.mark.parametrize("source, forbidden", [
    ("btembed", ("training", "hub", "devdata")),
    ("btembed.backends", ("btembed.search", "btembed.probe")),
    ("training", ("hub", "devdata", "btembed.commands")),
])
def test_imports_point_down(source, forbidden):
    assert violations(source, forbidden) == []


def cycles() -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan), i.e. import circles."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    return found


def test_no_import_circles():
    assert cycles() == []


def test_only_the_catalog_speaks_sql():
    holders = set()
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and SQL_START.match(node.value):
                holders.add(module)
        if "sqlite3" in imports_of(module):
            holders.add(module)
    assert holders <= {SQL_OWNER}, sorted(holders - {SQL_OWNER})


def test_the_rules_see_a_known_import():
    """Guards the checker itself: the CLI's known dependency on its command table is seen."""
    assert "btembed.commands" in GRAPH["btembed.cli"]
