"""Readers for vendor output folders and generic files, and their streaming conversion to a store.

Each reader is importable from here (``tissuestack.io.xenium(path)``) and is loaded on first use only.
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> module that defines it
_EXPORTS: dict[str, str] = {
    "xenium": "tissuestack.io._xenium",
    "visium": "tissuestack.io._visium",
    "visium_hd": "tissuestack.io._visium_hd",
    "merscope": "tissuestack.io._merscope",
    "cosmx": "tissuestack.io._cosmx",
    "codex": "tissuestack.io._codex",
    "stereoseq": "tissuestack.io._stereoseq",
    "read_image": "tissuestack.io._generic",
    "read_shapes": "tissuestack.io._generic",
    "read_points": "tissuestack.io._generic",
    "convert": "tissuestack.io._convert",
    "Option": "tissuestack.io._technology",
    "Technology": "tissuestack.io._technology",
    "get_technology": "tissuestack.io._technology",
    "technologies": "tissuestack.io._technology",
    "steinbock": "tissuestack.io._steinbock",
    "seqfish": "tissuestack.io._seqfish",
    "dbit": "tissuestack.io._dbit",
    "curio": "tissuestack.io._curio",
    "mcmicro": "tissuestack.io._mcmicro",
    "macsima": "tissuestack.io._macsima",
    "xenium_explorer_selection": "tissuestack.io._xenium_explorer",
    "add_xenium_explorer_selection": "tissuestack.io._xenium_explorer",
    "write_xenium_explorer_selection": "tissuestack.io._xenium_explorer",
    "from_legacy_anndata": "tissuestack.io._anndata_legacy",
    "to_legacy_anndata": "tissuestack.io._anndata_legacy",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'tissuestack.io' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
