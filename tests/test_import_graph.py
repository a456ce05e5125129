"""The package's import graph: no cycles between modules, and no import running up the layers.

Layers, low to high (a module may import its own layer or lower ones, never a higher one):
errors, imageio, styles, demo  <  faces  <  identity, control  <  models  <  engine  <  comfy  <  methods  <
workflow  <  server  <  commands, cli. `engine/` is machinery only: it must not know any method; `comfy/` (the
ComfyUI graph machinery) sits below `methods/` so that each method's ComfyUI nodes live in its package, and
`workflow/` (which reads the method registry for them) above.
Imports inside functions count too (they are how a cycle hides); `TYPE_CHECKING` blocks do not, nor does a
module importing its own package (Python has run that package's `__init__` before the module anyway).
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src" / "idforge"

LAYERS = {
    "__init__": 0,
    "errors": 0,
    "imageio": 0,
    "styles": 0,
    "demo": 0,
    "faces": 1,
    "identity": 2,
    "control": 2,
    "models": 3,
    "engine": 4,
    "comfy": 5,
    "methods": 6,
    "workflow": 7,
    "server": 8,
    "commands": 9,
    "cli": 9,
    "__main__": 10,
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(path: Path, modules: set[str]) -> set[str]:
    """Every idforge module `path` imports (resolved to a module of the package)."""
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    own = _module_name(path)
    package = own if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            names = []
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            own_package = own.startswith(f"{name}.")  # a module always runs its packages' __init__ first
            if name and name.startswith("idforge") and not own_package:
                found.add(name)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def _graph() -> dict[str, set[str]]:
    files = sorted(SRC.rglob("*.py"))
    modules = {_module_name(path) for path in files}
    return {_module_name(path): _imports(path, modules) - {_module_name(path)} for path in files}


def _layer(module: str) -> int:
    parts = module.split(".")
    top = parts[1] if len(parts) > 1 else "__init__"
    return LAYERS[top]


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    counter = [0]

    def strong(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                strong(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                item = stack.pop()
                on_stack.discard(item)
                component.append(item)
                if item == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            strong(node)
    return components


def test_every_top_level_package_has_a_layer():
    tops = {path.relative_to(SRC).parts[0].removesuffix(".py") for path in SRC.iterdir()}
    tops -= {"__pycache__", "py.typed"}
    assert tops - set(LAYERS) == set(), "give the new package a layer in LAYERS"


def test_the_graph_sees_known_imports():
    graph = _graph()  # a parser that saw nothing would make the tests below pass vacuously
    assert "idforge.engine.params" in graph["idforge.methods.instantid.params"] or any(
        target.startswith("idforge.engine") for target in graph["idforge.methods.instantid.core"]
    )
    assert "idforge.errors" in graph["idforge.engine.params"]
    assert len(graph) > 100


def test_no_import_cycles():
    assert _cycles(_graph()) == []


def test_no_import_runs_up_the_layers():
    upward = [
        f"{source} -> {target}"
        for source, targets in _graph().items()
        for target in sorted(targets)
        if _layer(target) > _layer(source)
    ]
    assert upward == []


def test_engine_knows_no_method():
    engine = {name: targets for name, targets in _graph().items() if name.startswith("idforge.engine")}
    assert not any(target.startswith("idforge.methods") for targets in engine.values() for target in targets)
