"""The package's shape: imports flow one way, and what the toolkit writes loads back."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import tftoolkit

PACKAGE_DIR = Path(tftoolkit.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _runtime_imports(tree: ast.AST) -> list[ast.AST]:
    """Import statements anywhere (functions too), except under ``if TYPE_CHECKING:``."""
    found = []

    def visit(node):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def import_graph() -> dict[str, set[str]]:
    """Module -> the tftoolkit modules importing it runs (parent packages included,
    except the root package and the importer's own packages)."""
    modules = {_module_name(p): p for p in PACKAGE_DIR.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        package = name if is_package else name.rpartition(".")[0]
        for node in _runtime_imports(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                           for a in node.names]
            for target in targets:
                if not target.startswith("tftoolkit"):
                    continue
                parts = target.split(".")
                for depth in range(2, len(parts) + 1):  # ancestors run first
                    ancestor = ".".join(parts[:depth])
                    if ancestor in modules and not (name + ".").startswith(ancestor + "."):
                        graph[name].add(ancestor)
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_module_imports_a_module_that_imports_it_back():
    assert _cycle(import_graph()) is None


def test_no_import_circle_between_packages():
    packages: dict[str, set[str]] = {}
    for module, targets in import_graph().items():
        top = ".".join(module.split(".")[:2])
        packages.setdefault(top, set()).update(
            ".".join(t.split(".")[:2]) for t in targets
            if t != top and (top == "tftoolkit" or not t.startswith(top + ".")))
    assert _cycle(packages) is None, packages
    # The package root is the public API: nothing inside imports it.
    assert not any("tftoolkit" in targets for targets in packages.values())
    assert "tftoolkit.training" in packages["tftoolkit"]


def test_models_never_import_the_stages_before_them_at_runtime():
    graph = import_graph()
    for module, targets in graph.items():
        if module.startswith("tftoolkit.models"):
            assert not {t for t in targets
                        if t.split(".")[1] in ("data", "recipe", "training", "augment")}, module


def test_the_package_imports_without_switching_the_matplotlib_backend():
    code = ("import matplotlib; matplotlib.use('svg'); import tftoolkit, tftoolkit.cli; "
            "import tftoolkit.augment.preview; print(matplotlib.get_backend())")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "svg"
