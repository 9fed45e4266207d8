"""The package's structure rules that import-linter cannot see (it checks modules, not names).

* A ``_private`` name is used only inside its own module, or inside its own subpackage: no
  ``from patchsieve.x import _name``, ``x._name`` on an imported module or
  ``import_module("patchsieve.x._y")`` across package boundaries.
* No module is longer than 650 lines (numba kernel modules: 950).

The layer, cycle and private-module contracts live in ``pyproject.toml`` (``lint-imports``, run by
``make test``).
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
MAX_LINES = 650
MAX_LINES_NUMBA = 950
NUMBA_MODULES = {"patchsieve.filters._jit"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _owner(module: str, is_package: bool) -> str:
    """The unit a module's private names belong to: its subpackage, or itself when it is a
    top-level module of ``patchsieve`` (the root package owns ``patchsieve._version``)."""
    parts = module.split(".")
    if is_package or len(parts) <= 2:
        return ".".join(parts[:2]) if len(parts) >= 2 else parts[0]
    return ".".join(parts[:2])


def _unit_of_target(target: str) -> str:
    """The unit that owns the names of module ``target``."""
    parts = target.split(".")
    if len(parts) == 2 and parts[1].startswith("_"):
        return "patchsieve"  # a private module of the root package (``_version``)
    return ".".join(parts[:2])


def _private_parts(dotted: str) -> list[str]:
    return [p for p in dotted.split(".") if p.startswith("_") and not p.startswith("__")]


def _import_violations(node: ast.AST, module: str, foreign: Any,
                       aliases: dict[str, str]) -> list[str]:
    """Private modules or names of other units in one import statement or import_module call."""
    out: list[str] = []
    if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 \
            and node.module.split(".")[0] == "patchsieve":
        target = node.module
        if _private_parts(target) and foreign(target):
            out.append(f"{module}: imports private module {target}")
        for a in node.names:
            if a.name.startswith("_") and not a.name.startswith("__") and foreign(target):
                out.append(f"{module}: imports private name {target}.{a.name}")
            aliases[a.asname or a.name] = f"{target}.{a.name}"
    elif isinstance(node, ast.Import):
        for a in node.names:
            if a.name.split(".")[0] != "patchsieve":
                continue
            if _private_parts(a.name) and foreign(a.name):
                out.append(f"{module}: imports private module {a.name}")
            if a.asname:
                aliases[a.asname] = a.name
    elif isinstance(node, ast.Call) and _called_name(node) == "import_module" and node.args \
            and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str) \
            and node.args[0].value.startswith("patchsieve"):
        target = node.args[0].value
        if _private_parts(target) and foreign(target):
            out.append(f"{module}: import_module of private module {target}")
    return out


def _called_name(node: ast.Call) -> str:
    return str(getattr(node.func, "attr", getattr(node.func, "id", "")))


def violations(source: str, module: str, is_package: bool = False) -> list[str]:
    """Private names of other units that ``source`` (module ``module``) uses."""
    here = _owner(module, is_package)
    tree = ast.parse(source)
    out: list[str] = []
    aliases: dict[str, str] = {}  # local name -> patchsieve module or name it refers to

    def foreign(target: str) -> bool:
        return _unit_of_target(target) != here and target != "patchsieve._version"

    for node in ast.walk(tree):
        out += _import_violations(node, module, foreign, aliases)
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
                and node.value.id in aliases and node.attr.startswith("_") \
                and not node.attr.startswith("__") and foreign(aliases[node.value.id]):
            out.append(f"{module}: uses {aliases[node.value.id]}.{node.attr}")
    return out


def _modules() -> list[tuple[Path, str]]:
    return [(p, _module_name(p)) for p in sorted((SRC / "patchsieve").rglob("*.py"))]


def test_no_private_name_crosses_a_package_boundary() -> None:
    found = []
    for path, module in _modules():
        found += violations(path.read_text(), module, path.name == "__init__.py")
    assert not found, "\n".join(found)


@pytest.mark.parametrize(("source", "module", "expected"), [
    ("from patchsieve.filters._kernels import combine_cells", "patchsieve.regions", 1),
    ("from patchsieve.sidecar import _now", "patchsieve.filterpass._pass", 1),
    ("import patchsieve.sidecar as sc\nsc._local_path('x')", "patchsieve.analysis.summary", 1),
    ("import importlib\nimportlib.import_module('patchsieve.dataset._chunks')",
     "patchsieve.cli._app", 1),
    ("from patchsieve.dataset._chunks import _ChunkReader", "patchsieve.dataset._dataset", 0),
    ("from patchsieve._version import __version__", "patchsieve.sidecar._writer", 0),
    ("from patchsieve.volume import open_store", "patchsieve.sidecar._reader", 0),
])
def test_the_private_name_check_can_fail(source: str, module: str, expected: int) -> None:
    assert len(violations(source, module)) == expected


def test_module_sizes() -> None:
    long = []
    for path, module in _modules():
        n = len(path.read_text().splitlines())
        limit = MAX_LINES_NUMBA if module in NUMBA_MODULES else MAX_LINES
        if n > limit:
            long.append(f"{module}: {n} lines (limit {limit})")
    assert not long, "\n".join(long)
