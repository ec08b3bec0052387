"""The package's import graph has no cycles, and only the command-line modules print.

Every ``import`` among ``seqmix.*`` modules counts, including imports inside functions: lazy imports are how
a cycle hides (it works until someone moves one import to the top of a file). Imports under
``if TYPE_CHECKING:`` do not count: they never run. The graph is read with ``ast``, nothing is imported. ``seqmix.kernels`` is the top-level ``kernels/`` directory (pyproject maps it).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = {"seqmix": ROOT / "seqmix", "seqmix.kernels": ROOT / "kernels"}

# (importer, imported) edges that are allowed to close a cycle, each with the reason it is needed. Empty: no
# cycle is needed today.
ALLOWED_EDGES: dict[tuple[str, str], str] = {}


def _modules() -> dict[str, Path]:
    """Module name -> file, for every module of the package (a package is its ``__init__``)."""
    mods = {}
    for prefix, base in SOURCES.items():
        for path in sorted(base.rglob("*.py")):
            parts = list(path.relative_to(base).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            mods[".".join([prefix, *parts])] = path
    return mods


def _is_type_checking(node: ast.AST) -> bool:
    """``if TYPE_CHECKING:`` or ``if typing.TYPE_CHECKING:``."""
    if not isinstance(node, ast.If):
        return False
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The ``seqmix`` modules that ``name`` imports anywhere in its file (module level or inside functions).

    ``from a.b import c`` is an edge to ``a.b.c`` when that is a module, else to ``a.b``; relative imports are
    resolved against the module's package.
    """
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text(), str(path))
    type_only = {id(n) for block in ast.walk(tree) if _is_type_checking(block)
                 for stmt in block.body for n in ast.walk(stmt)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            targets = [f"{module}.{a.name}" if f"{module}.{a.name}" in modules else module for a in node.names]
        else:
            continue
        for target in targets:
            # `import seqmix.a.b` names seqmix.a.b; keep the longest prefix that is one of our modules.
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: {t for t in _imports(name, path, modules) if (name, t) not in ALLOWED_EDGES}
            for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component with more than one module (Tarjan)."""
    index, low, stack, on_stack, comps = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                comps.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return comps


def test_graph_is_read():
    graph = _graph()
    assert "seqmix.cli" in graph and "seqmix.layers" in graph and "seqmix.kernels.ttt_triton" in graph
    assert "seqmix.layers" in graph["seqmix"]  # `from . import layers` resolves to the package


def test_no_import_cycles():
    comps = _cycles(_graph())
    assert not comps, "import cycles among seqmix modules (break them, or allow one edge in ALLOWED_EDGES " \
                      "with the reason): " + "; ".join(" <-> ".join(c) for c in comps)


def test_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


# The command-line layer: the only modules that print (library code logs).
CLI_MODULES = {"seqmix.cli", "seqmix.bench.cli"}


def test_library_code_never_prints():
    calls = [f"{name}:{node.lineno}" for name, path in _modules().items() if name not in CLI_MODULES
             for node in ast.walk(ast.parse(path.read_text(), str(path)))
             if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print"]
    assert not calls, f"print() in library code (log instead, or move it to a CLI module): {calls}"


def test_ops_docstring_names_every_op_module():
    """seqmix.ops' convention names every module it holds (a new op module is added there too)."""
    import seqmix.ops

    doc = seqmix.ops.__doc__
    modules = sorted(p.stem for p in (ROOT / "seqmix" / "ops").glob("*.py") if p.stem != "__init__")
    missing = [m for m in modules if f"``{m}``" not in doc and f"seqmix.ops.{m}" not in doc]
    assert not missing, f"seqmix/ops/__init__.py does not name {missing}"


#: The layer order of the package, lowest first: a module may import its own layer and those below it, never one
#: above (kernels below layers, layers below backbones, ..., the command line on top). The longest prefix decides.
LAYERS = {
    "seqmix.utils": 0, "seqmix._source_tree": 0,
    "seqmix.ops": 1, "seqmix.kernels": 1, "seqmix.data": 1,
    "seqmix": 2, "seqmix.layers": 2,
    "seqmix.backbones": 3, "seqmix.diffusion": 3,
    "seqmix.training": 4, "seqmix.tasks": 4, "seqmix.lightning_cli": 4, "seqmix.parallel": 4,
    "seqmix.compare": 5, "seqmix.bench": 5, "seqmix.parallel.estimate": 5,  # the plan reads the benchmarks' costs
    "seqmix.cli": 6,
}


def _layer(module: str) -> int:
    parts = module.split(".")
    for i in range(len(parts), 0, -1):
        if ".".join(parts[:i]) in LAYERS:
            return LAYERS[".".join(parts[:i])]
    raise KeyError(f"{module} has no layer in tests/test_imports.py LAYERS: add its package there")


def test_no_module_imports_a_higher_layer():
    """data / ops / kernels < layers < backbones < training and tasks < compare / bench < cli (no upward arrow)."""
    up = sorted(f"{a} -> {b}" for a, bs in _graph().items() for b in bs if _layer(b) > _layer(a))
    assert not up, "imports against the layer order: " + "; ".join(up)
