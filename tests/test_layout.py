"""The import structure, walked with `ast` (deferred imports inside functions included), so it stays true.

Imports run one way: trainable <- spaces <- search; data below trainable; search writes and analysis
reads the sweep folder through `selftune.sweepfolder`, and neither imports the other. No cycles
between modules or between packages. Only `selftune.search.adapter` imports `ray.tune`.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "selftune"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _running_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node of `tree` except what sits under `if TYPE_CHECKING:`: imports for type hints only never run (the
    method modules name `TrainConfig` in hints; the config imports the method registry to check a config)."""
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            skip.update(id(n) for child in node.body for n in ast.walk(child))
    return [n for n in ast.walk(tree) if id(n) not in skip]


def import_graph() -> dict[str, set[str]]:
    """module -> the selftune modules it imports at run time (the names a `from X import y` resolves to, when y is
    a module)."""
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        deps: set[str] = set()
        for node in _running_nodes(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                deps.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                subs = {f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in files}
                deps.update(subs)
                if len(subs) < len(node.names):  # names defined in the module itself (not only its submodules)
                    deps.add(node.module)
        graph[name] = {d for d in deps if d in files and d != name}
    return graph


def external_imports(module: str) -> set[str]:
    path = next(p for p in PACKAGE.rglob("*.py") if _module_name(p) == module)
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
    return out


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of `graph` as a list of nodes (first == last), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for d in sorted(graph.get(n, ())):
            if state.get(d) == 1:
                return [*stack[stack.index(d):], d]
            if d not in state and (found := visit(d)):
                return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state and (found := visit(n)):
            return found
    return None


def package_of(module: str) -> str:
    return ".".join(module.split(".")[:2])


def package_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for m, deps in graph.items():
        # a package's __init__ re-exports its own modules; the root package imports nothing
        out.setdefault(package_of(m), set()).update(package_of(d) for d in deps if package_of(d) != package_of(m))
    return out


def test_the_walker_finds_a_cycle_when_there_is_one() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_between_modules() -> None:
    graph = import_graph()
    assert len(graph) > 30  # the walker sees the package
    assert find_cycle(graph) is None


def test_no_import_cycle_between_packages() -> None:
    assert find_cycle(package_graph(import_graph())) is None


def test_imports_run_one_way() -> None:
    pkgs = package_graph(import_graph())
    assert "selftune.analysis" not in pkgs["selftune.search"]
    assert "selftune.search" not in pkgs["selftune.analysis"]
    assert {"selftune.sweepfolder"} <= pkgs["selftune.search"] & pkgs["selftune.analysis"]
    assert not pkgs["selftune.trainable"] & {"selftune.spaces", "selftune.search", "selftune.analysis"}
    assert not pkgs["selftune.spaces"] & {"selftune.search", "selftune.analysis"}
    assert not pkgs["selftune.data"] & {"selftune.trainable", "selftune.spaces", "selftune.search",
                                        "selftune.analysis"}
    assert not pkgs["selftune.sweepfolder"] & {"selftune.search", "selftune.analysis", "selftune.trainable"}


def test_only_the_adapter_imports_ray_tune_and_the_loop_no_ray() -> None:
    graph = import_graph()
    users = sorted(m for m in graph if any(x == "ray" or x.startswith("ray.tune") for x in external_imports(m)))
    assert set(users) <= {"selftune.search.adapter", "selftune.search.ray_setup"}  # ray_setup: ray.init, no tune
    for m in graph:
        if m.startswith(("selftune.trainable", "selftune.data", "selftune.spaces", "selftune.sweepfolder")):
            assert not any(x.split(".")[0] == "ray" for x in external_imports(m)), m


if __name__ == "__main__":  # print the package graph: python tests/test_layout.py
    for pkg, deps in sorted(package_graph(import_graph()).items()):
        print(f"{pkg:24} -> {', '.join(sorted(deps)) or '-'}")
