"""The shape of the house: no import circle between Orchard's modules, no module over 500 lines.

Read statically (``ast``), so the test is fast and sees every module, imported or not.

Module-level imports count, including those in ``if``/``try`` blocks; imports under
``if TYPE_CHECKING:`` do not (they never run). An import inside a function runs
when the function is called, and may close a circle only when its line, or the
line above it, says so with a comment holding ``import circle`` (what the circle
is and why it cannot be broken otherwise).

Run alone: ``python -m pytest tests/test_house.py``.
"""

from __future__ import annotations

import ast
import pathlib

import orchard

PACKAGE = pathlib.Path(orchard.__file__).parent
MAX_LINES = 500
#: Modules known to be over the limit, each with the work that splits it (drop the entry then).
OVERSIZE: dict[str, str] = {
}
#: The marker that lets an import inside a function close a circle.
DOCUMENTED = "import circle"
#: Imports inside functions that close a circle, documented here until their module says so itself:
#: (importer, imported) -> why.
KNOWN_LAZY: dict[tuple[str, str], str] = {}


def _modules() -> dict[str, pathlib.Path]:
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


MODULES = _modules()


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(body: list[ast.stmt], in_function: bool = False) -> list[tuple[ast.Import | ast.ImportFrom, bool]]:
    """Every import statement under ``body``, with whether it runs only when a function is called."""
    found: list[tuple[ast.Import | ast.ImportFrom, bool]] = []
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append((node, in_function))
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            found += _imports(node.orelse, in_function)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            found += _imports(node.body, True)
        else:  # class bodies, with/for/while/try blocks and their handlers run at import time
            for field in ("body", "orelse", "finalbody", "handlers", "cases"):
                children = getattr(node, field, None)
                if isinstance(children, list):
                    found += _imports(children, in_function)
    return found


def _targets(module: str, node: ast.Import | ast.ImportFrom) -> set[str]:
    """The Orchard modules an import statement runs: each named one and the packages above it.

    The packages above the importing module itself are already being imported, so they do not count.
    """
    named: set[str] = set()
    if isinstance(node, ast.Import):
        named = {alias.name for alias in node.names}
    else:
        base = node.module or ""
        if node.level:
            package = module.split(".")
            if MODULES[module].name != "__init__.py":
                package = package[:-1]
            package = package[:len(package) - node.level + 1]
            base = ".".join(package + ([node.module] if node.module else []))
        for alias in node.names:
            sub = f"{base}.{alias.name}"
            named.add(sub if sub in MODULES else base)
    targets = set()
    for name in named:
        parts = name.split(".")
        for end in range(1, len(parts) + 1):
            prefix = ".".join(parts[:end])
            implied = end < len(parts)
            if prefix in MODULES and prefix != module and not (implied and module.startswith(prefix + ".")):
                targets.add(prefix)
    return targets


def _graph() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """Module-level edges, and the edges of imports inside functions that do not say they break a circle."""
    module_level: dict[str, set[str]] = {m: set() for m in MODULES}
    lazy: dict[str, set[str]] = {m: set() for m in MODULES}
    for module, path in MODULES.items():
        source = path.read_text(encoding="utf-8")
        lines = source.splitlines()
        for node, in_function in _imports(ast.parse(source).body):
            targets = _targets(module, node)
            if not in_function:
                module_level[module] |= targets
                continue
            around = " ".join(lines[max(node.lineno - 2, 0):node.end_lineno or node.lineno])
            if DOCUMENTED not in around:
                lazy[module] |= {target for target in targets if (module, target) not in KNOWN_LAZY}
    return module_level, lazy


def _circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each as one circle's members."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(edges.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            members = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                members.append(top)
                if top == node:
                    break
            if len(members) > 1:
                found.append(sorted(members))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_no_import_circle_at_module_level() -> None:
    module_level, _ = _graph()
    assert _circles(module_level) == []


def test_imports_inside_functions_close_no_undocumented_circle() -> None:
    module_level, lazy = _graph()
    merged = {m: module_level[m] | lazy[m] for m in MODULES}
    assert _circles(merged) == [], (
        f"an import inside a function closes a circle; break it, or say why on its line with '# {DOCUMENTED}: ...'")


def test_the_walk_sees_circles() -> None:
    """The checker itself: a circle through a package's ``__init__`` and a lazy, undocumented import are found."""
    assert _circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _targets("orchard.experiment", ast.parse("from orchard.storages.base import X").body[0]) == {  # type: ignore[arg-type]
        "orchard.storages", "orchard.storages.base"}
    assert _targets("orchard.storages.memory", ast.parse("from .base import X").body[0]) == {  # type: ignore[arg-type]
        "orchard.storages.base"}
    tree = ast.parse("def f():\n    import orchard.worker\n")
    assert [(type(n).__name__, lazy) for n, lazy in _imports(tree.body)] == [("Import", True)]


def test_no_module_over_500_lines() -> None:
    sizes = {path.relative_to(PACKAGE.parent).as_posix(): len(path.read_text(encoding="utf-8").splitlines())
             for path in MODULES.values()}
    over = {name: lines for name, lines in sizes.items() if lines > MAX_LINES}
    assert set(over) - set(OVERSIZE) == set(), f"modules over {MAX_LINES} lines (split them by job): {over}"
    assert set(OVERSIZE) - set(over) == set(), "these are no longer over the limit: remove them from OVERSIZE"
