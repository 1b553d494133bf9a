"""The package's walls: no import cycles between modules, and the ground floor imports nothing
above it. Checked statically on module-level imports (imports inside functions are deferred on
purpose, and `if TYPE_CHECKING:` blocks never run)."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PKG = SRC / "xtalforge"
GROUND = {"xtalforge.types", "xtalforge.structure", "xtalforge.config"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _top_level_imports(tree: ast.Module) -> list[str]:
    out: list[str] = []
    for node in tree.body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        nodes = [node] + (list(ast.walk(node)) if isinstance(node, (ast.Try, ast.If)) else [])
        for n in nodes:
            if isinstance(n, ast.Import):
                out += [a.name for a in n.names]
            elif isinstance(n, ast.ImportFrom) and n.module and n.level == 0:
                out += [n.module] + [f"{n.module}.{a.name}" for a in n.names]
    return out


def import_graph() -> dict[str, set[str]]:
    """module -> the xtalforge modules it imports when it is imported (parents included:
    importing a.b.c runs a/__init__ and a/b/__init__ first)."""
    modules = {_module_name(p): p for p in PKG.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        deps: set[str] = set()
        for imp in _top_level_imports(ast.parse(path.read_text())):
            if not imp.startswith("xtalforge"):
                continue
            parts = imp.split(".")
            for k in range(1, len(parts) + 1):
                cand = ".".join(parts[:k])
                if cand in modules and cand != name and not name.startswith(cand + "."):
                    deps.add(cand)
        graph[name] = deps
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_the_checker_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    graph = import_graph()
    assert len(graph) > 50  # the walk found the package
    assert cycles(graph) == []


def test_the_ground_floor_imports_nothing_above_it():
    graph = import_graph()
    for mod in GROUND:
        above = {d for d in graph[mod] if d not in GROUND and d != "xtalforge"}
        assert not above, f"{mod} imports {sorted(above)}"


def test_only_the_loop_and_the_cli_reach_into_the_loop():
    graph = import_graph()
    for mod, deps in graph.items():
        if mod.startswith(("xtalforge.loop", "xtalforge.cli")):
            continue
        into_loop = sorted(d for d in deps if d.startswith("xtalforge.loop") and d != "xtalforge.loop")
        assert not into_loop, f"{mod} imports the campaign engine ({into_loop})"
