"""The import graph of the product: which part may depend on which, and no cycles.

docs/architecture.md draws the same picture. Every import counts, also one inside a
function (a lazy import is still a dependency). The rules:

    engine.proto   pure protocol (sans-IO): imports nothing else of the project
    cni            the CNI/netavark plugins: engine.proto only (pure and small: the plugin's
                   start-up stays lean, tests/unit/test_layering.py)
    engine         the per-host daemon: engine.proto, cni (the bridge's shape)
    lighthouse     the lighthouse: engine.proto and engine (it is a node like any other)
    cli            the `flatnet` command and the lab: anything

and, inside engine, the sans-IO modules in NO_C never reach the compiled data path
(engine.crypto, engine.datapath), directly or through another module: they take a data
path at construction (engine/datapath_port.py) and are tested against a fake.
"""
from __future__ import annotations

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[2]
CLI = "flatnet"  # the `flatnet` command (its folder; also the import namespace of all parts)
PARTS = {"engine.proto": {"engine.proto"},
         "cni": {"cni", "engine.proto"},
         "engine": {"engine", "engine.proto", "cni"},
         "lighthouse": {"lighthouse", "engine", "engine.proto"},
         CLI: {CLI, "engine", "engine.proto", "cni", "lighthouse"}}

NO_C = ("engine.device",)
C_MODULES = ("engine.crypto", "engine.datapath")


def _module(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, pathlib.Path]:
    found = {}
    for top in ("engine", "cni", "lighthouse", CLI):
        for path in (ROOT / top).rglob("*.py"):
            if "__pycache__" not in path.parts and path.name != "_build.py":  # the build script is not imported
                found[_module(path)] = path
    return found


wrong_names: list[str] = []


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    graph: dict[str, set[str]] = {}
    for mod, path in mods.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            else:
                continue
            for name in names:
                if name.startswith(f"{CLI}.") and name.split(".")[1] in ("engine", "cni", "lighthouse"):
                    name = name.removeprefix(f"{CLI}.")  # flatnet.engine.x lives in engine/x.py
                elif name.split(".")[0] in ("engine", "cni", "lighthouse"):
                    wrong_names.append(f"{mod} imports {name} (not under the flatnet namespace)")
                while name and name not in mods:
                    name = name.rpartition(".")[0]
                if name and name != mod:
                    deps.add(name)
        graph[mod] = deps
    return graph


def _part(mod: str) -> str:
    return "engine.proto" if mod == "engine.proto" or mod.startswith("engine.proto.") else mod.split(".")[0]


def test_each_part_imports_only_what_it_may():
    wrong = sorted(f"{mod} imports {dep}" for mod, deps in _graph().items() for dep in deps
                   if _part(dep) not in PARTS[_part(mod)])
    assert not wrong, "imports across the layering (docs/architecture.md):\n" + "\n".join(wrong)


def test_every_import_uses_the_flatnet_namespace():
    """Installed, the parts exist only as flatnet.engine, flatnet.cni, flatnet.lighthouse:
    a bare `import engine` works in a checkout but not in a wheel (and would load a
    second copy of the module)."""
    wrong_names.clear()
    _graph()
    assert not wrong_names, "\n".join(wrong_names)


def test_no_import_cycles():
    graph = _graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while (w := stack.pop()) != v:
                comp.append(w)
            if comp:
                cycles.append(sorted(comp + [v]))

    for v in graph:
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


def test_the_graph_sees_the_tree():
    """The rules above are only worth something if the walk finds the modules."""
    graph = _graph()
    assert {"engine.device", "engine.proto.handshake", "cni.commands", "lighthouse.registry"} <= set(graph)
    assert "engine.proto.handshake" in graph["engine.device"]


def _reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for dep in graph[todo.pop()] - seen:
            seen.add(dep)
            todo.append(dep)
    return seen


def test_sans_io_modules_do_not_reach_the_c_module():
    graph = _graph()
    wrong = sorted(f"{mod} reaches {dep}" for mod in NO_C for dep in _reachable(graph, mod)
                   if dep in C_MODULES or dep.startswith(tuple(m + "." for m in C_MODULES)))
    assert not wrong, "the device is sans-IO: it takes its data path at construction\n" + "\n".join(wrong)
