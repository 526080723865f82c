"""The structure says what the program does (issue 17): the import graph of compiler/, passes/ and
runtime/ -- read with ``ast``, nothing imported -- has no cycles between modules or between packages,
no module takes another's private name, nothing but the CLI imports the CLI, imports inside functions
say why they are lazy, no module is over 400 lines, and the model family is decided in one place."""
from __future__ import annotations

import ast
from pathlib import Path

from conftest import REPO

ROOTS = {"compiler": "vitshrink", "passes": "vitshrink.passes", "runtime": "vitshrink.runtime"}
MAX_LINES = 400


def _modules() -> dict[str, Path]:
    """Module name (as installed) -> file, for every .py under the three source folders."""
    out = {}
    for folder, prefix in ROOTS.items():
        for f in sorted((REPO / folder).rglob("*.py")):
            parts = list(f.relative_to(REPO / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join([prefix, *parts])] = f
    return out


MODULES = _modules()


def _is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def _imports(name: str, source: str | None = None) -> list[tuple[str, list[str], ast.stmt, bool]]:
    """Internal imports of module ``name`` (its file, or ``source``): (target module, names taken, node,
    inside a function)."""
    tree = ast.parse(MODULES[name].read_text() if source is None else source)
    base = name if _is_package(name) else name.rpartition(".")[0]
    found = []

    def visit(node, in_function):
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.If) and isinstance(child.test, ast.Name) and child.test.id == "TYPE_CHECKING":
                continue  # never executed: names for type checkers
            if isinstance(child, ast.Import):
                for a in child.names:
                    if a.name.startswith("vitshrink"):
                        found.append((a.name, [], child, in_function))
            elif isinstance(child, ast.ImportFrom) and child.module != "__future__":
                if child.level:
                    pkg = base.split(".")
                    pkg = pkg[: len(pkg) - (child.level - 1)]
                    mod = ".".join(pkg + ([child.module] if child.module else []))
                else:
                    mod = child.module or ""
                if not mod.startswith("vitshrink"):
                    continue
                for a in child.names:  # `from pkg import module` imports the module itself
                    sub = f"{mod}.{a.name}"
                    found.append((sub, [], child, in_function) if sub in MODULES else (mod, [a.name], child, in_function))
            visit(child, inner)

    visit(tree, False)
    return [(t, n, node, f) for t, n, node, f in found if t in MODULES]


EDGES = {m: _imports(m) for m in MODULES}


def _cycle(graph: dict[str, set[str]]):
    """One cycle of ``graph`` as a list of nodes, or None."""
    state, stack = {}, []

    def dfs(u):
        state[u] = 1
        stack.append(u)
        for v in sorted(graph.get(u, ())):
            if state.get(v) == 1:
                return stack[stack.index(v):] + [v]
            if v not in state and (c := dfs(v)):
                return c
        state[u] = 2
        stack.pop()
        return None

    for u in sorted(graph):
        if u not in state and (c := dfs(u)):
            return c
    return None


def _package(name: str) -> str:
    """The room a module lives in: ``vitshrink.<package>`` (``vitshrink.passes``, ``vitshrink.spec`` ...) or,
    for a module directly under vitshrink/, the module itself."""
    parts = name.split(".")
    return ".".join(parts[:2])


def test_no_import_cycle_between_modules():
    graph = {m: {t for t, *_ in EDGES[m] if t != m} for m in MODULES}
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def test_no_import_cycle_between_packages():
    """A package never imports a package above it: the packages form a DAG (the lazy public API of
    ``vitshrink/__init__`` is not a room of its own)."""
    graph: dict[str, set[str]] = {}
    for m, edges in EDGES.items():
        if m == "vitshrink":
            continue
        for t, *_ in edges:
            if t != "vitshrink" and _package(t) != _package(m):
                graph.setdefault(_package(m), set()).add(_package(t))
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def _private(m: str, edges) -> list[str]:
    return [f"{m} takes {n} from {t}" for t, names, *_ in edges for n in names
            if n.startswith("_") and not n.endswith("__") and t != m]


def test_no_private_name_crosses_a_module():
    bad = [b for m, edges in EDGES.items() for b in _private(m, edges)]
    assert not bad, "\n".join(bad)


def test_only_the_cli_imports_the_cli():
    bad = [f"{m} imports {t}" for m, edges in EDGES.items() for t, *_ in edges
           if t.startswith("vitshrink.cli") and not m.startswith("vitshrink.cli")]
    assert not bad, "\n".join(bad)


def test_imports_inside_functions_say_why():
    """Every import statement inside a function (any module, internal or not) carries a ``lazy`` comment."""
    bad = []
    for m, f in MODULES.items():
        lines = f.read_text().splitlines()
        for node in ast.walk(ast.parse(f.read_text())):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for inner in ast.walk(node):
                if isinstance(inner, (ast.Import, ast.ImportFrom)) and getattr(inner, "module", None) != "__future__":
                    text = " ".join(lines[inner.lineno - 1: inner.end_lineno])
                    if "lazy" not in text:
                        bad.append(f"{f.relative_to(REPO)}:{inner.lineno}: {lines[inner.lineno - 1].strip()}")
    assert not bad, "imports inside functions without a '# lazy: why' comment:\n" + "\n".join(sorted(set(bad)))


def test_every_module_fits_in_one_sitting():
    long = {str(f.relative_to(REPO)): n for f in MODULES.values() if (n := len(f.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_the_family_is_decided_in_one_place():
    """Only the registry (vitshrink.families) and the Swin modules spell the family's name."""
    hits = [str(f.relative_to(REPO)) for f in MODULES.values() if '"swin"' in f.read_text()
            and f.name != "families.py" and "swin" not in f.name]
    assert not hits, f'"swin" spelled outside the registry and the Swin modules: {hits}'


def test_the_checks_see_a_cycle_a_private_import_and_a_relative_one():
    """The checks above can fail: a made-up loop is found; a borrowed private name is found, written
    relatively or absolutely, at module level or in a function; ``from . import x`` is an edge to module x."""
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None
    src = "from .format import _short\ndef f():\n    from vitshrink.ir.nodes import _x\nfrom . import tokens\n"
    edges = _imports("vitshrink.spec.vit", src)
    assert _private("vitshrink.spec.vit", edges) == ["vitshrink.spec.vit takes _short from vitshrink.spec.format",
                                                     "vitshrink.spec.vit takes _x from vitshrink.ir.nodes"]
    assert [e[3] for e in edges] == [False, True, False] and edges[2][0] == "vitshrink.spec.tokens"
