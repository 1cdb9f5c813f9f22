"""The layers of design.md hold in the source: no import cycle between our modules (lazy imports included, since
a function-level import that closes a cycle is still a cycle), `core` imports no orchestrator layer, and
`analysis` does not import `core`. Read statically from every module's AST, so nothing is imported to check."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LAYERS = ("core", "ablations", "slurm", "analysis")
FORBIDDEN = {
    "core": ("ablate.ablations", "ablate.slurm", "ablate.analysis"),
    "analysis": ("ablate.core",),
}


def module_name(path: Path) -> str:
    parts = ["ablate", *path.relative_to(ROOT).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def our_modules() -> dict[str, Path]:
    return {module_name(path): path for layer in LAYERS for path in (ROOT / layer).rglob("*.py")}


def _type_checking_only(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return True
    return False


def imports_of(path: Path, modules: dict[str, Path]) -> set[str]:
    """Our modules that `path` imports anywhere (module level or inside functions), except for type checking."""
    tree = ast.parse(path.read_text())
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
        else:
            continue
        if _type_checking_only(node, parents):
            continue
        for name in names:
            if name in modules:
                found.add(name)
                break  # `from pkg import submodule` is an edge to the submodule, not also to the package
    return found


def import_graph() -> dict[str, set[str]]:
    modules = our_modules()
    return {name: imports_of(path, modules) - {name} for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of `graph` (as a path that returns to its start), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return [*path[path.index(target) :], target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_the_cycle_finder_finds_a_cycle_closed_by_a_lazy_import(tmp_path: Path) -> None:
    """The checker itself: a function-level import back to the importer is a cycle."""
    (tmp_path / "a.py").write_text("from ablate.core.b import f\n")
    (tmp_path / "b.py").write_text("def f():\n    from ablate.core.a import g\n")
    modules = {"ablate.core.a": tmp_path / "a.py", "ablate.core.b": tmp_path / "b.py"}
    graph = {name: imports_of(path, modules) for name, path in modules.items()}
    assert find_cycle(graph) == ["ablate.core.a", "ablate.core.b", "ablate.core.a"]
    assert find_cycle({"x": {"y"}, "y": set()}) is None


def test_no_import_cycle_between_our_modules() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_core_imports_no_orchestrator_and_analysis_no_core() -> None:
    graph = import_graph()
    wrong = [
        f"{module} imports {target}"
        for module, targets in graph.items()
        for target in targets
        for layer, banned in FORBIDDEN.items()
        if module.startswith(f"ablate.{layer}") and target.startswith(banned)
    ]
    assert not wrong, "\n".join(wrong)


def test_no_module_passes_the_size_where_it_does_two_jobs() -> None:
    """design.md: when a file passes ~400 lines it is doing two jobs."""
    long = {name: n for name, path in our_modules().items() if (n := len(path.read_text().splitlines())) > 420}
    assert not long, long
