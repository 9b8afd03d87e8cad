"""The package's imports follow the layers written in docs/architecture.md, and none forms a cycle.

Every `import` and `from ... import` of every module counts, inside functions too; only those under
`if TYPE_CHECKING:` are left out (they never run). `from package import name` counts as an import
of the submodule `package.name` when that submodule exists, else of the package.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SOURCE_ROOT = REPO_ROOT / "src"
ARCHITECTURE = REPO_ROOT / "docs" / "architecture.md"


def module_sources(root: Path, package: str) -> dict[str, str]:
    """Module name -> source of every .py file of `package` under `root` (a package is its __init__)."""
    sources = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        sources[name] = path.read_text()
    return sources


def is_type_checking_block(node: ast.AST) -> bool:
    if not isinstance(node, ast.If):
        return False
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imported_modules(name: str, source: str, modules: set[str], package: str) -> set[str]:
    """The modules of `modules` that module `name` imports (see the module docstring for the rules)."""
    is_package = any(other.startswith(name + ".") for other in modules)
    found: set[str] = set()
    stack: list[ast.AST] = [ast.parse(source)]
    while stack:
        node = stack.pop()
        if is_type_checking_block(node):
            continue
        stack.extend(ast.iter_child_nodes(node))
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = resolve_relative(name, node, is_package)
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        else:
            continue
        found.update(nearest_module(target, modules) for target in targets if target.split(".")[0] == package)
    found.discard(name)
    return found


def resolve_relative(name: str, node: ast.ImportFrom, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    parts = name.split(".") if is_package else name.split(".")[:-1]
    base = parts[: len(parts) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def nearest_module(target: str, modules: set[str]) -> str:
    """`target` itself, or the deepest module that contains it (an attribute of a module)."""
    while target not in modules and "." in target:
        target = target.rsplit(".", 1)[0]
    return target


def import_graph(sources: dict[str, str], package: str) -> dict[str, set[str]]:
    modules = set(sources)
    return {name: imported_modules(name, source, modules, package) for name, source in sources.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return path[path.index(target) :] + [target]
            if target not in state:
                cycle = visit(target)
                if cycle:
                    return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state:
            cycle = visit(start)
            if cycle:
                return cycle
    return None


def documented_layers(text: str) -> dict[str, int]:
    """Module prefix -> layer number, from the table under '## Layers' in docs/architecture.md."""
    section = text.split("## Layers", 1)[1].split("\n## ", 1)[0]
    layers = {}
    for number, modules in re.findall(r"^\| (\d+)\. [^|]+\| ([^|]+)\|", section, re.MULTILINE):
        for module in re.findall(r"`([\w.]+)`", modules):
            layers[module] = int(number)
    return layers


def layer_of(module: str, layers: dict[str, int]) -> int:
    """The layer of the longest documented prefix of `module`; a module no row covers is an error."""
    prefixes = [p for p in layers if module == p or module.startswith(p + ".")]
    longest = [p for p in prefixes if p != module.split(".")[0] or module == p]
    if not longest:
        raise AssertionError(f"{module} is in no layer of docs/architecture.md: add it to the table")
    return layers[max(longest, key=len)]


def layer_violations(graph: dict[str, set[str]], layers: dict[str, int]) -> list[str]:
    """'a (layer i) imports b (layer j > i)' for every import from a lower layer into a higher one."""
    found = []
    for module, targets in sorted(graph.items()):
        own = layer_of(module, layers)
        for target in sorted(targets):
            if layer_of(target, layers) > own:
                found.append(f"{module} (layer {own}) imports {target} (layer {layer_of(target, layers)})")
    return found


# ---- the package --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def famkd_graph() -> dict[str, set[str]]:
    return import_graph(module_sources(SOURCE_ROOT, "famkd"), "famkd")


def test_the_package_has_no_import_cycle(famkd_graph):
    assert find_cycle(famkd_graph) is None


def test_no_module_imports_from_a_higher_layer(famkd_graph):
    layers = documented_layers(ARCHITECTURE.read_text())
    assert layers["famkd.config"] > layers["famkd.distill"] > layers["famkd.fam"]  # the table was read
    assert layer_violations(famkd_graph, layers) == []


def test_every_module_sits_in_a_documented_layer(famkd_graph):
    layers = documented_layers(ARCHITECTURE.read_text())
    assert all(layer_of(module, layers) for module in famkd_graph)


# ---- the checker on hand-made packages ------------------------------------------------------


def fake_package(tmp_path: Path, files: dict[str, str]) -> dict[str, set[str]]:
    for relative, text in files.items():
        path = tmp_path / "pkg" / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return import_graph(module_sources(tmp_path, "pkg"), "pkg")


def test_a_function_level_import_that_closes_a_loop_is_a_cycle(tmp_path):
    graph = fake_package(
        tmp_path,
        {
            "__init__.py": "",
            "data/__init__.py": "from pkg.data.datasets import build\n",
            "data/datasets.py": "def build():\n    from pkg.data.cifar import load\n    return load()\n",
            "data/cifar.py": "from pkg.data.datasets import Image\n",
        },
    )
    assert graph["pkg.data.datasets"] == {"pkg.data.cifar"} and graph["pkg.data.cifar"] == {"pkg.data.datasets"}
    assert find_cycle(graph) == ["pkg.data.datasets", "pkg.data.cifar", "pkg.data.datasets"]


def test_type_checking_imports_relative_imports_and_submodules_resolve(tmp_path):
    graph = fake_package(
        tmp_path,
        {
            "__init__.py": "",
            "low.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.high import X\n",
            "high/__init__.py": "from . import part\nfrom .part import thing\n",
            "high/part.py": "import pkg.low\nfrom pkg import low\n",
        },
    )
    assert graph["pkg.low"] == set()
    assert graph["pkg.high"] == {"pkg.high.part"}
    assert graph["pkg.high.part"] == {"pkg.low"}
    assert find_cycle(graph) is None


def test_an_import_from_a_lower_layer_into_a_higher_one_is_reported(tmp_path):
    graph = fake_package(
        tmp_path,
        {
            "__init__.py": "",
            "core.py": "import pkg.engine\n",
            "engine.py": "from pkg.core import helper\n",
        },
    )
    table = (
        "## Layers\n\n| layer | modules |\n|---|---|\n| 1. core | `pkg`, `pkg.core` |\n| 2. engine | `pkg.engine` |\n"
    )
    layers = documented_layers(table)
    assert layers == {"pkg": 1, "pkg.core": 1, "pkg.engine": 2}
    assert layer_violations(graph, layers) == ["pkg.core (layer 1) imports pkg.engine (layer 2)"]
    assert find_cycle(graph) == ["pkg.core", "pkg.engine", "pkg.core"]
