"""Writers of small (or, for benchmarks, large) synthetic vendor output folders, one per technology and software
version, shaped like the real bundles described in ``docs/vendors.md``. Used by the tests, the benchmarks and
``tissuestack convert`` demonstrations; no real data needed.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS: dict[str, str] = {
    "write_xenium": "tissuestack.io.fake._xenium",
    "write_visium": "tissuestack.io.fake._visium",
    "write_visium_hd": "tissuestack.io.fake._visium_hd",
    "write_merscope": "tissuestack.io.fake._merscope",
    "write_cosmx": "tissuestack.io.fake._cosmx",
    "write_codex": "tissuestack.io.fake._codex",
    "write_steinbock": "tissuestack.io.fake._steinbock",
    "write_seqfish": "tissuestack.io.fake._seqfish",
    "write_dbit": "tissuestack.io.fake._dbit",
    "write_stereoseq": "tissuestack.io.fake._stereoseq",
    "write_curio": "tissuestack.io.fake._curio",
    "write_mcmicro": "tissuestack.io.fake._mcmicro",
    "write_macsima": "tissuestack.io.fake._macsima",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'tissuestack.io.fake' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
