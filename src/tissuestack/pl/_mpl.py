"""Optional plotting dependencies, imported on first use so that ``import tissuestack`` stays fast."""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["require"]

_HINT = 'plotting needs matplotlib: pip install "tissuestack[plot]"'


def require(module: str) -> ModuleType:
    """Import ``module`` (``"matplotlib"``, ``"datashader"``, ...) or raise an ImportError saying how to get it."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(f"{_HINT} (could not import {module!r}: {err})") from err
