"""The package's shape, held by tests: imports point down the layers of docs/ARCHITECTURE.md, no
two modules import each other (directly or round a loop), and no module or function outgrows what
a reader can hold (~400 lines a module, ~80 a function; generated stubs aside).

Every import counts, also one inside a function: a lazy import is still a dependency."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).parent.parent
PACKAGE = ROOT / "ttdist"
GENERATED = {"v1"}  # protoc output

# top to bottom; a module may import its own layer or any layer below it
LAYERS = ["cli", "loadgen", "client", "planner", "router", "runtime", "dashboard", "tracing", "engine", "model", "mesh", "v1", "errors"]
# (errors: the one error base every layer shares, ttdist/errors.py)
# the engine defines the model-runner boundary (frozen dataclasses + a Protocol) that model/runner.py
# implements: the one place a lower layer names a higher one, and only that module of it
BOUNDARIES = {"ttdist.engine.runner"}
MAX_MODULE_LINES = 420
MAX_FUNCTION_LINES = 80


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The ttdist modules `name` imports: `from pkg import sub` names the submodule when `sub` is
    one, otherwise the package itself."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            subs = [f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in modules]
            found.update(subs)
            if len(subs) < len(node.names):
                found.add(base)
    return {m for m in found if m in modules and m != name}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def test_every_layer_is_ranked():
    layers = {_layer(m) for m in _modules()} - {None, "__main__"}
    assert layers <= set(LAYERS), f"folders missing from the layer order: {sorted(layers - set(LAYERS))}"


def test_imports_point_down():
    rank = {layer: i for i, layer in enumerate(LAYERS)}
    upward = []
    for module, deps in _graph().items():
        here = _layer(module)
        if here not in rank:
            continue
        for dep in deps:
            there = _layer(dep)
            if there in rank and rank[there] < rank[here] and dep not in BOUNDARIES:
                upward.append(f"{module} -> {dep}")
    assert upward == [], "imports pointing up a layer:\n" + "\n".join(sorted(upward))


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_no_import_cycles():
    assert _cycles(_graph()) == []


def test_cycle_finder_finds_a_loop():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def _hand_written() -> list[Path]:
    return [p for p in PACKAGE.rglob("*.py") if p.relative_to(PACKAGE).parts[0] not in GENERATED]


def test_modules_stay_readable():
    long = {str(p.relative_to(ROOT)): n for p in _hand_written() if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES}
    assert long == {}, f"modules over {MAX_MODULE_LINES} lines: {long}"


def test_functions_stay_readable():
    long = []
    for path in _hand_written():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({lines} lines)")
    assert long == [], f"functions over {MAX_FUNCTION_LINES} lines:\n" + "\n".join(long)
