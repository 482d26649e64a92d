"""visarl's packages depend one way: every import, module-level or inside a function, read with ``ast``.

A node of the package graph is a subpackage (``visarl.rl``) or a top-level module (``visarl.fit``). The layers,
bottom first: core with the leaf modules config, launch and registry; envs and data; annotate, saliency and
mae; rl; probe and report; the stage runners and the entry point. An import may go down or sideways, never up,
and no two nodes (nor two modules) may import each other, directly or through others. A failure names the import
sites (``file:line``) that form the cycle or break the layering. Modules named in strings (``importlib``, as
:data:`visarl.registry.STAGE_MODULES`) are not edges: that is how the stage runners plug in from the top.
Imports under ``if TYPE_CHECKING:`` never run: they count between packages (what a package knows) but not between
modules, so a LightningModule may name its stage's config class in an annotation while the stage imports the
module lazily.
"""

from __future__ import annotations

import ast
import textwrap
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "visarl"

LAYERS: dict[str, int] = {
    # registry is a leaf too: every stage module registers itself with it, and it imports only config
    "core": 0, "config": 0, "launch": 0, "registry": 0,
    "envs": 1, "data": 1,
    "annotate": 2, "saliency": 2, "mae": 2,
    "rl": 3,
    "probe": 4, "report": 4,
    "collect": 5, "pipeline": 5, "experiment": 5, "fit": 5,
}  # fmt: skip
"""Rank of each node (its name below ``visarl``); an import must not go to a higher rank."""
MODELS = ("annotate", "saliency", "mae", "rl", "probe", "report")
"""What storage (data) and the environments (envs) must not know."""


@dataclass(frozen=True)
class Import:
    """One import statement's edge: module ``source`` imports module ``target`` at ``site`` (file:line)."""

    source: str
    target: str
    site: str
    typing_only: bool = False
    """Under ``if TYPE_CHECKING:``: for annotations only, never executed."""


def module_names(root: Path, package: str) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` under ``root/package`` (a package is its ``__init__``)."""
    modules = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def _absolute(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    """The absolute module an ``ImportFrom`` names, relative forms (``from ..a import b``) resolved."""
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _targets(node: ast.AST, module: str, is_package: bool) -> list[str]:
    """Dotted names an import statement loads; ``from x import y`` gives ``x.y``, which :func:`_known` maps to the
    module ``x.y`` when y is one (``from visarl import fit``) and to ``x`` when y is a name defined in x."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom):
        base = _absolute(node, module, is_package)
        return [f"{base}.{alias.name}" for alias in node.names]
    return []


def _known(name: str, modules: dict[str, Path]) -> str | None:
    """The longest prefix of ``name`` that is one of ``modules`` (``visarl.rl.sac.SACAgent`` -> ``visarl.rl.sac``)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def _typing_only(tree: ast.AST) -> set[int]:
    """Ids of the nodes inside ``if TYPE_CHECKING:`` (or ``typing.TYPE_CHECKING``) blocks."""
    inside: set[int] = set()
    for node in ast.walk(tree):
        test = getattr(node, "test", None)
        if isinstance(node, ast.If) and ast.unparse(test).split(".")[-1] == "TYPE_CHECKING":
            inside |= {id(sub) for stmt in node.body for sub in ast.walk(stmt)}
    return inside


def read_imports(root: Path, package: str) -> list[Import]:
    """Every import from one module of ``package`` to another, at any depth of the file (functions included)."""
    modules = module_names(root, package)
    found = []
    for module, path in modules.items():
        is_package = path.name == "__init__.py"
        tree = ast.parse(path.read_text(), filename=str(path))
        typing_only = _typing_only(tree)
        for node in ast.walk(tree):
            site = f"{path.relative_to(root)}:{getattr(node, 'lineno', 0)}"
            targets = {_known(t, modules) for t in _targets(node, module, is_package)}
            found += [
                Import(module, t, site, id(node) in typing_only)
                for t in sorted(targets - {None, module})  # type: ignore[type-var]
            ]
    return found


def node_of(module: str, package: str) -> str:
    """``visarl.rl.sac`` -> ``visarl.rl``; ``visarl.fit`` -> ``visarl.fit``; ``visarl`` -> ``visarl``."""
    return ".".join(module.split(".")[:2]) if module != package else package


Graph = dict[str, dict[str, list[str]]]
"""source -> target -> import sites (file:line) of that edge."""


def _graph(edges: list[tuple[str, str, str]]) -> Graph:
    """``(source, target, site)`` triples -> :data:`Graph`, each site once per edge."""
    graph: Graph = defaultdict(lambda: defaultdict(list))
    for src, dst, site in edges:
        if site not in graph[src][dst]:
            graph[src][dst].append(site)
    return graph


def module_graph(imports: list[Import]) -> Graph:
    """Nodes are modules; annotation-only imports are left out (they never run, so they order no import)."""
    return _graph([(imp.source, imp.target, imp.site) for imp in imports if not imp.typing_only])


def package_graph(imports: list[Import], package: str) -> Graph:
    """Nodes are subpackages and top-level modules; imports inside one node are left out."""
    edges = [(node_of(imp.source, package), node_of(imp.target, package), imp.site) for imp in imports]
    return _graph([(src, dst, site) for src, dst, site in edges if src != dst])


def _components(graph: Graph) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(set(graph) | {w for targets in graph.values() for w in targets}):
        if v not in index:
            visit(v)
    return found


def _cycle_through(graph: Graph, component: list[str]) -> list[str]:
    """One cycle ``[a, b, ..., a]`` inside a strongly connected component (breadth-first from its first node)."""
    members, start = set(component), component[0]
    parent: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph.get(v, {})):
                if w == start:
                    path = [v]  # walk back from v to start, then read it forwards
                    while path[-1] != start:
                        path.append(parent[path[-1]])
                    return [*reversed(path), start]
                if w in members and w not in parent:
                    parent[w] = v
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"{component} is not strongly connected")


def find_cycles(graph: Graph) -> list[str]:
    """One line per cycle: ``a -> b -> a`` and the import sites of each of its edges."""
    reports = []
    for component in _components(graph):
        cycle = _cycle_through(graph, component)
        edges = [f"  {a} -> {b}: {', '.join(graph[a][b])}" for a, b in zip(cycle, cycle[1:], strict=False)]
        reports.append(" -> ".join(cycle) + f" (all of {component})\n" + "\n".join(edges))
    return reports


@pytest.fixture(scope="module")
def imports() -> list[Import]:
    return read_imports(ROOT, PACKAGE)


def _rank(node: str) -> int:
    name = node.removeprefix(f"{PACKAGE}.")
    assert name in LAYERS, f"{node} has no layer: add it to LAYERS in {Path(__file__).name}"
    return LAYERS[name]


def test_no_cycle_between_packages(imports):
    cycles = find_cycles(package_graph(imports, PACKAGE))
    assert not cycles, "visarl's packages import each other:\n" + "\n".join(cycles)


def test_no_cycle_between_modules(imports):
    cycles = find_cycles(module_graph(imports))
    assert not cycles, "visarl's modules import each other:\n" + "\n".join(cycles)


def test_imports_go_down_the_layers(imports):
    graph = package_graph(imports, PACKAGE)
    upward = [
        f"{src} (layer {_rank(src)}) -> {dst} (layer {_rank(dst)}): {', '.join(sites)}"
        for src, targets in graph.items()
        if src != PACKAGE
        for dst, sites in targets.items()
        if dst != PACKAGE and _rank(dst) > _rank(src)
    ]
    assert not upward, "imports that go up the layers:\n" + "\n".join(upward)


def test_core_imports_only_config_and_launch(imports):
    allowed = {f"{PACKAGE}.core", f"{PACKAGE}.config", f"{PACKAGE}.launch"}
    bad = [
        f"{imp.site}: {imp.target}"
        for imp in imports
        if node_of(imp.source, PACKAGE) == f"{PACKAGE}.core" and node_of(imp.target, PACKAGE) not in allowed
    ]
    assert not bad, "visarl.core must import no other visarl package:\n" + "\n".join(bad)


@pytest.mark.parametrize("low", ["data", "envs"])
def test_storage_and_envs_know_no_model(imports, low):
    forbidden = {f"{PACKAGE}.{name}" for name in MODELS}
    bad = [
        f"{imp.site}: {imp.target}"
        for imp in imports
        if node_of(imp.source, PACKAGE) == f"{PACKAGE}.{low}" and node_of(imp.target, PACKAGE) in forbidden
    ]
    assert not bad, f"visarl.{low} imports a model package:\n" + "\n".join(bad)


# ---------------------------------------------------------------- the checker itself must be able to fail


def _tree(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))


def test_a_cycle_through_function_level_and_relative_imports_is_reported(tmp_path):
    _tree(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/a/__init__.py": "",
            "pkg/a/low.py": """\
                import os


                def f():
                    from pkg.b import high  # hidden in a function

                    return high
                """,
            "pkg/b/__init__.py": "",
            "pkg/b/high.py": "from ..a import low\n",
            "pkg/c.py": "from pkg import a\n",
        },
    )
    imports = read_imports(tmp_path, "pkg")
    assert Import("pkg.c", "pkg.a", "pkg/c.py:1") in imports  # `from pkg import a` names the subpackage
    assert not any(imp.target == "os" for imp in imports)  # only the package's own modules count
    (package_cycle,) = find_cycles(package_graph(imports, "pkg"))
    assert package_cycle.startswith("pkg.a -> pkg.b -> pkg.a")
    assert "pkg/a/low.py:5" in package_cycle and "pkg/b/high.py:1" in package_cycle
    (module_cycle,) = find_cycles(module_graph(imports))
    assert "pkg.a.low -> pkg.b.high -> pkg.a.low" in module_cycle


def test_no_cycle_is_reported_for_a_graph_that_goes_one_way(tmp_path):
    _tree(
        tmp_path, {"pkg/__init__.py": "", "pkg/a.py": "", "pkg/b.py": "from . import a\n", "pkg/c.py": "import pkg.b\n"}
    )
    imports = read_imports(tmp_path, "pkg")
    assert {(i.source, i.target) for i in imports} == {("pkg.b", "pkg.a"), ("pkg.c", "pkg.b")}
    assert find_cycles(package_graph(imports, "pkg")) == [] == find_cycles(module_graph(imports))


def test_an_annotation_only_import_counts_between_packages_not_between_modules(tmp_path):
    _tree(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/low.py": """\
                from typing import TYPE_CHECKING

                if TYPE_CHECKING:
                    from pkg.top import Config
                """,
            "pkg/top.py": "import pkg.low\n",
        },
    )
    imports = read_imports(tmp_path, "pkg")
    assert Import("pkg.low", "pkg.top", "pkg/low.py:4", typing_only=True) in imports
    assert find_cycles(module_graph(imports)) == []
    assert "pkg/low.py:4" in find_cycles(package_graph(imports, "pkg"))[0]


def test_the_longer_cycle_of_three_nodes_names_every_edge():
    graph: Graph = {"x": {"y": ["x.py:1"]}, "y": {"z": ["y.py:2"]}, "z": {"x": ["z.py:3"]}, "w": {"x": ["w.py:4"]}}
    (report,) = find_cycles(graph)
    assert report.startswith("x -> y -> z -> x")
    assert all(site in report for site in ("x.py:1", "y.py:2", "z.py:3")) and "w.py" not in report
