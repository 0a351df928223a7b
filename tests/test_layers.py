"""The package's floors, checked on its source: every import of a package
module points down (adapters -> neutral layer -> _core), there is no
import cycle, and no package module is imported inside a function (the
habit that hides cycles). Optional third-party packages may be imported
lazily; package modules may not."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "safetensors_c"
pytestmark = pytest.mark.source_tree  # lints the checkout's sources and csrc/

# Floor of each module: a module may import only modules of lower floors.
FLOORS = {
    "_core": 0, "error_codes": 0,
    "_dtypes": 1, "_checks": 1, "_pickle_rebuild": 1, "_terminal": 1, "_sources": 1,
    # the HTTP source stands on _sources, under _remote (its entry points)
    "_http": 2,
    "_display": 3, "_remote": 3, "_digests": 3, "_pickle_vm": 3,
    "_reader": 4, "_writer": 4, "_archive": 4, "_into": 4, "_background": 5,
    "_checkpoint": 5,
    "_frameworks": 6,
    "_open": 7,
    "distributed": 7,
    "integrity": 8, "sharded": 8, "scan": 8,
    "convert": 9, "diff": 9, "stats": 9,
    "numpy": 10, "torch": 10, "flax": 10, "tensorflow": 10, "paddle": 10, "mlx": 10,
    "cli": 11, "__init__": 11,
    # compat hands out the whole package as `safetensors` (`import safetensors_c`): above it.
    "compat": 12,
    "__main__": 12,
}
# _adapters.<framework>: above the neutral reader and writer, loaded by the
# registry (_frameworks) by module path, below every feature.
ADAPTER_FLOOR = 5


def floor_of(module: str) -> int:
    if module.startswith("_adapters"):
        return ADAPTER_FLOOR
    if module not in FLOORS:
        pytest.fail(f"safetensors_c.{module} has no floor in tests/test_layers.py: add it")
    return FLOORS[module]


def modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).with_suffix("")
        parts = rel.parts
        if parts[-1] == "__init__" and len(parts) > 1:
            name = ".".join(parts[:-1])
        else:
            name = ".".join(parts)
        yield name, path


def package_imports(name: str, tree: ast.AST, is_package: bool = False,
                    known: set[str] | None = None):
    """(imported module, line, inside a function?) for each package import.

    Every form counts: ``from . import x``, ``from .x import y``,
    ``import safetensors_c.x``, ``from safetensors_c.x import y``, and the
    package itself, ``import safetensors_c`` and ``from safetensors_c import y``.
    ``from P import y`` imports the module P.y when there is one, else P
    (the top package P is its ``__init__``). ``is_package``: ``name`` is a
    package's ``__init__.py``, the base of its relative imports."""
    if known is None:
        known = {n for n, _ in modules()} | set(FLOORS)
    if name == "__init__":
        package_parts = []
    else:
        package_parts = name.split(".") if is_package else name.split(".")[:-1]
    found = []

    def module_of(parts):
        return ".".join(parts) if parts else "__init__"

    def visit(node, in_function):
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, ast.ImportFrom):
                module = child.module or ""
                parts = None
                if child.level > 0:
                    base = package_parts[: len(package_parts) - (child.level - 1)]
                    parts = base + (module.split(".") if module else [])
                elif module == "safetensors_c" or module.startswith("safetensors_c."):
                    parts = module.split(".")[1:]
                if parts is not None:
                    for alias in child.names:
                        target = ".".join(parts + [alias.name])
                        found.append((target if target in known else module_of(parts),
                                      child.lineno, in_function))
            elif isinstance(child, ast.Import):
                for alias in child.names:
                    if alias.name == "safetensors_c":
                        found.append(("__init__", child.lineno, in_function))
                    elif alias.name.startswith("safetensors_c."):
                        found.append((alias.name[len("safetensors_c."):], child.lineno,
                                      in_function))
            visit(child, inner)

    visit(tree, False)
    return found


def test_every_import_form_is_seen():
    source = """
import safetensors_c
import safetensors_c.sharded as sh
from safetensors_c import numpy, load_file
from safetensors_c._adapters import torch
from safetensors_c.integrity import verify
from . import _core, SafetensorError
from ._reader import open_source
from .. import scan

def later():
    from safetensors_c import save_file
    import safetensors_c
"""
    known = {"numpy", "sharded", "integrity", "_adapters", "_adapters.torch", "_core",
             "_reader", "scan"}
    found = package_imports("_adapters.torch", ast.parse(source), known=known)
    assert found == [
        ("__init__", 2, False), ("sharded", 3, False), ("numpy", 4, False),
        ("__init__", 4, False), ("_adapters.torch", 5, False), ("integrity", 6, False),
        ("_adapters", 7, False), ("_adapters", 7, False), ("_adapters._reader", 8, False),
        ("scan", 9, False), ("__init__", 12, True), ("__init__", 13, True),
    ]
    # The base of a package's own relative imports is the package.
    found = package_imports("_adapters", ast.parse("from . import torch\nfrom .. import _core"),
                            is_package=True, known=known)
    assert found == [("_adapters.torch", 1, False), ("_core", 2, False)]


def graph():
    edges = {}
    for name, path in modules():
        tree = ast.parse(path.read_text(), str(path))
        edges[name] = package_imports(name, tree, path.name == "__init__.py")
    return edges


def test_every_import_points_down():
    wrong = []
    for name, imports in graph().items():
        for target, line, _ in imports:
            top = target.split(".")[0] if not target.startswith("_adapters") else target
            if top == "_adapters" or target == name:
                continue
            if floor_of(target if target.startswith("_adapters") else top) >= floor_of(name):
                wrong.append(f"safetensors_c/{name}.py:{line} imports {target}")
    assert not wrong, "imports that do not point down:\n" + "\n".join(wrong)


def test_no_package_import_inside_a_function():
    inside = [
        f"safetensors_c/{name}.py:{line} imports {target} inside a function"
        for name, imports in graph().items()
        for target, line, in_function in imports
        if in_function
    ]
    assert not inside, "\n".join(inside)


def test_no_import_cycle():
    edges = {name: {t for t, _, _ in imports} for name, imports in graph().items()}
    state = {}

    def visit(node, path):
        state[node] = "open"
        for target in edges.get(node, ()):
            if state.get(target) == "open":
                pytest.fail("import cycle: " + " -> ".join(path + [target]))
            if target in edges and target not in state:
                visit(target, path + [target])
        state[node] = "done"

    for node in edges:
        if node not in state:
            visit(node, [node])


def test_core_includes_no_python():
    core = PACKAGE.parent / "csrc" / "core"
    offenders = [
        str(p) for p in core.glob("*.[ch]") if "Python.h" in p.read_text() or "numpy/" in p.read_text()
    ]
    assert not offenders


def test_every_safetensor_error_is_raised_with_a_code():
    """One stable scheme: Python code raises SafetensorError through
    _checks.error(message, code), as the C binding always sets `code`."""
    bare = []
    for name, path in modules():
        for lineno, line in enumerate(path.read_text().splitlines(), 1):
            if "raise SafetensorError(" in line:
                bare.append(f"safetensors_c/{name}.py:{lineno}")
    assert not bare, "use _checks.error(message, code):\n" + "\n".join(bare)


def test_every_subpackage_is_installed():
    """`pip install .` ships only the packages pyproject.toml lists."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    listed = set(
        tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())["tool"]["setuptools"][
            "packages"
        ]
    )
    found = {
        ".".join(("safetensors_c",) + p.parent.relative_to(PACKAGE).parts)
        for p in PACKAGE.rglob("__init__.py")
    }
    assert found <= listed, f"add to [tool.setuptools] packages: {sorted(found - listed)}"
