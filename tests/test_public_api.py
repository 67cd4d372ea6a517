"""The public API is one list: the lazy export table and the names static analysers see agree."""

from __future__ import annotations

import ast
from pathlib import Path

import tissuestack


def _static_names() -> set[str]:
    tree = ast.parse(Path(tissuestack.__file__).read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            for stmt in node.body:
                if isinstance(stmt, ast.ImportFrom):
                    names.update(a.asname or a.name for a in stmt.names)
    return names


def test_type_checking_block_declares_every_export():
    exported = set(tissuestack._EXPORTS) | set(tissuestack._SUBMODULES)
    assert _static_names() == exported


def test_every_export_resolves_and_package_is_typed():
    for name in tissuestack._EXPORTS:
        assert getattr(tissuestack, name) is not None, name
    assert (Path(tissuestack.__file__).parent / "py.typed").exists()
