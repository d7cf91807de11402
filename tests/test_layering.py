"""The house stays as ARCHITECTURE.md draws it: every import of the project's own modules
(lazy ones inside functions included) runs down the layering below, never up or sideways."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = ("conal_rl.train", "conal_rl.evaluate", "conal_rl.render", "conal_rl.plot",
            "conal_rl.stl", "conal_rl.atlas")

# package -> the project packages its modules may import (besides their own package).
LAYERS = {
    "conal_rl.method": (),
    "conal_rl.common": (),
    "agents": (),
    "envs": (),
    "conal_rl.training": ("conal_rl.method", "conal_rl.common", "agents", "envs"),
    "conal_rl.analysis": ("conal_rl.training", "conal_rl.method", "conal_rl.common", "agents",
                          "envs"),
    "commands": ("conal_rl.analysis", "conal_rl.training", "conal_rl.method",
                 "conal_rl.common", "agents", "envs"),
    "benchmarks": ("commands", "conal_rl.analysis", "conal_rl.training", "conal_rl.method",
                   "conal_rl.common", "agents", "envs"),
}
PROJECT = ("conal_rl", "agents", "envs", "benchmarks")


def package_of(module: str) -> str:
    if module in COMMANDS:
        return "commands"
    if module == "conal_rl":  # the package's empty __init__: the bottom layer
        return "conal_rl.common"
    for package in LAYERS:
        if module == package or module.startswith(package + "."):
            return package
    raise AssertionError(f"{module} belongs to no layer: add it to tests/test_layering.py")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_imports(path: Path):
    """(line, imported module) for every import of a project module in the file."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            # "from conal_rl import train" imports conal_rl.train
            names = [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            if name.split(".")[0] in PROJECT:
                yield node.lineno, name


def imported_package(name: str) -> str | None:
    """The layer of an imported name (a module, or a name inside a module)."""
    while name:
        try:
            return package_of(name)
        except AssertionError:
            name = name.rpartition(".")[0]
    return None


def edges():
    for top in ("conal_rl", "agents", "envs", "benchmarks"):
        for path in sorted((ROOT / top).rglob("*.py")):
            source = package_of(module_name(path))
            for line, name in project_imports(path):
                yield path.relative_to(ROOT), line, source, name, imported_package(name)


def test_every_import_runs_down_the_layers():
    wrong = [f"{path}:{line}: {source} imports {name} ({target})"
             for path, line, source, name, target in edges()
             if target is not None and target != source and target not in LAYERS[source]]
    assert not wrong, "imports against the layering:\n" + "\n".join(wrong)


def test_commands_do_not_import_each_other():
    wrong = [f"{path}:{line}: imports {name}" for path, line, source, name, _ in edges()
             if source == "commands" and any(name == c or name.startswith(c + ".")
                                              for c in COMMANDS)]
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("bad", ["conal_rl.training.trainer", "benchmarks.speed.training_loop"])
def test_the_scan_sees_an_import_against_the_layers(tmp_path, bad):
    """The scan itself: a method module importing the runner or the benchmarks is caught."""
    path = tmp_path / "probe.py"
    path.write_text(f"def f():\n    from {bad} import x\n")
    [(line, name)] = list(project_imports(path))
    assert line == 2 and imported_package(name) not in LAYERS["conal_rl.method"]


def module_graph() -> dict[str, set[str]]:
    """Product module -> the product modules it imports (lazy and type-only imports too)."""
    paths = {module_name(p): p for top in ("conal_rl", "agents", "envs")
             for p in sorted((ROOT / top).rglob("*.py"))}
    graph = {}
    for module, path in paths.items():
        targets = set()
        for _, name in project_imports(path):
            while name and name not in paths:  # a name inside a module: the module
                name = name.rpartition(".")[0]
            if name and name != module and not name.endswith("__init__"):
                targets.add(name)
        graph[module] = targets
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The groups of modules that import each other in a loop (the strongly connected
    components of more than one module, Tarjan's algorithm), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_loop_among_the_products_modules():
    # packages import their modules lazily (PEP 562): a package is not an edge of a loop
    graph = {m: {t for t in ts if not (ROOT / t.replace(".", "/")).is_dir()}
             for m, ts in module_graph().items()}
    assert not cycles(graph), cycles(graph)


def test_the_loop_finder_finds_a_loop():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    # a loop first entered at its larger module
    assert cycles({"a": {"c"}, "b": {"c"}, "c": {"b"}}) == [["b", "c"]]


def test_no_two_product_modules_share_a_file_name():
    names: dict[str, list[str]] = {}
    for top in ("conal_rl", "agents", "envs", "benchmarks"):
        for path in (ROOT / top).rglob("*.py"):
            if path.name not in ("__init__.py", "__main__.py"):
                names.setdefault(path.name, []).append(str(path.relative_to(ROOT)))
    assert not {n: p for n, p in names.items() if len(p) > 1}


def test_pyproject_names_only_files_that_exist():
    import re

    named = re.findall(r"[\w./-]+\.py\b", (ROOT / "pyproject.toml").read_text())
    assert named and not [p for p in named if not (ROOT / p).is_file()]
